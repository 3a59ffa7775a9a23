"""ConcatDense and ConcatConv2D: time as an input, shapes, config, against their definitions."""

import numpy as np
import pytest

import keras
import keras_implicit as ki


@pytest.mark.parametrize("layer,shape", [
    (lambda: ki.layers.ConcatDense(4, activation="tanh"), (2, 4)),
    (lambda: ki.layers.ConcatConv2D(3, 3), (2, 5, 5, 3)),
])
def test_time_is_an_input(layer, shape):
    layer = layer()
    x = np.random.RandomState(0).randn(*shape).astype("float32")
    at_zero = layer(x, t=0.0).numpy()
    np.testing.assert_array_equal(layer(x).numpy(), at_zero)  # t=None means t=0
    assert not np.allclose(layer(x, t=1.0).numpy(), at_zero)
    assert tuple(layer(x).shape) == layer.compute_output_shape(shape) == shape


def _reference_concat_dense(layer, x, t):
    """The definition: the dense layer on the input with ``t`` appended as a feature."""
    dense = layer.dense
    column = np.full(x.shape[:-1] + (1,), 0.0 if t is None else t)
    out = np.concatenate([x, column], -1) @ dense.kernel.numpy()
    out = out + dense.bias.numpy() if dense.use_bias else out
    return np.tanh(out) if dense.activation is keras.activations.tanh else out


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4)])
def test_concat_dense_matches_dense_on_concatenated_input(shape):
    """ConcatDense splits its kernel (the features' rows, the time's row) instead of
    concatenating: float64, with and without a bias and an activation, inputs of rank 2
    and 3, against the dense layer on [x, t]; t=None is t=0."""
    x = np.random.RandomState(1).randn(*shape)
    for use_bias in (True, False):
        for activation in (None, "tanh"):
            layer = ki.layers.ConcatDense(2, activation=activation, use_bias=use_bias,
                                          bias_initializer="glorot_uniform", dtype="float64")
            for t in (None, 0.0, 0.7, -2.5):
                np.testing.assert_allclose(
                    layer(x, t=t).numpy(), _reference_concat_dense(layer, x, t), rtol=1e-12,
                    atol=1e-12, err_msg=f"{use_bias=}, {activation=}, {t=}")


def _assert_central_differences(loss, checks):
    """Each ``(variable, grad, index)``: ``grad[index]`` against the central difference
    of ``loss()`` (a float) with step 1e-6 in ``variable[index]`` (float64)."""
    for variable, grad, index in checks:
        base = variable.numpy()
        step = np.zeros_like(base)
        step[index] = 1e-6
        variable.assign(base + step)
        up = loss()
        variable.assign(base - step)
        down = loss()
        variable.assign(base)
        np.testing.assert_allclose(grad[index], (up - down) / 2e-6, rtol=1e-6, atol=1e-9,
                                   err_msg=f"{variable.name}{index}")


def test_concat_dense_gradients_match_central_differences():
    """The kernel's rows (the time's row included), the bias, the input and t, in
    float64, against central differences of the definition."""
    import tensorflow as tf

    layer = ki.layers.ConcatDense(3, activation="tanh", bias_initializer="glorot_uniform",
                                  dtype="float64")
    x = tf.Variable(np.random.RandomState(5).randn(2, 4))
    t = tf.Variable(0.6, dtype=tf.float64)
    layer.build(x.shape)

    def loss():
        return tf.reduce_sum(tf.sin(layer(x, t=t)))

    kernel, bias = layer.dense.kernel, layer.dense.bias
    with tf.GradientTape() as tape:
        value = loss()
    grads = [g.numpy() for g in tape.gradient(value, [kernel, bias, x, t])]
    checks = [(kernel, grads[0], index) for index in [(0, 0), (3, 2), (4, 0), (4, 1)]]
    checks += [(bias, grads[1], (1,)), (x, grads[2], (1, 3)), (t, grads[3], ())]
    _assert_central_differences(lambda: float(loss()), checks)


def test_concat_dense_keeps_lora_quantization_and_mixed_precision():
    """The split reads the Dense's ``kernel``, so LoRA's update is in it; a quantized
    Dense computes its own product on [x, t]; under mixed_float16 the result is float16
    and agrees with the float32 definition to half precision."""
    x = np.random.RandomState(6).randn(3, 4).astype("float32")
    lora = ki.layers.ConcatDense(5, activation="tanh")
    lora.build(x.shape)
    lora.dense.enable_lora(2)
    lora.dense.lora_kernel_b.assign(np.random.RandomState(7).randn(2, 5).astype("float32"))
    assert not np.allclose(lora.dense.kernel.numpy(), lora.dense._kernel.numpy())
    np.testing.assert_allclose(lora(x, t=0.3).numpy(), _reference_concat_dense(lora, x, 0.3),
                               rtol=1e-5, atol=1e-6)

    quantized = ki.layers.ConcatDense(5, activation="tanh")
    quantized.build(x.shape)
    quantized.dense.quantize("int8")
    column = np.full((3, 1), 0.3, "float32")
    np.testing.assert_array_equal(quantized(x, t=0.3).numpy(),
                                  quantized.dense(np.concatenate([x, column], -1)).numpy())

    mixed = ki.layers.ConcatDense(5, activation="tanh", dtype="mixed_float16")
    out = mixed(x, t=0.3)
    assert out.dtype == "float16"
    np.testing.assert_allclose(out.numpy(), _reference_concat_dense(mixed, x, 0.3), atol=3e-3)


