"""ConcatDense and ConcatConv2D: time as an input, shapes, config."""

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


def test_concat_dense_matches_dense_on_concatenated_input():
    layer = ki.layers.ConcatDense(2, use_bias=False, dtype="float64")
    x = np.random.RandomState(1).randn(3, 4)
    out = layer(x, t=0.7).numpy()
    kernel = layer.dense.kernel.numpy()
    expected = np.concatenate([x, np.full((3, 1), 0.7)], 1) @ kernel
    np.testing.assert_allclose(out, expected, rtol=1e-12)


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
