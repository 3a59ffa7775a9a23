"""NeuralODE: exact answers, Keras use, statistics and bad input (the `.keras` and SavedModel
round trips of every solver and gradient: ``tests/test_layer_contract.py``)."""

import re

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

import keras
import keras_implicit as ki

pytestmark = pytest.mark.plain_graph  # numerics in TensorFlow's graph (tests/conftest.py)


def make_model(solver="dopri5", gradient="adjoint", dtype="float32", **kwargs):
    return keras.Sequential([
        keras.Input((3,), dtype=dtype),
        ki.layers.NeuralODE(ki.layers.ConcatDense(3, activation="tanh", dtype=dtype),
                            solver=solver, gradient=gradient, dtype=dtype, name="ode", **kwargs),
        keras.layers.Dense(1, dtype=dtype),
    ])


def data(n=32, dtype="float32"):
    rng = np.random.RandomState(0)
    x = rng.randn(n, 3).astype(dtype)
    return x, (x[:, :1] * x[:, 1:2] + x[:, 2:]).astype(dtype)


def test_linear_dynamics_match_the_matrix_exponential():
    """Dense(no bias) dynamics: z(t) = z0 expm(W t), at every solution time."""
    dense = keras.layers.Dense(3, use_bias=False, dtype="float64")
    layer = ki.layers.NeuralODE(dense, t1=1.5, solution_times=[0.5, 1.0, 1.5],
                                return_sequences=True, rtol=1e-9, atol=1e-9, dtype="float64")
    x = np.random.RandomState(1).randn(4, 3)
    out = layer(x).numpy()
    w = dense.kernel.numpy()
    expected = np.stack([x @ scipy.linalg.expm(w * t) for t in (0.5, 1.0, 1.5)], axis=1)
    assert out.shape == (4, 3, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-7, atol=1e-8)


def test_backwards_in_time_inverts_forwards():
    dynamics = ki.layers.ConcatDense(3, activation="tanh", dtype="float64")
    forward = ki.layers.NeuralODE(dynamics, t0=0.0, t1=1.0, rtol=1e-9, atol=1e-9, dtype="float64")
    backward = ki.layers.NeuralODE(dynamics, t0=1.0, t1=0.0, rtol=1e-9, atol=1e-9, dtype="float64")
    x = np.random.RandomState(2).randn(5, 3)
    np.testing.assert_allclose(backward(forward(x)), x, atol=1e-7)


@pytest.mark.parametrize("solver,gradient,kwargs", [
    ("dopri5", "adjoint", {}), ("dopri5", "backprop", {}), ("rk4", "adjoint", {"num_steps": 4}),
])
def test_fit_evaluate_predict_in_sequential(solver, gradient, kwargs):
    x, y = data()
    model = make_model(solver, gradient, **kwargs)
    model.compile(keras.optimizers.Adam(0.01), "mse")
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0,
                        callbacks=[ki.callbacks.SolverStats()])
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["ode/nfe_forward"][-1] > 0
    if gradient == "adjoint":
        assert history.history["ode/nfe_backward"][-1] > 0
    else:
        assert history.history["ode/nfe_backward"][-1] == 0
    assert np.isfinite(model.evaluate(x, y, verbose=0))
    assert model.predict(x, verbose=0).shape == (32, 1)
    # Inference runs no backward solve, so it keeps the last gradient's count.
    stats = model.get_layer("ode").solver_stats()
    assert (int(stats["nfe_backward"]) > 0) == (gradient == "adjoint")


def test_functional_model_and_feature_map_state():
    inputs = keras.Input((6, 6, 4))
    dynamics = keras.Sequential([keras.layers.Conv2D(4, 3, padding="same", activation="tanh")])
    state = ki.layers.NeuralODE(dynamics, name="ode")(inputs)
    time_dependent = ki.layers.NeuralODE(ki.layers.ConcatConv2D(4, 3, activation="tanh"))(state)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(time_dependent))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "mse")
    x = np.random.RandomState(0).randn(8, 6, 6, 4).astype("float32")
    model.fit(x, np.zeros((8, 2), "float32"), epochs=1, verbose=0)
    assert model.predict(x, verbose=0).shape == (8, 2)


@pytest.mark.parametrize("input_shape,return_sequences,times", [
    ((3,), False, None), ((3,), True, None), ((3,), True, [0.25, 0.5, 1.0]),
    ((5, 5, 2), True, [0.5, 1.0]), ((5, 5, 2), False, None),
])
def test_compute_output_shape_matches_call(input_shape, return_sequences, times):
    channels = input_shape[-1]
    dynamics = (ki.layers.ConcatConv2D(channels, 3) if len(input_shape) == 3
                else ki.layers.ConcatDense(channels))
    layer = ki.layers.NeuralODE(dynamics, solution_times=times, return_sequences=return_sequences)
    x = np.ones((2,) + input_shape, "float32")
    assert tuple(layer(x).shape) == layer.compute_output_shape((2,) + input_shape)


