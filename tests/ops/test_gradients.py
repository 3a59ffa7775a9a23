"""Gradients of odeint in float64: adjoint and backprop vs finite differences; checkpointed
vs backprop (its numbers to rounding) and its memory."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_implicit as ki

pytestmark = pytest.mark.plain_graph  # numerics in TensorFlow's graph (tests/conftest.py)


TIMES = tf.constant([0.0, 0.4, 1.0], tf.float64)
OUTPUT_WEIGHTS = tf.constant([1.0, 2.0], tf.float64)


class Problem:
    """Time-dependent nonlinear dynamics reading a variable and a param."""

    def __init__(self):
        self.w = tf.Variable(np.array([[-0.3, 1.0], [-1.2, 0.1]]))
        self.y0 = tf.constant([1.0, 0.5], tf.float64)
        self.p = tf.constant([0.5, -0.2], tf.float64)

    def fn(self, t, y, p):
        return tf.tanh(tf.linalg.matvec(self.w, y)) + p * tf.sin(3.0 * t)

    def loss(self, y0, p, gradient, solver="dopri5", tol=1e-10, times=TIMES, **kwargs):
        states = ki.ops.odeint(self.fn, y0, times, solver=solver, rtol=tol, atol=tol, params=p,
                               gradient=gradient, **kwargs).states
        return tf.reduce_sum(states[1] ** 2) + tf.reduce_sum(states[-1] * OUTPUT_WEIGHTS)

    def gradients(self, gradient, eager=False, **kwargs):
        def run(y0, p):
            with tf.GradientTape() as tape:
                tape.watch([y0, p])
                loss = self.loss(y0, p, gradient, **kwargs)
            return tape.gradient(loss, [y0, p, self.w])

        run = run if eager else tf.function(run)
        return [g.numpy() for g in run(self.y0, self.p)]

    def finite_differences(self, eps=1e-5, **kwargs):
        loss = tf.function(lambda y0, p: self.loss(y0, p, "backprop", **kwargs))
        grads = []
        for which in range(2):
            base = [self.y0.numpy(), self.p.numpy()]
            g = np.zeros(2)
            for i in range(2):
                plus, minus = [b.copy() for b in base], [b.copy() for b in base]
                plus[which][i] += eps
                minus[which][i] -= eps
                g[i] = (loss(*plus) - loss(*minus)).numpy() / (2 * eps)
            grads.append(g)
        w0 = self.w.numpy()
        gw = np.zeros_like(w0)
        for index in np.ndindex(*w0.shape):
            shift = np.zeros_like(w0)
            shift[index] = eps
            self.w.assign(w0 + shift)
            plus = loss(self.y0, self.p).numpy()
            self.w.assign(w0 - shift)
            minus = loss(self.y0, self.p).numpy()
            gw[index] = (plus - minus) / (2 * eps)
        self.w.assign(w0)
        return grads + [gw]


@pytest.fixture(scope="module")
def problem_and_reference():
    problem = Problem()
    return problem, problem.finite_differences()


@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_dopri5_gradients_match_finite_differences(problem_and_reference, gradient):
    """For y0, a param and a variable, with time-dependent dynamics and two outputs."""
    problem, reference = problem_and_reference
    for got, expected in zip(problem.gradients(gradient), reference):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("solver", ["tfp_dopri5", "bdf"])
def test_adjoint_through_tfp_solvers_matches_finite_differences(problem_and_reference, solver):
    problem, reference = problem_and_reference
    for got, expected in zip(problem.gradients("adjoint", solver=solver, tol=1e-8), reference):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_adjoint_and_backprop_converge_together_on_a_fixed_grid():
    """On the same RK4 grid the two gradients differ by O(h^4): they agree as steps grow."""
    problem = Problem()
    differences = []
    for steps in (4, 8, 16, 32):
        adjoint = problem.gradients("adjoint", eager=True, solver="rk4", num_steps=steps)
        backprop = problem.gradients("backprop", eager=True, solver="rk4", num_steps=steps)
        differences.append(max(np.abs(a - b).max() for a, b in zip(adjoint, backprop)))
    assert all(b < a for a, b in zip(differences, differences[1:])), differences
    rate = np.log2(differences[-2] / differences[-1])
    assert rate > 3.0, differences
    assert differences[-1] < 1e-5


def test_backwards_in_time_gradient_matches_finite_differences():
    problem = Problem()
    times = TIMES[::-1]
    reference = problem.finite_differences(times=times)
    for gradient in ("adjoint", "backprop"):
        for got, expected in zip(problem.gradients(gradient, times=times), reference):
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_gradient_reaches_keras_layer_weights_through_the_adjoint():
    dense = keras.layers.Dense(3, activation="tanh", dtype="float64")
    y0 = tf.constant(np.random.RandomState(1).randn(4, 3))
    dense.build((None, 3))

    def grads(gradient):
        with tf.GradientTape() as tape:
            tape.watch(y0)
            states = ki.ops.odeint(lambda t, y: dense(y), y0, [0.0, 1.0], rtol=1e-10,
                                   atol=1e-10, gradient=gradient).states
            loss = tf.reduce_sum(states[-1] ** 2)
        return tape.gradient(loss, [y0] + dense.trainable_variables)

    for a, b in zip(grads("adjoint"), grads("backprop")):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)


def test_nested_state_gradient_matches_backprop():
    scale = tf.Variable(0.7, dtype=tf.float64)

    def fn(t, state):
        x, v = state["x"], state["v"]
        return {"x": v, "v": -scale * x - 0.1 * v}

    y0 = {"x": tf.constant([1.0, 2.0], tf.float64), "v": tf.constant([0.0, -1.0], tf.float64)}

    def grads(gradient):
        with tf.GradientTape() as tape:
            tape.watch(y0)
            states = ki.ops.odeint(fn, y0, [0.0, 2.0], rtol=1e-10, atol=1e-10,
                                   gradient=gradient).states
            loss = tf.reduce_sum(states["x"][-1] ** 2) + tf.reduce_sum(states["v"][-1])
        return tape.gradient(loss, [y0["x"], y0["v"], scale])

    for a, b in zip(grads("adjoint"), grads("backprop")):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)


def test_backward_stats_and_callback():
    problem = Problem()
    received = []
    with tf.GradientTape() as tape:
        tape.watch(problem.y0)
        result = ki.ops.odeint(problem.fn, problem.y0, TIMES, params=problem.p,
                               on_backward=received.append)
        loss = tf.reduce_sum(result.states[-1])
    assert result.stats.backward_nfe is None
    tape.gradient(loss, problem.y0)
    assert received == [result.stats]
    assert int(result.stats.backward_nfe) > 0
    assert int(result.stats.backward_status) == 0


def test_error_mask_leaves_components_out_of_step_control():
    """The mechanism of the adjoint seminorm: a hard component left out of the
    error norm no longer dictates the steps."""
    solver = ki.solvers.get("dopri5")
    y0 = [tf.constant([1.0], tf.float64), tf.constant([0.0], tf.float64)]

    def fn(t, y):
        return [-y[0], tf.cos(40.0 * t) * tf.ones_like(y[1])]

    times = tf.constant([0.0, 2.0], tf.float64)
    nfe = {}
    for mask in (None, [True, False]):
        states, stats = solver.solve(fn, y0, times, rtol=1e-6, atol=1e-6, error_mask=mask)
        np.testing.assert_allclose(states[0][-1], [np.exp(-2.0)], rtol=1e-5)
        nfe[mask is None] = int(stats.num_fn_evals)
    assert nfe[False] < nfe[True] / 2, nfe


@pytest.mark.parametrize("seminorm", [True, False])
def test_adjoint_with_and_without_seminorm_matches_backprop(seminorm):
    dense = keras.layers.Dense(8, activation="tanh", dtype="float64")
    y0 = tf.constant(np.random.RandomState(2).randn(4, 8))
    dense.build((None, 8))

    def grads(gradient):
        with tf.GradientTape() as tape:
            states = ki.ops.odeint(lambda t, y: dense(y), y0, [0.0, 2.0], rtol=1e-8, atol=1e-8,
                                   gradient=gradient).states
            loss = tf.reduce_sum(states[-1] ** 2)
        return tape.gradient(loss, dense.trainable_variables)

    for a, b in zip(grads(ki.ops.Adjoint(seminorm=seminorm)), grads("backprop")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("solver, kwargs", [("dopri5", {}), ("rk4", {"num_steps": 7})])
def test_parameter_adjoints_as_one_vector_give_the_numbers_of_one_tensor_each(
        monkeypatch, solver, kwargs):
    """The backward solve carries ``params`` and the variables as one flat vector where
    that changes no arithmetic (ops/adjoint.py); forced back to one tensor each, it gives
    the same gradients to rounding."""
    from keras_implicit.ops import adjoint

    problem = Problem()
    flat = problem.gradients("adjoint", solver=solver, **kwargs)
    packing = adjoint._ParameterAdjoints.__init__

    def one_tensor_each(self, *args):
        packing(self, *args)
        assert self.flat  # p and w: one dtype, static shapes
        self.flat, self.num_tensors = False, len(self.tensors)

    monkeypatch.setattr(adjoint._ParameterAdjoints, "__init__", one_tensor_each)
    for a, b in zip(flat, problem.gradients("adjoint", solver=solver, **kwargs)):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=0)


def test_normalized_adjoint_does_not_depend_on_the_loss_scale():
    # The backward solve runs on a / rms(a): scaling the loss by 1e-6 must give the
    # same steps and the same gradient times 1e-6, and both must match backprop.
    dense = keras.layers.Dense(8, activation="tanh", dtype="float64")
    dense.build((None, 8))
    y0 = tf.constant(np.random.RandomState(3).randn(16, 8))

    def grads(gradient, scale, tol):
        with tf.GradientTape() as tape:
            tape.watch(y0)
            result = ki.ops.odeint(lambda t, y: 2.0 * dense(y), y0, [0.0, 1.0], rtol=tol,
                                   atol=tol, gradient=gradient)
            loss = scale * tf.reduce_sum(result.states[-1] ** 2)
        gradients = tape.gradient(loss, [y0] + dense.trainable_variables)
        return [g.numpy() / scale for g in gradients], result.stats

    reference, _ = grads("backprop", 1.0, 1e-10)
    adjoint = ki.ops.Adjoint(normalize=True)
    unit, unit_stats = grads(adjoint, 1.0, 1e-4)
    tiny, tiny_stats = grads(adjoint, 1e-6, 1e-4)
    assert int(unit_stats.backward_nfe) == int(tiny_stats.backward_nfe)
    for a, b, ref in zip(unit, tiny, reference):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
        assert np.linalg.norm(a - ref) / np.linalg.norm(ref) < 1e-3


def test_adjoint_options_survive_their_config():
    adjoint = ki.ops.Adjoint(rtol=1e-4, seminorm=False, normalize=True, solver="rk4")
    restored = ki.serialization.deserialize(ki.serialization.serialize(adjoint), "ode_gradient")
    assert restored.get_config() == adjoint.get_config()
    assert restored.normalize and not restored.seminorm
    assert ki.serialization.serialize(ki.ops.Adjoint()) == "adjoint"


@pytest.mark.parametrize("solver,kwargs", [("dopri5", {}), ("rk4", {"num_steps": 8})])
@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_jit_dynamics_gives_the_same_states_and_gradients(solver, kwargs, gradient):
    dense = keras.layers.Dense(4, activation="tanh", dtype="float64")
    dense.build((None, 4))
    y0 = tf.constant(np.random.RandomState(0).randn(3, 4))
    scale = tf.constant(0.7, tf.float64)

    def solve(jit):
        with tf.GradientTape() as tape:
            tape.watch([y0, scale])
            result = ki.ops.odeint(lambda t, y, p: p * dense(y) * tf.cos(t), y0,
                                   [0.0, 0.5, 1.0], params=scale, rtol=1e-8, atol=1e-8,
                                   solver=solver, gradient=gradient, jit_dynamics=jit, **kwargs)
            loss = tf.reduce_sum(result.states ** 2)
        grads = tape.gradient(loss, [y0, scale] + dense.trainable_variables)
        return [result.states] + grads, result.stats.forward_nfe

    (plain, plain_nfe), (jitted, jit_nfe) = solve(False), tf.function(lambda: solve(True))()
    assert int(plain_nfe) == int(jit_nfe)
    for a, b in zip(plain, jitted):
        np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-12)


CHECKPOINTED_CASES = {
    # Outputs inside steps, jump times, events, the dense solution, and a first step far
    # too long: rejected trials, whose kept starts the next trial overwrites.
    "adaptive": {"times": [0.0, 0.4, 1.3, 3.0], "first_step": 1.5, "dense": True,
                 "event_fn": lambda t, y: y[:, 0] - 0.3,
                 "step_control": ki.solvers.IController(jump_times=[0.55, 1.1])},
    "adaptive_outputs": {"times": [0.0, 0.4, 3.0], "first_step": 1.5},
}


def _checkpointed_case(case, gradient, eager):
    """The loss (outputs, event times and states, the dense solution), the rejected steps
    and the loss's gradients for ``y0`` and a Keras weight (eager: twice, from a
    persistent tape)."""
    kwargs = dict(CHECKPOINTED_CASES[case])
    times = kwargs.pop("times")
    weight = tf.Variable(np.random.RandomState(0).randn(3, 3) * 0.5)
    y0 = tf.constant(np.random.RandomState(1).randn(4, 3))

    def run():
        # (Persistent in graphs too, the trace took 6x as long.)
        with tf.GradientTape(persistent=eager) as tape:
            tape.watch(y0)
            result = ki.ops.odeint(
                lambda t, y: tf.tanh(tf.matmul(y, weight)) * (1.0 + 0.3 * tf.sin(t)), y0,
                times, rtol=1e-6, atol=1e-6, gradient=gradient, **kwargs)
            steps = tf.cast(tf.range(1, tf.shape(result.states)[0] + 1), tf.float64)
            loss = tf.reduce_sum(result.states ** 2 * steps[:, None, None])
            if result.event_times is not None:
                loss += tf.reduce_sum(result.event_times ** 2) + tf.reduce_sum(
                    result.event_states)
            if kwargs.get("dense"):
                loss += tf.reduce_sum(result.evaluate(tf.constant([0.7, 1.9], tf.float64)) ** 3)
        values = [loss, result.stats.rejected_steps] + tape.gradient(loss, [y0, weight])
        if eager:  # a second gradient from the same tape reads the kept steps again
            values += tape.gradient(loss, [weight])
        return values

    return [x.numpy() for x in (run() if eager else tf.function(run)())]


# Fixed grids: test_solver_properties (the discretisation's exact gradient) and the layer
# contract (a trained, saved and exported model). Events and the dense solution eager:
# their graph is slow to trace (5-9 s a strategy).
@pytest.mark.parametrize("case,eager", [("adaptive", True), ("adaptive_outputs", False)])
def test_checkpointed_gives_the_gradient_of_backprop(case, eager):
    """Every accepted step replayed alone (the default) and segments (``checkpoints=3``):
    the solver's operations replayed exactly, so Backprop's numbers to rounding."""
    reference = _checkpointed_case(case, "backprop", eager)
    assert reference[1] > 0
    for gradient in (ki.ops.Checkpointed(), ki.ops.Checkpointed(checkpoints=3)):
        values = _checkpointed_case(case, gradient, eager)
        assert values[1] == reference[1]
        for a, b in zip(reference, values):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14, err_msg=repr(gradient))


def test_checkpointed_refuses_xla_with_a_clear_error():
    y0 = tf.constant(np.ones((2, 3)))

    @tf.function(jit_compile=True)
    def run():
        with tf.GradientTape() as tape:
            tape.watch(y0)
            states = ki.ops.odeint(lambda t, y: -y, y0, [0.0, 1.0], gradient="checkpointed").states
        return tape.gradient(states, y0)

    with pytest.raises(ValueError, match=r"Checkpointed\(checkpoints=None\) cannot be compiled "
                                         r"with XLA \(jit_compile=True\)"):
        run()
    for gradient, solver, expected in [("checkpointed", "rk4", False), ("backprop", "rk4", True),
                                       ("backprop", "dopri5", False), ("adjoint", "dopri5", True)]:
        layer = ki.layers.NeuralODE(ki.layers.ConcatDense(3), solver=solver, num_steps=4
                                    if solver == "rk4" else None, gradient=gradient)
        assert layer.supports_jit is expected, (gradient, solver)


_MEMORY_PROGRAM = """
import json
from keras_implicit.experiments import measure
measure.enable_cpu_allocator_stats()  # before TensorFlow starts
import keras, numpy as np, tensorflow as tf
import keras_implicit as ki
ki.config.disable_auto_jit()
keras.utils.set_random_seed(0)
mlp = keras.Sequential([keras.layers.Dense(512, activation="tanh"), keras.layers.Dense(64)])
mlp.build((None, 64))
y0 = tf.constant(np.random.RandomState(0).randn(256, 64).astype("float32"))

