"""Every layer, model and application trains with fit under both mixed policies.

Tiny shapes and few steps: what is checked is that fit runs (Keras's own
LossScaleOptimizer under mixed_float16 included), the loss is finite and falls,
the variables stay float32 and the solvers ran; the numerics against float32 are
in test_mixed_layers and test_models.
"""

import keras
import numpy as np
import pytest

import keras_implicit as ki
import precision_cases as pc

pytestmark = pytest.mark.plain_graph  # fit under both policies; "auto" under them: the
# README example, test_mixed_layers.py and test_loss_scaling.py (tests/conftest.py)


def _sequential(layer, features):
    return keras.Sequential([keras.Input((features,)), keras.layers.Dense(8), layer,
                             keras.layers.Dense(1)])


def _images(n=32, size=12, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.uniform(size=(n, size, size, 1)).astype("float32") * 0.2
    x[y == 1, : size // 2] += 0.8  # a bright top half: class 1
    return x, y


def _neural_ode():
    x, y = pc.data(32)
    model = _sequential(ki.layers.NeuralODE(ki.layers.ConcatDense(8, activation="tanh"),
                                            name="solver"), 4)
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    return model, (x, y), {"batch_size": 16, "epochs": 4}, "nfe_forward"


def _deq():
    x, y = pc.data(32)
    model = _sequential(ki.layers.DEQ(ki.layers.DEQDenseCell(), tol=1e-2, name="solver"), 4)
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    return model, (x, y), {"batch_size": 16, "epochs": 4}, "iterations_forward"


def _continuous_flow():
    x = np.random.default_rng(0).normal(size=(64, 2)).astype("float32") * [2.0, 0.5]
    model = ki.models.ContinuousFlow(hidden_units=(8,), rtol=1e-2, atol=1e-2)
    model.compile(optimizer=keras.optimizers.Adam(3e-2))
    return model, (x,), {"batch_size": 32, "epochs": 4}, "nfe_forward"


def _latent_ode():
    data = ki.datasets.spirals(16, num_points=20, seed=0)
    x = {k: data[k] for k in ("observations", "times", "mask")}
    model = ki.models.LatentODE(2, 2, 8, rtol=1e-2, atol=1e-2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    # Under mixed_float16 the first steps overflow Keras's initial loss scale (2**15 times
    # a reconstruction loss in the thousands) and are skipped: more steps than the others.
    return model, (x,), {"batch_size": 8, "epochs": 5}, None


def _odenet_mnist():
    model = ki.applications.odenet_mnist("odenet", input_shape=(12, 12, 1), filters=8,
                                         groups=4, rtol=1e-2, atol=1e-2)
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, _images(), {"batch_size": 16, "epochs": 2}, "nfe_forward"


def _deq_mnist():
    model = ki.applications.deq_mnist(input_shape=(12, 12, 1), channels=8, hidden_channels=8,
                                      groups=4, tol=1e-2)
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, _images(), {"batch_size": 16, "epochs": 3}, "iterations_forward"


MODELS = {"NeuralODE": _neural_ode, "DEQ": _deq, "ContinuousFlow": _continuous_flow,
          "LatentODE": _latent_ode, "deq_mnist": _deq_mnist}


@pytest.mark.filterwarnings("ignore:.*below the machine epsilon:UserWarning")
@pytest.mark.parametrize("name", list(MODELS))
def test_fit_trains(policy, name):
    _check_fit(policy, MODELS[name])


# Tracing the convolutional ODE block's adjoint dominates: ~7 s per policy on 2 cores.
@pytest.mark.filterwarnings("ignore:.*below the machine epsilon:UserWarning")
def test_odenet_mnist_fits_under_both_policies():
    for policy in pc.EPS:
        keras.mixed_precision.set_global_policy(policy)
        _check_fit(policy, _odenet_mnist)


def _check_fit(policy, make):
    keras.utils.set_random_seed(0)
    model, data, fit_kwargs, stat = make()
    history = model.fit(*data, verbose=0, **fit_kwargs).history["loss"]
    assert np.all(np.isfinite(history)), history
    assert history[-1] < history[0], history
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (
        policy == "mixed_float16")
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    solvers = [layer for layer in model._flatten_layers()
               if isinstance(layer, (ki.layers.NeuralODE, ki.layers.DEQ))]
    for layer in solvers:
        assert layer.compute_dtype == pc.COMPUTE[policy]
    if stat is not None:
        [layer] = [layer for layer in solvers if stat in layer.solver_stats()] or [model]
        assert int(layer.solver_stats()[stat]) > 0