def test_call_time_solution_times_override():
    dense = keras.layers.Dense(2, use_bias=False, dtype="float64")
    layer = ki.layers.NeuralODE(dense, return_sequences=True, rtol=1e-9, atol=1e-9,
                                dtype="float64")
    x = np.random.RandomState(3).randn(3, 2)
    for times in ([0.0, 0.3, 2.0], [0.1, 0.2]):
        out = layer(x, solution_times=tf.constant(times, tf.float64)).numpy()
        expected = np.stack([x @ scipy.linalg.expm(dense.kernel.numpy() * t) for t in times], 1)
        np.testing.assert_allclose(out, expected, rtol=1e-7, atol=1e-8)


def test_call_time_solution_times_are_checked():
    """They were not: [-0.5, -1] integrated backwards from t0 = 0 of a layer going to
    t1 = 1, [[0.5, 0.7]] was flattened, and [] failed in a StridedSlice."""
    layer = ki.layers.NeuralODE(keras.layers.Dense(1, use_bias=False), return_sequences=True)
    x = np.ones((1, 1), "float32")
    for times in ([-0.5, -1.0], [[0.5, 0.7]], [], [0.5, 0.5], [0.2, np.nan], "soon",
                  tf.constant([0.7, 0.2])):
        shown = np.asarray(times, np.float64).tolist() if not isinstance(times, str) else times
        with pytest.raises(ValueError, match=re.escape(f"Received: solution_times={shown!r}")):
            layer(x, solution_times=times)
    assert layer(x, solution_times=[0.0, 2.0]).shape == (1, 2, 1)  # past t1 is allowed
    call = tf.function(lambda times: layer(x, solution_times=times),
                       input_signature=[tf.TensorSpec([None], tf.float32)])
    assert call(tf.constant([0.5, 0.7])).shape == (1, 2, 1)
    for times in ([0.7, 0.5], [], [-1.0]):
        with pytest.raises(tf.errors.InvalidArgumentError, match="of a call must be"):
            call(tf.constant(times, tf.float32))
    with pytest.raises(ValueError, match="of a call must be a non-empty 1-D"):
        tf.function(lambda: layer(x, solution_times=tf.zeros([1, 2])))()
    # A float32 t0 (0.7 is 0.69999998 there) is t0, eagerly and traced (LatentODE's data).
    late = ki.layers.NeuralODE(keras.layers.Dense(1, use_bias=False), t0=0.7, t1=2.0,
                               return_sequences=True)
    times = tf.constant([0.7, 1.0])
    for out in (late(x, solution_times=times), tf.function(late)(x, solution_times=times)):
        assert out.shape == (1, 2, 1) and float(out[0, 0, 0]) == 1.0


def test_config_round_trip_gives_identical_outputs():
    # A solver with a step option of 0.1.0 (still read, with a warning).
    with pytest.warns(DeprecationWarning, match="safety=0.8"):
        layer = ki.layers.NeuralODE(ki.layers.ConcatDense(3, activation="tanh"), t0=0.5,
                                    t1=2.0, solver={"name": "dopri5", "safety": 0.8},
                                    rtol=1e-4, gradient=ki.ops.Adjoint(rtol=1e-5),
                                    solution_times=[1.0, 2.0], return_sequences=True)
    x = np.random.RandomState(0).randn(4, 3).astype("float32")
    out = layer(x)
    config = layer.get_config()
    with pytest.warns(DeprecationWarning, match="safety=0.8"):
        clone = ki.layers.NeuralODE.from_config(config)
    clone.build((None, 3))
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == config
    np.testing.assert_array_equal(clone(x), out)


@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_jit_dynamics_trains_saves_and_exports_like_the_graph_dynamics(tmp_path, gradient):
    x, y = data(dtype="float64")
    models = [make_model(gradient=gradient, dtype="float64", jit_dynamics=jit)
              for jit in (False, True)]
    models[1].set_weights(models[0].get_weights())
    for model in models:
        model.compile(keras.optimizers.SGD(0.1), "mse")
        model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    # XLA fuses the dynamics' ops: float64 rounding differences only.
    for a, b in zip(*(m.get_weights() for m in models)):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    jitted = models[1]
    assert jitted.get_layer("ode").get_config()["jit_dynamics"] is True
    path = str(tmp_path / "model.keras")
    jitted.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert loaded.get_layer("ode").jit_dynamics is True
    expected = jitted.predict(x, verbose=0)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    jitted.export(str(tmp_path / "exported"), verbose=False)
    restored = tf.saved_model.load(str(tmp_path / "exported"))
    # As without XLA: the exported graph's adaptive solve differs from predict's
    # (compiled by Keras) at the 1e-7 level in float64.
    np.testing.assert_allclose(restored.serve(x).numpy(), expected, rtol=1e-5)


def test_float64_model_trains_in_float64():
    x, y = data(dtype="float64")
    model = make_model(dtype="float64")
    model.compile("adam", "mse")
    model.fit(x, y, epochs=1, verbose=0)
    assert model.predict(x, verbose=0).dtype == np.float64
    assert model.get_layer("ode").dynamics.dense.kernel.dtype == "float64"


