"""jit_cell="auto" | True | False for fixed points: the same numbers on every path, the path
it chose, and a clean fallback for a cell XLA cannot compile."""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from keras_implicit.layers.deq_cells import DEQConvCell, DEQDenseCell


class Tanh:
    """z = tanh(z W + x U + b), float64, with its variables."""

    def __init__(self, dim=5, batch=3, seed=0):
        rng = np.random.default_rng(seed)
        w = rng.normal(size=(dim, dim))
        self.w = tf.Variable(0.6 * w / np.linalg.norm(w, 2))
        self.u = tf.Variable(rng.normal(size=(dim, dim)))
        self.b = tf.Variable(0.1 * rng.normal(size=dim))
        self.x = tf.constant(rng.normal(size=(batch, dim)))
        self.c = tf.constant(rng.normal(size=(batch, dim)))

    def fn(self, z, x):
        return tf.tanh(z @ self.w + x @ self.u + self.b)

    def run(self, jit_cell, fn=None, **kwargs):
        """A traced solve: ``[z*, dL/dx, dL/dW, dL/dU, dL/db]`` and the path taken."""
        box = {}

        @tf.function
        def run():
            with tf.GradientTape() as tape:
                tape.watch(self.x)
                result = ki.ops.fixed_point(fn or self.fn, self.x, tf.zeros_like(self.x),
                                            tol=1e-12, max_iter=200, jit_cell=jit_cell,
                                            **kwargs)
                loss = tf.reduce_sum(result.z * self.c)
            box["compiled"] = result.stats.compiled
            grads = tape.gradient(loss, [self.x, self.w, self.u, self.b])
            return [result.z] + grads

        return [v.numpy() for v in run()], box["compiled"]


CASES = [("anderson", "implicit"), ("broyden", "implicit"), ("picard", "implicit"),
         ("anderson", "phantom"), ("anderson", "unrolled")]


@pytest.mark.parametrize("solver,gradient", CASES)
def test_every_path_gives_the_same_fixed_point_and_gradients(solver, gradient):
    problem = Tanh()
    reference, path = problem.run(False, solver=solver, gradient=gradient)
    assert path == "none"
    for jit_cell, expected in (("auto", "none" if gradient == "unrolled" else "solve"),
                               (True, "cell")):
        values, path = problem.run(jit_cell, solver=solver, gradient=gradient)
        assert path == expected
        for a, b in zip(reference, values):
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12, err_msg=str(jit_cell))


def test_auto_leaves_convolutional_cells_and_eager_calls_uncompiled():
    cell = DEQConvCell(hidden_channels=4, groups=2, dtype="float64")
    x = tf.constant(np.random.default_rng(1).normal(size=(2, 4, 4, 2)))
    cell.build(x.shape, x.shape)
    box = {}

    @tf.function
    def run():
        result = ki.ops.fixed_point(cell, x, tf.zeros_like(x), tol=1e-8)
        box["compiled"] = result.stats.compiled
        return result.z

    traced = run()
    assert box["compiled"] == "none"
    problem = Tanh()
    eager = ki.ops.fixed_point(problem.fn, problem.x, tf.zeros_like(problem.x))
    assert eager.stats.compiled == "none"  # nothing to amortize a compilation over
    assert traced.shape == x.shape


def with_py_function(v):
    # (no inputs: a py_function's gradient cannot be taken twice from a persistent tape,
    # as the implicit backward solve does, compiled or not)
    return v * tf.py_function(lambda: tf.constant(1.0, tf.float64), [], tf.float64)


@tf.custom_gradient
def halved_with_numpy_gradient(v):
    def gradient(dv):
        return tf.ensure_shape(tf.numpy_function(lambda d: 0.5 * d, [dv], dv.dtype), dv.shape)
    return 0.5 * v, gradient


def looped(v):  # its gradient's accumulators have no static size
    return tf.while_loop(lambda i, v: i < 2, lambda i, v: (i + 1, 0.9 * v), (0, v))[1]


