"""The package: backend check, public API names, registration."""

import os
import subprocess
import sys

import keras
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
