"""ki.applications.odenet_mnist and its blocks: architecture, parameter counts, numerics
against a NumPy reimplementation, adjoint vs backprop gradients, serialization, bad input."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from keras_implicit.applications import ODEBlockDynamics, ResidualBlock, odenet_mnist


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# Counted by hand from the paper's code (torchdiffeq examples/odenet_mnist.py):
# stem: conv3x3(1->64)+b, GN, conv4x4(64->64)+b, GN, conv4x4(64->64)+b
STEM = (9 * 64 + 64) + 128 + 2 * (16 * 64 * 64 + 64) + 128
HEAD = 128 + (64 * 10 + 10)
ODEFUNC = 3 * 128 + 2 * (9 * 65 * 64 + 64)   # ConcatConv2d: 64 + 1 input channels, bias
RESBLOCK = 2 * 128 + 2 * (9 * 64 * 64)       # convs without bias
EXPECTED = {"mlp": 784 * 300 + 300 + 300 * 10 + 10, "resnet": STEM + 6 * RESBLOCK + HEAD,
            "rknet": STEM + ODEFUNC + HEAD, "odenet": STEM + ODEFUNC + HEAD}


def test_parameter_counts_match_the_paper():
    counts = {kind: trainable_count(odenet_mnist(kind)) for kind in EXPECTED}
    print("trainable parameters:", counts)
    assert counts == EXPECTED
    assert 0.20e6 < counts["odenet"] < 0.22e6 and 0.20e6 < counts["rknet"] < 0.22e6
    assert 0.57e6 < counts["resnet"] < 0.60e6 and 0.23e6 < counts["mlp"] < 0.25e6
    assert trainable_count(odenet_mnist("resnet", num_blocks=2)) == STEM + 2 * RESBLOCK + HEAD
    assert trainable_count(odenet_mnist("mlp", hidden_units=10)) == 7850 + 110


def test_architecture_state_shape_and_solver_settings():
    model = odenet_mnist("odenet")
    assert model.get_layer("downsample_conv3").output.shape == (None, 6, 6, 64)
    assert model.output_shape == (None, 10)
    ode = model.get_layer("neural_ode")
    assert isinstance(ode.dynamics, ODEBlockDynamics)
    config = ode.get_config()
    assert (config["solver"], config["gradient"], config["rtol"], config["atol"]) == (
        "dopri5", "adjoint", 1e-3, 1e-3)
    config = odenet_mnist("rknet").get_layer("neural_ode").get_config()
    assert (config["solver"], config["num_steps"], config["gradient"]) == ("rk4", 4, "backprop")
    config = odenet_mnist("rknet", solver="euler", num_steps=6, gradient="adjoint").get_layer(
        "neural_ode").get_config()
    assert (config["solver"], config["num_steps"], config["gradient"]) == (
        "euler", 6, "adjoint")
    config = odenet_mnist("odenet", gradient="backprop", solver="bosh3").get_layer(
        "neural_ode").get_config()
    assert (config["solver"], config["gradient"]) == ("bosh3", "backprop")
    blocks = [layer for layer in odenet_mnist("resnet").layers
              if isinstance(layer, ResidualBlock)]
    assert len(blocks) == 6


def group_norm(x, gamma, beta, groups, eps=1e-5):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * gamma + beta


def conv_same(x, kernel, bias=None):
    """'same' 2-D convolution (cross-correlation, as Keras) with odd kernels."""
    k = kernel.shape[0]
    pad = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
    for i in range(k):
        for j in range(k):
            out += pad[:, i:i + x.shape[1], j:j + x.shape[2], :] @ kernel[i, j]
    return out if bias is None else out + bias


def randomize(layer, rng):
    for weight in layer.weights:
        weight.assign(rng.normal(size=weight.shape))


def test_blocks_match_numpy_reimplementation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 5, 4))
    t = 0.3
    dynamics = ODEBlockDynamics(filters=4, groups=2, dtype="float64")
    dynamics.build(x.shape)
    randomize(dynamics, rng)
    w = {v.path.split("/", 1)[1]: v.numpy() for v in dynamics.weights}

    def concat_t(a):
        return np.concatenate([a, np.full(a.shape[:3] + (1,), t)], axis=-1)

    out = np.maximum(group_norm(x, w["norm1/gamma"], w["norm1/beta"], 2), 0)
    out = conv_same(concat_t(out), w["conv1/conv/kernel"], w["conv1/conv/bias"])
    out = np.maximum(group_norm(out, w["norm2/gamma"], w["norm2/beta"], 2), 0)
    out = conv_same(concat_t(out), w["conv2/conv/kernel"], w["conv2/conv/bias"])
    expected = group_norm(out, w["norm3/gamma"], w["norm3/beta"], 2)
    np.testing.assert_allclose(dynamics(tf.constant(x), t=tf.constant(t, tf.float64)),
                               expected, rtol=1e-10, atol=1e-10)

    block = ResidualBlock(filters=4, groups=2, dtype="float64")
    block.build(x.shape)
    randomize(block, rng)
    w = {v.path.split("/", 1)[1]: v.numpy() for v in block.weights}
    out = conv_same(np.maximum(group_norm(x, w["norm1/gamma"], w["norm1/beta"], 2), 0),
                    w["conv1/kernel"])
    out = conv_same(np.maximum(group_norm(out, w["norm2/gamma"], w["norm2/beta"], 2), 0),
                    w["conv2/kernel"])
    np.testing.assert_allclose(block(tf.constant(x)), x + out, rtol=1e-10, atol=1e-10)


def test_gradients_reach_every_weight():
    """Eager, tiny: the adjoint ODE-Net and the backprop RK-Net train every weight."""
    x = tf.constant(np.random.default_rng(1).uniform(size=(2, 12, 12, 1)).astype("float32"))
    y = tf.constant([3, 7])
    for kind in ("odenet", "rknet"):
        model = odenet_mnist(kind, input_shape=(12, 12, 1), filters=4, groups=2)
        with tf.GradientTape() as tape:
            loss = keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True)
        grads = tape.gradient(loss, model.trainable_weights)
        assert len(grads) == 24  # stem 10, dynamics 10, head 4
        for grad, weight in zip(grads, model.trainable_weights):
            assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0, weight.path
        stats = model.get_layer("neural_ode").solver_stats()
        if kind == "rknet":
            assert int(stats["nfe_forward"]) == 16  # 4 RK4 steps of 4 stages
        assert int(stats["nfe_forward"]) > 0
        assert (int(stats["nfe_backward"]) > 0) == (kind == "odenet")


def test_saved_model_round_trip(tmp_path):
    x = np.random.default_rng(2).uniform(size=(2, 28, 28, 1)).astype("float32")
    for kind in ("odenet", "resnet"):
        model = odenet_mnist(kind)
        expected = model(x)
        path = tmp_path / f"{kind}.keras"
        model.save(path)
        restored = keras.saving.load_model(path)
        np.testing.assert_allclose(restored(x), expected, rtol=1e-5, atol=1e-5)
    restored_ode = keras.saving.load_model(tmp_path / "odenet.keras").get_layer("neural_ode")
    assert isinstance(restored_ode.dynamics, ki.applications.ODEBlockDynamics)
    assert restored_ode.dynamics.get_config()["filters"] == 64
    layer = ODEBlockDynamics.from_config(ODEBlockDynamics(8, groups=4).get_config())
    assert (layer.filters, layer.groups, layer.kernel_size) == (8, 4, 3)


BAD = [
    (lambda: odenet_mnist("densenet"), "Unknown `kind`.*Received: kind='densenet'"),
    (lambda: odenet_mnist("odenet", num_blocks=3), "`num_blocks` applies only to kind in"),
    (lambda: odenet_mnist("resnet", solver="rk4"), "`solver` applies only to kind in"),
    (lambda: odenet_mnist("mlp", gradient="adjoint"), "`gradient` applies only"),
    (lambda: odenet_mnist("resnet", num_blocks=0), "`num_blocks` must be an int >= 1"),
    (lambda: odenet_mnist("odenet", filters=48, groups=32), "multiple of `groups`"),
    (lambda: odenet_mnist("odenet", input_shape=(28, 28)), "`input_shape` must be"),
    (lambda: odenet_mnist("rknet", num_steps=0), "`num_steps` must be an int >= 1"),
    (lambda: ODEBlockDynamics(filters=0), "`filters` must be an int >= 1. Received: filters=0"),
    (lambda: ResidualBlock(filters=64, groups=5), "multiple of `groups`"),
    (lambda: ODEBlockDynamics(8, groups=4).build((None, 6, 6, 3)), "filters=8 channels"),
    (lambda: ResidualBlock(8, groups=4).build((None, 6, 8)), "expects images"),
]


def test_bad_arguments():
    for build, message in BAD:
        with pytest.raises(ValueError, match=message):
            build()
