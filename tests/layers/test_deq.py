"""The DEQ layer: closed-form fixed points and gradients through Keras variables, and the
Keras contract (Sequential/functional, fit, config, .keras, SavedModel, float64,
MirroredStrategy)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from keras_implicit.layers.deq_cells import DEQConvCell, DEQDenseCell

pytestmark = pytest.mark.plain_graph  # numerics in TensorFlow's graph (tests/conftest.py)


STATS = ["deq/iterations_forward", "deq/iterations_backward", "deq/residual", "deq/converged"]


def data(n=32, features=4, seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(dtype)
    y = (x[:, :1] * x[:, 1:2] > 0).astype(dtype)
    return x, y


def dense_model(dtype="float32", **deq_kwargs):
    deq_kwargs.setdefault("state_shape", (6,))
    return keras.Sequential([
        keras.Input((4,), dtype=dtype),
        ki.layers.DEQ(DEQDenseCell(dtype=dtype), dtype=dtype, name="deq", **deq_kwargs),
        keras.layers.Dense(1, dtype=dtype),
    ])


def test_sequential_and_functional_fit_evaluate_predict_with_solver_stats():
    x, y = data()
    # (jit_cell=False keeps this test at a third of its time: fit, evaluate and predict
    # each compile under "auto", which tests/ops/test_fixed_point_compile.py covers)
    model = dense_model(tol=1e-5, jacobian_penalty=0.1, jit_cell=False)
    model.compile(keras.optimizers.Adam(0.05), keras.losses.BinaryCrossentropy(from_logits=True))
    before = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=0,
                        callbacks=[ki.callbacks.SolverStats()])
    assert history.history["loss"][-1] < before
    for name in STATS:
        assert len(history.history[name]) == 3, name
    assert history.history["deq/iterations_forward"][-1] > 1
    assert history.history["deq/iterations_backward"][-1] > 1
    assert history.history["deq/converged"][-1] == 1
    assert 0 < history.history["deq/residual"][-1] <= 1e-5
    assert model.predict(x, verbose=0).shape == (32, 1)
    assert model.evaluate(x, y, verbose=0) < before
    deq = model.get_layer("deq")
    # Inference runs no backward solve, so it keeps the last gradient's count.
    assert int(deq.solver_stats()["iterations_backward"]) > 1
    assert deq.compute_output_shape((None, 4)) == (None, 6)
    # Functional, the state with the input's shape (no state_shape).
    inputs = keras.Input((4,))
    outputs = ki.layers.DEQ(DEQDenseCell(), solver="broyden")(inputs)
    functional = keras.Model(inputs, keras.layers.Dense(2)(outputs))
    assert functional(x).shape == (32, 2)


def test_float64_linear_cell_gives_closed_form_output_and_gradients():
    """z* = (x U + b)(I - W)^-1; with L = sum(c * z*) and g = c (I - W)^-T:
    dL/dx = g U^T, dL/dW = z*^T g, dL/dU = x^T g, dL/db = sum_rows g."""
    rng = np.random.default_rng(0)
    n, dim, features = 3, 5, 4
    w = rng.normal(size=(dim, dim))
    w *= 0.5 / np.linalg.norm(w, 2)
    u, b = rng.normal(size=(features, dim)), rng.normal(size=(dim,))
    x_np, c = rng.normal(size=(n, features)), rng.normal(size=(n, dim))
    a = np.linalg.inv(np.eye(dim) - w)
    z_star = (x_np @ u + b) @ a
    g = c @ a.T
    exact = [g @ u.T, z_star.T @ g, x_np.T @ g, g.sum(0)]
    x = tf.constant(x_np)
    for gradient in ("implicit", "unrolled"):
        cell = DEQDenseCell(activation=None, dtype="float64")
        deq = ki.layers.DEQ(cell, state_shape=(dim,), tol=1e-12, max_iter=200,
                            gradient=gradient, dtype="float64")
        deq.build((None, features))
        cell.recurrent_kernel.assign(w)
        cell.kernel.assign(u)
        cell.bias.assign(b)
        with tf.GradientTape() as tape:
            tape.watch(x)
            z = deq(x)
            loss = tf.reduce_sum(z * c)
        assert z.dtype == tf.float64
        np.testing.assert_allclose(z.numpy(), z_star, atol=1e-10)
        grads = tape.gradient(loss, [x, cell.recurrent_kernel, cell.kernel, cell.bias])
        for got, want in zip(grads, exact):
            np.testing.assert_allclose(np.asarray(got), want, atol=1e-9, err_msg=gradient)
        stats = deq.solver_stats()
        backward = int(stats["iterations_backward"])
        assert backward > 1 if gradient == "implicit" else backward == 0
    deq = ki.layers.DEQ(DEQDenseCell(dtype="float64"), gradient=ki.ops.Phantom(steps=3),
                        dtype="float64")
    deq(x)
    assert int(deq.solver_stats()["iterations_backward"]) == 3


def test_config_round_trip_and_keras_file(tmp_path):
    x, _ = data()
    model = dense_model(solver={"name": "anderson", "memory": 3},
                        gradient=ki.ops.Implicit(solver="picard", tol=1e-7, max_iter=80),
                        tol=1e-6, stop_mode="abs", jacobian_penalty=0.5, on_failure="ignore",
                        jit_cell=True)
    deq = model.get_layer("deq")
    config = deq.get_config()
    clone = ki.layers.DEQ.from_config(config)
    assert clone.get_config() == config
    assert config["solver"]["registered_name"] == "keras_implicit>Anderson"
    assert config["solver"]["config"] == {"memory": 3, "regularization": 1e-4, "damping": 1.0}
    assert config["gradient"]["config"] == {"solver": "picard", "tol": 1e-7, "max_iter": 80}
    assert config["state_shape"] == [6]
    assert config["jit_cell"] is True
    expected = model.predict(x, verbose=0)
    path = os.path.join(tmp_path, "deq.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    loaded_config = loaded.get_layer("deq").get_config()
    # (the cell's build_config comes back with lists where it had tuples)
    assert {**loaded_config, "cell": None} == {**config, "cell": None}
    assert loaded_config["cell"]["config"] == config["cell"]["config"]


@pytest.mark.plain_graph(False)  # the defaults under MirroredStrategy
def test_mirrored_strategy_matches_one_device(two_device_strategies):
    x, y = data(n=16, dtype="float64")

    def train(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(1)
            model = dense_model(dtype="float64", tol=1e-10, max_iter=200)
            model.compile(keras.optimizers.SGD(0.5),
                          keras.losses.BinaryCrossentropy(from_logits=True))
        model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
        return [v.numpy() for v in model.weights], model.get_layer("deq").solver_stats()

    one_device, mirrored_strategy = two_device_strategies
    single, _ = train(one_device)
    mirrored, stats = train(mirrored_strategy)
    # Each replica's solve stops when its half of the batch converges (to 1e-10), so
    # the two differ at that level; a gradient not summed over replicas would be off by 1e-2.
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
    assert np.asarray(stats["iterations_forward"]).item() > 1
    assert np.asarray(stats["iterations_backward"]).item() > 1


def test_jacobian_penalty_is_a_training_loss():
    x, _ = data()
    deq = ki.layers.DEQ(DEQDenseCell(), jacobian_penalty=2.0)
    deq(x, training=False)
    assert not deq.losses
    deq(x, training=True)
    assert len(deq.losses) == 1 and float(deq.losses[0]) > 0
    # The penalty's weight-gradient is what Bai et al. add: it reaches the recurrent kernel.
    with tf.GradientTape() as tape:
        deq(x, training=True)
        penalty = deq.losses[0]
    grad = tape.gradient(penalty, deq.cell.recurrent_kernel)
    assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0


def test_bad_arguments():
    cell = DEQDenseCell()
    for kwargs, message in [
        ({"solver": "newton"}, "Received: solver='newton'"),
        ({"gradient": {"name": "implicit", "solver": "x"}}, r"Received: Implicit\(solver\)='x'"),
        ({"tol": -1.0}, "Received: tol=-1.0"),
        ({"max_iter": 0}, "Received: max_iter=0"),
        ({"gradient": "adjoint"}, "Received: gradient='adjoint'"),
        ({"jacobian_penalty": -0.1}, "Received: jacobian_penalty=-0.1"),
        ({"state_shape": (0, 3)}, r"Received: state_shape=\(0, 3\)"),
        ({"on_failure": "print"}, "Received: on_failure='print'"),
    ]:
        with pytest.raises(ValueError, match=message):
            ki.layers.DEQ(cell, **kwargs)
    with pytest.raises(TypeError, match=r"\['backward_tol'\] are no longer DEQ arguments"):
        ki.layers.DEQ(cell, backward_tol=0.0)
    with pytest.raises(TypeError, match="Received: gradient=<class"):
        ki.layers.DEQ(cell, gradient=ki.ops.Implicit)
    with pytest.raises(TypeError, match="Received: jit_cell='yes'"):
        ki.layers.DEQ(cell, jit_cell="yes")
    with pytest.raises(TypeError, match="`cell` must be a Keras layer"):
        ki.layers.DEQ(lambda z, x: z)
    # A Dense or a Sequential would take x as `training` and fail deep in Keras.
    with pytest.raises(TypeError, match=r"call\(z, x\).*cell=Dense 'd' whose call takes "
                                        r"\(inputs, training\)"):
        ki.layers.DEQ(keras.layers.Dense(4, name="d"))
    with pytest.raises(TypeError, match=r"call\(z, x\).*whose call takes \(inputs, training"):
        ki.layers.DEQ(keras.Sequential([keras.layers.Dense(4)]))
    with pytest.raises(ValueError, match=r"must return the next z with z's shape \(None, 3\)"):
        ki.layers.DEQ(_ShapeChanging(), state_shape=(3,))(keras.Input((4,)))
    with pytest.raises(ValueError, match="`groups` must divide `hidden_channels`"):
        DEQConvCell(hidden_channels=6, groups=4)
    with pytest.raises(ValueError, match="`groups` must divide the state's channels"):
        ki.layers.DEQ(DEQConvCell(hidden_channels=8, groups=4))(keras.Input((5, 5, 6)))


class _ShapeChanging(keras.layers.Layer):
    def call(self, z, x):
        return keras.ops.concatenate([z, z], axis=-1)


def test_conv_cell_in_a_deq():
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 8)).astype("float32")
    deq = ki.layers.DEQ(DEQConvCell(hidden_channels=8, groups=4), tol=1e-4, max_iter=30)
    z = deq(x)
    assert z.shape == (2, 6, 6, 8)
    assert int(deq.solver_stats()["converged"]) == 1
    np.testing.assert_allclose(deq.cell(z, x).numpy(), z.numpy(), atol=1e-3)
    config = deq.cell.get_config()
    assert DEQConvCell.from_config(config).get_config() == config
