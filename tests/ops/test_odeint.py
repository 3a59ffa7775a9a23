"""odeint against exact solutions: every solver, convergence orders, tolerances."""

import types

import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from keras_implicit.testing import LinearODE, Logistic, TimeDependentLinearODE

pytestmark = pytest.mark.plain_graph  # numerics in TensorFlow's graph (tests/conftest.py)


ADAPTIVE = ["dopri5", "bosh3", "tfp_dopri5", "bdf"]
FIXED = {"euler": 1, "midpoint": 2, "rk4": 4}


def solve(fn, y0, times, solver, **kwargs):
    """odeint inside tf.function (eager loops of thousands of steps are slow; eager
    execution is tested separately against tf.function and XLA)."""

    @tf.function
    def run():
        result = ki.ops.odeint(fn, y0, times, solver=solver, **kwargs)
        return result.states, result.stats.as_dict()

    states, stats = run()
    return types.SimpleNamespace(states=states, stats=types.SimpleNamespace(**stats))


def max_error(result, problem, times):
    return float(tf.reduce_max(tf.abs(result.states - problem.exact(times))))


@pytest.mark.parametrize("solver", ADAPTIVE)
def test_adaptive_solvers_solve_linear_system(solver):
    problem = LinearODE(dim=4, batch=3)
    times = tf.constant([0.0, 0.5, 1.3, 2.0], tf.float64)
    result = solve(problem.fn, problem.y0, times, solver, rtol=1e-8, atol=1e-8)
    assert result.states.shape == (4, 3, 4)
    assert max_error(result, problem, times) < 1e-6
    assert int(result.stats.status) == 0
    assert int(result.stats.forward_nfe) > 0


@pytest.mark.parametrize("solver", ADAPTIVE)
def test_adaptive_solvers_meet_their_tolerance(solver):
    """Global error within 50x the tolerance at 1e-5 and 1e-8 (it accumulates over steps)."""
    problem = Logistic()
    times = tf.constant(np.linspace(0.0, 4.0, 9), tf.float64)
    for tol in (1e-5, 1e-8):
        result = solve(problem.fn, problem.y0, times, solver, rtol=tol, atol=tol)
        assert max_error(result, problem, times) < 50 * tol


@pytest.mark.parametrize("solver,order", sorted(FIXED.items()))
def test_fixed_grid_solvers_solve_linear_system(solver, order):
    problem = LinearODE(dim=3)
    times = tf.constant([0.0, 1.0, 2.0], tf.float64)
    result = solve(problem.fn, problem.y0, times, solver, num_steps=400)
    assert max_error(result, problem, times) < {1: 1e-2, 2: 5e-5, 4: 1e-10}[order]
    assert int(result.stats.accepted_steps) == 400


