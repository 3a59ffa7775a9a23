"""The package: backend check, public API names, registration."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_implicit as ki


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_import_with_another_backend_says_what_to_set(backend):
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run([sys.executable, "-c", "import keras_implicit"], env=env,
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "Set KERAS_BACKEND=tensorflow" in result.stderr
    assert f"KERAS_BACKEND='{backend}'" in result.stderr


_FRESH_PROCESS = """
import sys
import keras, numpy as np
import keras_implicit as ki

ki.layers.NeuralODE(ki.layers.ConcatDense(2))(np.ones((1, 2), "float32"))
assert "tensorflow_probability" not in sys.modules, "imported with NeuralODE"
flow = keras.models.load_model(sys.argv[1])  # registered without TFP; loads it now
assert "tensorflow_probability" in sys.modules
x = np.linspace(-1.0, 1.0, 6, dtype="float32").reshape(3, 2)
np.save(sys.argv[2], flow.log_prob(x).numpy())
"""


def test_tensorflow_probability_loads_with_the_first_flow_not_with_the_package(tmp_path):
    """``import keras_implicit`` and a NeuralODE leave TFP (about 2 s of a start) unloaded;
    a saved ContinuousFlow still loads in such a process, with the same log-density."""
    flow = ki.models.ContinuousFlow(hidden_units=(4,), solver="rk4", num_steps=2,
                                    trace="exact", jit_dynamics=False, seed=0)
    x = np.linspace(-1.0, 1.0, 6, dtype="float32").reshape(3, 2)
    expected = flow.log_prob(x).numpy()
    flow.save(tmp_path / "flow.keras")
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, str(tmp_path / "flow.keras"),
         str(tmp_path / "log_prob.npy")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "log_prob.npy"), expected, rtol=1e-6)


def test_public_api_names():
    for name in ("odeint", "Adjoint", "Backprop", "ODEResult", "ODEStats"):
        assert hasattr(ki.ops, name), name
    for name in ("NeuralODE", "ConcatDense", "ConcatConv2D"):
        assert hasattr(ki.layers, name), name
    assert hasattr(ki.callbacks, "SolverStats")
    assert set(ki.config.__all__) == {"disable_auto_jit", "enable_auto_jit",
                                      "is_auto_jit_enabled"}
    assert set(ki.solvers.ODE_SOLVERS) >= {"dopri5", "bosh3", "bdf", "tfp_dopri5", "rk4",
                                           "midpoint", "euler"}


@pytest.mark.parametrize("cls", [ki.layers.NeuralODE, ki.layers.ConcatDense,
                                 ki.layers.ConcatConv2D, ki.callbacks.SolverStats])
def test_public_classes_are_registered_serializable(cls):
    assert keras.saving.get_registered_name(cls) == f"keras_implicit>{cls.__name__}"
    assert cls.__doc__ and "Example" in cls.__doc__ or cls is ki.callbacks.SolverStats


def test_a_taken_name_or_keras_name_is_refused_not_replaced():
    """Registering under a taken name (a built-in's too) replaced the class silently, in
    saved models' configs as well; two classes of one class name clashed in Keras."""
    with pytest.raises(ValueError, match="name 'dopri5' is taken by keras_implicit.solvers"):
        @ki.solvers.register("dopri5")
        class NotDopri(ki.solvers.FixedGridRungeKutta):
            pass

    def define(tableau):
        class TestClashRule(ki.solvers.FixedGridRungeKutta):
            def __init__(self):
                super().__init__(tableau)

        return TestClashRule

    first, second = define("euler"), define("midpoint")
    second.__qualname__ = "another.TestClashRule"
    ki.solvers.register("test_clash_rule")(first)
    ki.solvers.register("test_clash_rule")(first)  # the same class again: fine
    with pytest.raises(ValueError, match="name 'test_clash_rule' is taken"):
        ki.solvers.register("test_clash_rule")(second)
    with pytest.raises(ValueError, match="Keras knows another class as 'Custom>TestClashRule'"):
        ki.solvers.register("test_clash_rule_2")(second)
    assert type(ki.solvers.get("test_clash_rule")) is first
    assert ki.testing.run_layer_contract is not None  # documented as ki.testing.*
