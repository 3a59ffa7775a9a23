"""Models saved by keras_implicit 0.1.0 load in safe mode and give the outputs 0.1.0 gave.

The fixtures were written by ``tests/fixtures/v0_1_0/make_fixtures.py`` at commit
a713964. Adaptive solves may take other steps now (the step that lands on an end
time is stretched by up to 1%), so their outputs are compared at the solve's
tolerance; fixed-grid and tight fixed-point solves to rounding.
"""

import pathlib
import warnings

import keras
import numpy as np
import pytest

import keras_implicit as ki

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "v0_1_0"

# name: (relative tolerance of the comparison, whether loading warns of deprecated options)
CASES = {
    "neural_ode_adjoint": (1e-3, False),
    "neural_ode_adjoint_options": (1e-5, True),   # {"name": "dopri5", "safety": 0.8}
    "neural_ode_backprop_bosh3": (1e-3, False),
    "neural_ode_rk4": (1e-12, False),
    "deq_implicit_backward_options": (1e-6, True),
    "deq_phantom": (1e-6, True),
    "continuous_flow": (1e-5, False),
    "latent_ode": (1e-3, False),
}


def _inputs(arrays):
    if "inputs" in arrays:
        return arrays["inputs"]
    return {k[len("inputs_"):]: arrays[k] for k in arrays.files if k.startswith("inputs_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_0_1_0_model_loads_and_gives_its_outputs(name):
    rtol, deprecated = CASES[name]
    arrays = np.load(FIXTURES / f"{name}.npz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = keras.models.load_model(FIXTURES / f"{name}.keras", safe_mode=True)
    warned = any(issubclass(w.category, DeprecationWarning) and (
        "IController" in str(w.message) or "gradient strategy" in str(w.message))
        for w in caught)
    assert warned == deprecated, [str(w.message) for w in caught]
    inputs = _inputs(arrays)
    if isinstance(model, ki.models.ContinuousFlow):
        outputs = model.log_prob(inputs)
    else:
        outputs = model.predict(inputs, verbose=0)
    np.testing.assert_allclose(np.asarray(outputs), arrays["outputs"], rtol=rtol,
                               atol=rtol * np.abs(arrays["outputs"]).max())


def test_migrated_deq_options_become_the_gradient_strategy():
    with pytest.warns(DeprecationWarning, match="gradient strategy"):
        model = keras.models.load_model(FIXTURES / "deq_implicit_backward_options.keras")
    gradient = model.get_layer("deq").gradient
    assert isinstance(gradient, ki.ops.Implicit)
    assert gradient.solver == ki.solvers.Broyden() and gradient.tol == 1e-6
    assert gradient.max_iter == 40
    with pytest.warns(DeprecationWarning):
        model = keras.models.load_model(FIXTURES / "deq_phantom.keras")
    assert model.get_layer("deq").gradient == ki.ops.Phantom(steps=3, damping=0.7)