@pytest.mark.parametrize("solver,order", sorted(FIXED.items()))
def test_fixed_grid_convergence_order(solver, order):
    """The slope of log(error) against log(step) is the method's order (± 0.3)."""
    problem = TimeDependentLinearODE(dim=3)
    times = tf.constant([0.0, 2.0], tf.float64)
    steps = [8, 16, 32, 64] if order < 4 else [4, 8, 16, 32]
    errors = [max_error(solve(problem.fn, problem.y0, times, solver, num_steps=n), problem,
                        times) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.3, (errors, slope)


def test_dense_output_of_dopri5_is_fourth_order():
    """Interpolated outputs are as accurate as step endpoints (no clamping to outputs)."""
    problem = LinearODE(dim=2)
    times = tf.constant(np.linspace(0.0, 5.0, 101), tf.float64)
    result = solve(problem.fn, problem.y0, times, "dopri5", rtol=1e-7, atol=1e-7)
    assert max_error(result, problem, times) < 1e-5
    # 100 outputs cost far fewer than 100 steps.
    assert int(result.stats.accepted_steps) < 60


@pytest.mark.parametrize("solver,kwargs", [("dopri5", {}), ("rk4", {"num_steps": 200}),
                                           ("tfp_dopri5", {})])
def test_integration_backwards_in_time(solver, kwargs):
    problem = LinearODE(dim=2)
    forward_times = tf.constant([0.0, 0.7, 1.5], tf.float64)
    end = problem.exact(forward_times)[-1]
    result = solve(problem.fn, end, forward_times[::-1], solver, rtol=1e-9, atol=1e-9, **kwargs)
    expected = problem.exact(forward_times)[::-1]
    assert float(tf.reduce_max(tf.abs(result.states - expected))) < 1e-7


def test_nested_state_structure():
    problem = LinearODE(dim=2)

    def fn(t, state):
        return {"x": problem.fn(t, state["x"]), "pair": (-state["pair"][0], 2 * state["pair"][1])}

    y0 = {"x": problem.y0, "pair": (tf.constant([1.0], tf.float64), tf.constant(1.0, tf.float64))}
    times = tf.constant([0.0, 1.0], tf.float64)
    result = ki.ops.odeint(fn, y0, times, rtol=1e-9, atol=1e-9)
    assert set(result.states) == {"x", "pair"}
    np.testing.assert_allclose(result.states["x"], problem.exact(times), atol=1e-7)
    np.testing.assert_allclose(result.states["pair"][0][-1], [np.exp(-1.0)], rtol=1e-7)
    np.testing.assert_allclose(result.states["pair"][1][-1], np.exp(2.0), rtol=1e-7)


def test_params_are_passed_to_fn():
    y0 = tf.constant([1.0], tf.float64)
    result = ki.ops.odeint(lambda t, y, p: p["rate"] * y, y0, [0.0, 1.0],
                           params={"rate": tf.constant(-2.0, tf.float64)}, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(result.states[-1], [np.exp(-2.0)], rtol=1e-7)


@pytest.mark.parametrize("solver,kwargs", [
    ("dopri5", {}), ("rk4", {"num_steps": 16}), ("tfp_dopri5", {}),
    # Backprop through the fixed grid compiles too (static loop bounds).
    ("rk4", {"num_steps": 16, "gradient": "backprop"})])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_tf_function_and_xla_match_eager(solver, kwargs, jit_compile):
    problem = LinearODE(dim=2)
    times = tf.constant([0.0, 1.0, 2.0], tf.float64)

    def solve_and_grad(y0):
        with tf.GradientTape() as tape:
            tape.watch(y0)
            states = ki.ops.odeint(problem.fn, y0, times, solver=solver, **kwargs).states
            loss = tf.reduce_sum(states[-1] ** 2)
        return states, tape.gradient(loss, y0)

    eager = solve_and_grad(problem.y0)
    compiled = tf.function(solve_and_grad, jit_compile=jit_compile)(problem.y0)
    for a, b in zip(eager, compiled):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("solver,gradient,supported", [
    ("dopri5", "adjoint", True), ("rk4", "backprop", True), ("dopri5", "backprop", False),
    ("bdf", "adjoint", False)])
def test_neural_ode_tells_keras_whether_xla_can_compile_it(solver, gradient, supported):
    layer = ki.layers.NeuralODE(ki.layers.ConcatDense(2), solver=solver, gradient=gradient,
                                num_steps=4 if solver == "rk4" else None)
    assert layer.supports_jit is supported


def test_times_as_dynamic_tensor_in_tf_function():
    problem = LinearODE(dim=2)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float64)])
    def solve(times):
        return ki.ops.odeint(problem.fn, problem.y0, times, rtol=1e-8, atol=1e-8).states

    for times in ([0.0, 1.0], [0.0, 0.5, 1.0, 3.0], [2.0, 1.0, 0.0]):
        times = tf.constant(times, tf.float64)
        np.testing.assert_allclose(solve(times), problem.exact(times), atol=1e-6)


def test_nfe_accounting_of_dopri5():
    """Each dopri5 step costs 6 new evaluations; the first step choice costs 2."""
    problem = Logistic()
    result = ki.ops.odeint(problem.fn, problem.y0, [0.0, 3.0], rtol=1e-6, atol=1e-6)
    stats = result.stats
    steps = int(stats.accepted_steps) + int(stats.rejected_steps)
    assert int(stats.forward_nfe) == 2 + 6 * steps
    assert stats.backward_nfe is None


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("solver", ["dopri5", "bosh3"])
@pytest.mark.parametrize("gradient", ["backprop", "adjoint"])
def test_rejected_steps_keep_the_state_and_its_gradient(gradient, solver, jit_compile):
    """A rejected step keeps the state and its derivative, forward and in the gradient:
    in TensorFlow's graph the loop takes one or the other by a cond, under XLA by a
    select. y' = a y from a first step longer than the interval (rejected), against
    y(t) = y0 exp(a t) and its derivatives, float64."""
    a = tf.Variable(-4.0, dtype=tf.float64)
    y0 = tf.constant([1.0, 2.0], tf.float64)

    @tf.function(jit_compile=jit_compile)
    def run():
        with tf.GradientTape() as tape:
            tape.watch(y0)
            result = ki.ops.odeint(lambda t, y: a * y, y0, [0.0, 0.5], solver=solver,
                                   first_step=1.0, rtol=1e-10, atol=1e-10, gradient=gradient,
                                   jit_dynamics=False)
            loss = tf.reduce_sum(result.states[-1])
        return result.states[-1], tape.gradient(loss, [y0, a]), result.stats.rejected_steps

    final, (grad_y0, grad_a), rejected = run()
    assert int(rejected) > 0
    decay = np.exp(-4.0 * 0.5)
    np.testing.assert_allclose(final, [decay, 2 * decay], rtol=1e-8)
    np.testing.assert_allclose(grad_y0, [decay, decay], rtol=1e-8)
    np.testing.assert_allclose(grad_a, 0.5 * 3.0 * decay, rtol=1e-7)


def test_float32_state():
    problem = LinearODE(dim=2, dtype=tf.float32)
    result = ki.ops.odeint(problem.fn, problem.y0, [0.0, 1.0], rtol=1e-5, atol=1e-5)
    assert result.states.dtype == tf.float32
    np.testing.assert_allclose(result.states[-1], problem.exact([0.0, 1.0])[-1], atol=1e-4)