# (what the cell applies to its output, the fallback warning's reason)
REFUSED = {"py_function": (with_py_function, "XLA has no kernel for EagerPyFunc"),
           "custom gradient in NumPy": (halved_with_numpy_gradient,
                                        "its gradient: XLA has no kernel for PyFunc"),
           "loop without a bound": (looped, "its gradient: .*requires a fixed tensor list size")}


@pytest.mark.parametrize("refused", list(REFUSED))
def test_auto_falls_back_with_one_warning_for_a_cell_xla_cannot_compile(refused):
    """A cell, or its gradient, that XLA refuses runs in the graph after one warning. The
    implicit backward solve is compiled whole under "auto": a gradient XLA refuses failed
    there at run time until the probe lowered the gradient too."""
    problem = Tanh()
    apply, reason = REFUSED[refused]

    def cell(z, x):
        return apply(problem.fn(z, x))

    with pytest.warns(UserWarning, match=f"cell.*does not compile with XLA \\({reason}") as log:
        values, path = problem.run("auto", fn=cell)
    assert path == "none"
    assert len([w for w in log if "XLA" in str(w.message)]) == 1
    reference, _ = problem.run(False, fn=cell)
    for a, b in zip(reference, values):
        np.testing.assert_array_equal(b, a)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        problem.run(False, fn=cell)  # False is silent


def test_the_deq_keeps_auto_in_its_config_and_reports_the_path(tmp_path):
    x = np.random.default_rng(3).normal(size=(8, 4)).astype("float32")
    model = keras.Sequential([keras.Input((4,)), ki.layers.DEQ(
        DEQDenseCell(), state_shape=(6,), tol=1e-5, name="deq"), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(x, x[:, :1], epochs=1, batch_size=8, verbose=0)
    deq = model.get_layer("deq")
    assert deq.jit_cell == "auto" and deq.get_config()["jit_cell"] == "auto"
    assert deq.compiled_path == "solve"
    path = os.path.join(tmp_path, "deq.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True).get_layer("deq")
    assert loaded.jit_cell == "auto" and loaded.compiled_path is None  # decided when traced
    np.testing.assert_array_equal(loaded(x).numpy(), deq(x).numpy())  # eager: uncompiled


_MEMORY_PROGRAM = """
import json
from keras_implicit.experiments import measure
measure.enable_cpu_allocator_stats()  # before TensorFlow starts
import keras, numpy as np, tensorflow as tf
import keras_implicit as ki
from keras_implicit.layers.deq_cells import DEQDenseCell
keras.utils.set_random_seed(0)
layer = ki.layers.DEQ(DEQDenseCell(), solver=ki.solvers.Anderson(memory=5), tol=1e-30,
                      max_iter=10, on_failure="ignore")
x = tf.constant(np.random.RandomState(0).randn(64, 1024).astype("float32"))
layer(x)

@tf.function
def step():
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) ** 2)
    return tape.gradient(loss, layer.trainable_variables)

step()
meter = measure.StepMemoryMeter("cpu_allocator")
peak = min(meter.measure(step) for _ in range(2))
gradients = sum(4 * int(np.prod(v.shape)) for v in layer.trainable_variables)
print(json.dumps([layer.compiled_path, peak, gradients, 4 * 64 * 1024]))
"""


def test_a_compiled_implicit_backward_does_not_hold_its_history_with_the_gradients():
    """The compiled backward solve returns the cotangent alone; the variables' gradients
    (8 MiB here) follow in the graph. In one XLA program its temporary buffer (the
    Anderson history, 10 states) lived beside them: measured (2026-12-02) 11.5 MiB
    against 8.5-8.75 MiB now, and 8.75 MiB in TensorFlow's graph."""
    result = subprocess.run([sys.executable, "-c", _MEMORY_PROGRAM], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    path, peak, gradients, state = json.loads(result.stdout.strip().splitlines()[-1])
    assert path == "solve"
    assert peak < gradients + 6 * state, (peak, gradients, state)