@pytest.mark.parametrize("cls,kwargs,shape", [
    (ki.layers.ConcatDense, {"units": 3, "activation": "relu"}, (None, 3)),
    (ki.layers.ConcatConv2D, {"filters": 2, "kernel_size": 3, "strides": 1}, (None, 4, 4, 2)),
])
def test_config_round_trip(cls, kwargs, shape):
    layer = cls(**kwargs)
    layer.build(shape)
    clone = cls.from_config(layer.get_config())
    clone.build(shape)
    clone.set_weights(layer.get_weights())
    x = np.ones((1,) + shape[1:], "float32")
    np.testing.assert_array_equal(clone(x, t=0.3), layer(x, t=0.3))
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize("cls,kwargs,match", [
    (ki.layers.ConcatDense, {"units": 0}, "units=0"),
    (ki.layers.ConcatConv2D, {"filters": -1, "kernel_size": 3}, "filters=-1"),
])
def test_bad_sizes(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("layer,shape", [
    (lambda: ki.layers.ConcatDense(4), (2, 3)),
    (lambda: ki.layers.ConcatConv2D(4, 3), (2, 5, 5, 3)),
])
@pytest.mark.parametrize("t", [[0.1, 0.2], [[0.5]]])
def test_a_time_that_is_not_a_scalar_is_refused_by_name(layer, shape, t):
    # A (batch,) time broadcast against the channels (or failed deep in an op) before.
    x = np.zeros(shape, "float32")
    with pytest.raises(ValueError, match=r"`t` must be a scalar.*Received: t with shape \("):
        layer()(x, t=np.asarray(t, "float32"))


def _reference_concat_conv(layer, x, t):
    """The definition: a convolution of the input with ``t`` appended as a channel."""
    import tensorflow as tf

    conv = layer.conv
    column = np.full(x.shape[:-1] + (1,), 0.0 if t is None else t)
    out = tf.nn.convolution(np.concatenate([x, column], -1), conv.kernel.numpy(),
                            strides=conv.strides, padding=conv.padding.upper(),
                            dilations=conv.dilation_rate).numpy()
    out = out + conv.bias.numpy() if conv.use_bias else out
    return np.tanh(out)


@pytest.mark.parametrize("size,kernel_size,strides,padding,dilation_rate", [
    ((5, 5), 3, 1, "same", 1),
    ((6, 7), 3, 2, "same", 1),
    ((7, 6), (2, 3), 2, "same", 1),
    ((6, 6), 3, 1, "same", 2),
    ((5, 6), 3, 1, "valid", 1),
    ((7, 8), (3, 2), (2, 3), "valid", 1),
    ((8, 8), 4, 1, "same", 1),
])
def test_concat_conv_matches_a_convolution_of_the_concatenated_input(
        size, kernel_size, strides, padding, dilation_rate):
    """ConcatConv2D splits its kernel (state channels, time channel) instead of
    concatenating: float64, every padding, stride, dilation and even kernel, with and
    without a bias, against the convolution of [x, t]; t=None is t=0."""
    x = np.random.RandomState(2).randn(2, *size, 3)
    for use_bias in (True, False):
        layer = ki.layers.ConcatConv2D(4, kernel_size, strides=strides, padding=padding,
                                       dilation_rate=dilation_rate, activation="tanh",
                                       use_bias=use_bias, bias_initializer="glorot_uniform",
                                       dtype="float64")
        for t in (None, 0.0, 0.37, -2.5):
            np.testing.assert_allclose(layer(x, t=t).numpy(),
                                       _reference_concat_conv(layer, x, t),
                                       rtol=1e-12, atol=1e-12, err_msg=f"{use_bias=}, {t=}")


def test_concat_conv_with_unknown_spatial_size_and_its_gradient():
    """Unknown height and width (a tf.function with None dimensions) take the
    convolution path for the time channel: the same values, and the kernel's and the
    bias's gradients against central differences (float64)."""
    import tensorflow as tf

    layer = ki.layers.ConcatConv2D(2, 3, activation="tanh", dtype="float64")
    x = np.random.RandomState(3).randn(1, 4, 5, 2)
    layer.build(x.shape)
    run = tf.function(lambda x, t: layer(x, t=t),
                      input_signature=[tf.TensorSpec([None, None, None, 2], tf.float64),
                                       tf.TensorSpec([], tf.float64)])
    np.testing.assert_allclose(run(x, tf.constant(0.6, tf.float64)).numpy(),
                               _reference_concat_conv(layer, x, 0.6), rtol=1e-12, atol=1e-12)

    def loss():
        return float(tf.reduce_sum(tf.sin(layer(x, t=0.6))))

    kernel, bias = layer.conv.kernel, layer.conv.bias
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(tf.sin(layer(x, t=0.6)))
    grads = [g.numpy() for g in tape.gradient(value, [kernel, bias])]
    # Kernel entries (input channel 2 is the time's) and both biases.
    checks = [(kernel, grads[0], index)
              for index in [(0, 0, 0, 0), (1, 2, 1, 1), (2, 1, 2, 0), (0, 2, 2, 1)]]
    checks += [(bias, grads[1], (0,)), (bias, grads[1], (1,))]
    _assert_central_differences(loss, checks)


def test_concat_conv_is_channels_last_whatever_the_global_image_format():
    """The documented layout, (batch, height, width, channels), also when Keras' global
    image_data_format is channels_first (the time channel had been appended along the
    width there)."""
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        layer = ki.layers.ConcatConv2D(4, 3, activation="tanh", dtype="float64")
        x = np.random.RandomState(4).randn(2, 5, 6, 3)
        out = layer(x, t=0.3).numpy()
        assert out.shape == layer.compute_output_shape(x.shape) == (2, 5, 6, 4)
        np.testing.assert_allclose(out, _reference_concat_conv(layer, x, 0.3), rtol=1e-12,
                                   atol=1e-12)
    finally:
        keras.config.set_image_data_format(previous)