@pytest.mark.plain_graph(False)  # the defaults under MirroredStrategy
@pytest.mark.parametrize("solver,kwargs,tolerance", [
    ("rk4", {"num_steps": 4}, 1e-6), ("dopri5", {"rtol": 1e-7, "atol": 1e-7}, 1e-5),
])
def test_mirrored_strategy_matches_one_device(two_device_strategies, solver, kwargs, tolerance):
    """Two logical CPUs: the same weights after training as on one device."""
    x, y = data(n=16)

    def train(strategy):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = make_model(solver, **kwargs)
            model.compile(keras.optimizers.SGD(0.1), "mse")
        model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
        return model.get_weights()

    one = train(two_device_strategies[0])
    two = train(two_device_strategies[1])
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance)


def test_solver_stats_are_recorded_per_call():
    layer = ki.layers.NeuralODE(ki.layers.ConcatDense(3, activation="tanh"))
    x = np.ones((2, 3), "float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x))
    tape.gradient(loss, layer.trainable_variables)
    stats = {k: int(v) for k, v in layer.solver_stats().items()}
    assert stats["nfe_forward"] == 2 + 6 * (stats["steps_accepted"] + stats["steps_rejected"])
    assert stats["nfe_backward"] > 0


@pytest.mark.parametrize("kwargs,error,match", [
    ({"dynamics": "dense"}, TypeError, "dynamics='dense'"),
    ({"t0": 1.0, "t1": 1.0}, ValueError, "t0=1.0, t1=1.0"),
    ({"rtol": 0.0}, ValueError, "rtol=0.0"),
    ({"atol": -1.0}, ValueError, "atol=-1.0"),
    ({"solver": "rk5"}, ValueError, "solver='rk5'"),
    ({"solver": "rk4"}, ValueError, "num_steps=None"),
    ({"solver": "rk4", "num_steps": 0}, ValueError, "num_steps=0"),
    ({"gradient": "unrolled"}, ValueError, "gradient='unrolled'"),
    ({"gradient": "backprop", "solver": "bdf"}, ValueError, "gradient='backprop'"),
    ({"solution_times": [0.5, 0.2, 1.0]}, ValueError, r"solution_times=\[0.5, 0.2, 1.0\]"),
    ({"solution_times": [0.5, 0.8]}, ValueError, "must end at t1=1.0"),
    ({"t0": "0"}, TypeError, "t0='0'"),
    ({"jit_dynamics": "yes"}, TypeError, "jit_dynamics='yes'"),
    ({"jit_dynamics": True, "solver": "bdf"}, ValueError, "jit_dynamics=True, solver='bdf'"),
    # It named `event_fn`, which the layer does not take.
    ({"event": keras.layers.Dense(1), "solver": "rk4", "num_steps": 4}, ValueError,
     "^`event`: event works with the adaptive solvers"),
])
def test_bad_arguments(kwargs, error, match):
    kwargs = {"dynamics": ki.layers.ConcatDense(3), **kwargs}
    with pytest.raises(error, match=match):
        ki.layers.NeuralODE(**kwargs)


def test_integer_inputs_are_refused():
    layer = ki.layers.NeuralODE(ki.layers.ConcatDense(3))
    with pytest.raises(TypeError, match="dtype=int32"):
        layer(np.ones((2, 3), "int32"))


def test_dynamics_changing_the_shape_are_refused():
    layer = ki.layers.NeuralODE(keras.layers.Dense(4))
    with pytest.raises(ValueError, match=r"shape \(2, 4\) for a state of shape \(2, 3\)"):
        layer(np.ones((2, 3), "float32"))


@pytest.mark.plain_graph(False)  # the defaults: these weights take 62 and 74 evaluations
def test_solver_stats_keep_training_and_validation_apart():
    """The validation pass ran last, and its statistics went under the training names."""
    keras.utils.set_random_seed(0)  # weights for which the two passes take other steps
    x, y = np.full((32, 2), 0.01, "float32"), np.zeros((32, 1), "float32")
    model = keras.Sequential([
        keras.Input((2,)), ki.layers.NeuralODE(ki.layers.ConcatDense(2, activation=None), t1=3.0,
                                               rtol=1e-6, atol=1e-6, name="node"),
        keras.layers.Dense(1)])
    model.compile("sgd", "mse")

    class LastTrainingBatch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.nfe = logs["node/nfe_forward"]

    spy = LastTrainingBatch()
    x_validation = np.full((32, 2), 30.0, "float32")
    history = model.fit(x, y, epochs=1, batch_size=32, verbose=0,
                        validation_data=(x_validation, y),
                        callbacks=[ki.callbacks.SolverStats(), spy])
    model.evaluate(x_validation, y, batch_size=32, verbose=0)
    validation_nfe = int(model.get_layer("node").solver_stats()["nfe_forward"])
    assert history.history["node/nfe_forward"] == [spy.nfe] != [validation_nfe]
    assert history.history["val_node/nfe_forward"] == [validation_nfe]