def peak(gradient, num_steps):
    @tf.function
    def step():
        with tf.GradientTape() as tape:
            states = ki.ops.odeint(lambda t, y: mlp(y), y0, [0.0, 1.0], solver="rk4",
                                   num_steps=num_steps, gradient=gradient).states
            loss = tf.reduce_sum(states[-1] ** 2)
        return tape.gradient(loss, mlp.trainable_variables)
    step()
    meter = measure.StepMemoryMeter("cpu_allocator")
    return min(meter.measure(step) for _ in range(2))

print(json.dumps([peak("backprop", 1), peak("backprop", 40), peak("checkpointed", 40)]))
"""


def test_checkpointed_holds_one_step_of_activations_at_a_time():
    """40 steps: 40 kept states (64 KiB each) and one step's tape, where Backprop holds 40
    tapes. Measured (2026-12-02): 9.4 MB against 106 MB, and 3.5 MB for Backprop's one
    step; with the replays run 10 at a time (TensorFlow's default) 45.6 MB."""
    result = subprocess.run([sys.executable, "-c", _MEMORY_PROGRAM], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one_step, backprop, checkpointed = json.loads(result.stdout.strip().splitlines()[-1])
    assert checkpointed < 0.2 * backprop, (checkpointed, backprop)
    assert checkpointed < 4 * one_step, (checkpointed, one_step)
