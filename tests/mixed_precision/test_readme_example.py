"""The README's "Mixed precision" example runs as written (with jit_dynamics="auto", the
default: fit compiles the float16 adjoint solve with XLA)."""

import pathlib
import re
import warnings

import keras
import numpy as np

import keras_implicit as ki

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_mixed_precision_example_runs():
    section = README.read_text().split("## Mixed precision", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {"keras": keras, "np": np, "ki": ki}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no floor warning, no XLA fallback
        exec(compile(code, "README.md", "exec"), namespace)
    model = namespace["model"]
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    ode, deq = model.layers[1], model.layers[2]
    assert ode.compute_dtype == deq.compute_dtype == "float16"
    assert int(ode.solver_stats()["nfe_backward"]) > 0
    assert int(deq.solver_stats()["iterations_backward"]) > 0
