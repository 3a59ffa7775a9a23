"""Events, step-size controllers and dense output against exact answers (float64)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from keras_implicit.testing import LinearODE

GRAVITY = 9.81


def falling(t, y, g):
    """y = [height, velocity]: y'' = -g."""
    return tf.stack([y[:, 1], -g * tf.ones_like(y[:, 0])], axis=1)


def drop(heights, gradient="adjoint", solver="dopri5", g=None, tol=1e-10):
    g = tf.Variable(GRAVITY, dtype=tf.float64) if g is None else g
    h = tf.constant(heights, tf.float64)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(h)
        y0 = tf.stack([h, tf.zeros_like(h)], axis=1)
        result = ki.ops.odeint(lambda t, y: falling(t, y, g), y0, [0.0, 10.0], solver=solver,
                               rtol=tol, atol=tol, gradient=gradient,
                               event_fn=lambda t, y: y[:, 0])
        total = tf.reduce_sum(result.event_times)
    return result, tape.gradient(total, h), tape.gradient(total, g)


@pytest.mark.parametrize("solver", ["dopri5", "bosh3"])
def test_falling_bodies_stop_at_their_own_exact_times(solver):
    heights = np.array([1.0, 5.0, 20.0])
    result, _, _ = drop(heights, solver=solver)
    exact = np.sqrt(2 * heights / GRAVITY)
    np.testing.assert_allclose(result.event_times.numpy(), exact, rtol=0, atol=1e-8)
    assert result.event_fired.numpy().all()
    np.testing.assert_allclose(result.event_states[:, 0].numpy(), 0.0, atol=1e-8)
    np.testing.assert_allclose(result.event_states[:, 1].numpy(), -GRAVITY * exact, rtol=1e-8)
    # After its event every sample is held; the last output is the event state.
    np.testing.assert_allclose(result.states[-1].numpy(), result.event_states.numpy())
    assert int(result.stats.event_steps) >= 1


@pytest.mark.parametrize("gradient", ["adjoint", "backprop", "checkpointed"])
def test_event_time_gradients_match_the_closed_form(gradient):
    """t* = sqrt(2 h / g): dt*/dh = 1 / sqrt(2 h g), dt*/dg = -t* / (2 g)."""
    heights = np.array([1.0, 3.0])
    _, grad_h, grad_g = drop(heights, gradient=gradient)
    times = np.sqrt(2 * heights / GRAVITY)
    np.testing.assert_allclose(grad_h.numpy(), 1 / np.sqrt(2 * heights * GRAVITY), rtol=1e-6)
    np.testing.assert_allclose(float(grad_g), np.sum(-times / (2 * GRAVITY)), rtol=1e-6)


def test_event_state_gradients_match_the_closed_form():
    """v* = -g t* = -sqrt(2 g h): dv*/dh = -sqrt(g / (2 h)), under every gradient."""
    for gradient in ("adjoint", "backprop", "checkpointed"):
        h = tf.constant([2.0], tf.float64)
        with tf.GradientTape() as tape:
            tape.watch(h)
            y0 = tf.stack([h, tf.zeros_like(h)], axis=1)
            result = ki.ops.odeint(lambda t, y: falling(t, y, GRAVITY), y0, [0.0, 3.0],
                                   rtol=1e-10, atol=1e-10, gradient=gradient,
                                   event_fn=lambda t, y: y[:, 0])
            velocity = result.event_states[0, 1]
        np.testing.assert_allclose(float(tape.gradient(velocity, h)[0]),
                                   -np.sqrt(GRAVITY / 4.0), rtol=1e-6, err_msg=gradient)


def test_bouncing_ball_by_chaining_events():
    height, restitution, bounces = 2.0, 0.8, 5
    state = tf.constant([[height, 0.0]], tf.float64)
    t, times = 0.0, []
    for _ in range(bounces):
        result = ki.ops.odeint(lambda t, y: falling(t, y, GRAVITY), state, [t, t + 10.0],
                               rtol=1e-11, atol=1e-11, event_fn=lambda t, y: y[:, 0])
        t = float(result.event_times[0])
        times.append(t)
        speed = float(result.event_states[0, 1])
        state = tf.constant([[0.0, -restitution * speed]], tf.float64)
    first = np.sqrt(2 * height / GRAVITY)
    flights = [2 * restitution ** k * GRAVITY * first / GRAVITY for k in range(1, bounces)]
    exact = first + np.concatenate([[0.0], np.cumsum(flights)])
    np.testing.assert_allclose(times, exact, rtol=0, atol=1e-8)


def test_samples_without_an_event_report_the_end_time():
    y0 = tf.constant([[1.0, 0.0], [-1.0, 0.0]], tf.float64)  # the second starts below 0
    result = ki.ops.odeint(lambda t, y: tf.zeros_like(y) + [[0.0, 0.0]], y0, [0.0, 2.0],
                           event_fn=lambda t, y: y[:, 0] - 5.0)
    np.testing.assert_array_equal(result.event_fired.numpy(), [False, False])
    np.testing.assert_array_equal(result.event_times.numpy(), [2.0, 2.0])


def van_der_pol(mu):
    def fn(t, y):
        return tf.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    return fn


def test_a_pi_controller_rejects_fewer_steps_on_van_der_pol():
    y0 = tf.constant([2.0, 0.0], tf.float64)
    times = [0.0, 20.0]
    counts = {}
    recommended = ki.solvers.PIDController(pcoeff=0.2, icoeff=0.7)
    for name, control in (("I", None), ("PI", recommended)):
        result = ki.ops.odeint(van_der_pol(10.0), y0, times, rtol=1e-6, atol=1e-6,
                               step_control=control, max_num_steps=100_000)
        counts[name] = (int(result.stats.accepted_steps), int(result.stats.rejected_steps),
                        result.states[-1].numpy())
    (i_acc, i_rej, i_end), (p_acc, p_rej, p_end) = counts["I"], counts["PI"]
    assert p_rej < i_rej, counts
    assert p_acc + p_rej <= 1.1 * (i_acc + i_rej), counts
    np.testing.assert_allclose(p_end, i_end, rtol=1e-3, atol=1e-3)


def step_input(t, y):
    return -y + tf.cast(t >= 0.5, y.dtype)


def step_exact(t):
    before = 2.0 * np.exp(-t)
    after = 1.0 + (2.0 * np.exp(-0.5) - 1.0) * np.exp(-(t - 0.5))
    return np.where(t < 0.5, before, after)


def test_jump_times_restart_at_a_discontinuity():
    y0 = tf.constant([2.0], tf.float64)
    times = np.linspace(0.0, 1.0, 11)
    results = {}
    for jumps in (None, [0.5]):
        control = ki.solvers.IController(jump_times=jumps)
        result = ki.ops.odeint(step_input, y0, times, rtol=1e-8, atol=1e-8, step_control=control)
        error = np.abs(result.states[:, 0].numpy() - step_exact(times)).max()
        results[jumps is None] = (error, int(result.stats.accepted_steps)
                                  + int(result.stats.rejected_steps))
    error_jump, steps_jump = results[False]
    error_plain, steps_plain = results[True]
    assert error_jump < 1e-7
    assert steps_jump < steps_plain and error_jump < error_plain, results


@pytest.mark.parametrize("solver,value_at_jump,direction", [
    ("dopri5", "left", "forward"), ("dopri5", "right", "forward"),
    ("dopri5", "left", "backward"), ("dopri5", "right", "backward"),
    ("bosh3", "left", "forward"), ("bosh3", "right", "backward")])  # bosh3: 126 steps each
def test_a_jump_gives_either_convention_in_either_direction_to_tolerance(
        solver, value_at_jump, direction):
    """y' = 0.3 y before t = 1, -0.8 y after. dopri5's 6th stage (c = 1) ran at the jump
    time itself and the restart derivative was taken there too: one of the two saw the
    wrong side, so a step landing on the jump was rejected ~40 times (f(1) the right-hand
    value) or the result was 100x the tolerance off (the left-hand one, or backward)."""
    rate = (lambda t: tf.where(t < 1.0, 0.3, -0.8)) if value_at_jump == "right" else (
        lambda t: tf.where(t <= 1.0, 0.3, -0.8))
    times, exact = ([0.0, 2.0], np.exp(-0.5)) if direction == "forward" else (
        [2.0, 0.0], np.exp(0.5))
    counts = {}
    for jumps in (None, [1.0]):
        result = ki.ops.odeint(lambda t, y: tf.cast(rate(t), y.dtype) * y,
                               tf.constant([1.0], tf.float64), times, solver=solver,
                               rtol=1e-8, atol=1e-8,
                               step_control=ki.solvers.IController(jump_times=jumps))
        error = abs(float(result.states[-1, 0]) - exact) / exact
        counts[jumps is None] = int(result.stats.accepted_steps + result.stats.rejected_steps)
    assert error < 1e-7  # with the jump
    assert int(result.stats.rejected_steps) <= 2 and counts[False] < counts[True], counts


def test_a_nan_event_value_is_an_error_that_names_event_fn():
    """A NaN g passed for a sign change: a solve whose every event was NaN reported success
    with NaN event times and states; one NaN sample blamed the state."""
    y0 = tf.constant([[-1.0], [-2.0]], tf.float64)
    rising = lambda t, y: tf.ones_like(y)  # noqa: E731
    log_height = lambda t, y: tf.math.log(y[:, 0])  # noqa: E731  (NaN: negative heights)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"status 5 at time 0\.\d+: the event function \(event_fn\) gave "
                             r"NaN for a sample whose event had not fired"):
        ki.ops.odeint(rising, y0, [0.0, 1.0], event_fn=log_height)
    result = ki.ops.odeint(rising, y0, [0.0, 1.0], event_fn=log_height, on_failure="ignore")
    assert int(result.stats.status) == int(ki.ops.Status.EVENT_NON_FINITE)
    assert not np.any(result.event_fired.numpy())
    assert np.all(np.isfinite(result.event_times.numpy()))
    # Only the second sample's event turns NaN, from t = 0.5 on; the first fires at 1.
    event = lambda t, y: tf.where(tf.constant([False, True]) & (t > 0.5),  # noqa: E731
                                  tf.constant(np.nan, tf.float64), y[:, 0])
    result = ki.ops.odeint(rising, y0, [0.0, 3.0], event_fn=event, on_failure="ignore")
    assert int(result.stats.status) == int(ki.ops.Status.EVENT_NON_FINITE)
    assert float(result.stats.final_time) > 0.5
    assert result.event_fired.numpy().tolist() == [True, False]
    assert abs(float(result.event_times[0]) - 1.0) < 1e-12
    # Still found: a root inside the step before the value turns NaN (one step of a linear
    # solve from log(3) at t = 0 to NaN at t = 10), and signs through +-Inf.
    falling = lambda t, y: -tf.ones_like(y)  # noqa: E731
    result = ki.ops.odeint(falling, -y0 + 1.0, [0.0, 10.0], event_fn=log_height)
    np.testing.assert_allclose(result.event_times.numpy(), [1.0, 2.0], atol=1e-12)
    masked = lambda t, y: tf.where([True, False], y[:, 0] - 0.5, np.inf)  # noqa: E731
    result = ki.ops.odeint(falling, -y0, [0.0, 3.0], event_fn=masked)
    assert result.event_fired.numpy().tolist() == [True, False]
    assert abs(float(result.event_times[0]) - 0.5) < 1e-12


def test_min_and_max_step_bound_the_steps():
    y0 = tf.constant([1.0], tf.float64)
    capped = ki.ops.odeint(lambda t, y: -y, y0, [0.0, 1.0],
                           step_control=ki.solvers.IController(max_step=0.01))
    assert int(capped.stats.accepted_steps) >= 100
    floored = ki.ops.odeint(lambda t, y: -50.0 * y, y0, [0.0, 1.0], rtol=1e-12, atol=1e-12,
                            step_control=ki.solvers.IController(min_step=0.05))
    assert int(floored.stats.accepted_steps) <= 21


@pytest.mark.parametrize("solver", ["dopri5", "bosh3"])
def test_dense_output_matches_the_exact_solution_anywhere(solver):
    problem = LinearODE(dim=2)
    tol = 1e-8
    result = ki.ops.odeint(problem.fn, problem.y0, [0.0, 5.0], solver=solver, rtol=tol, atol=tol,
                           dense=True)
    queries = np.sort(np.random.RandomState(0).uniform(0.0, 5.0, 1000))
    values = result.evaluate(tf.constant(queries)).numpy()
    exact = problem.exact(tf.constant(np.concatenate([[0.0], queries])))[1:].numpy()
    assert values.shape == (1000, 2)
    # The interpolants are 4th (dopri5) / 3rd (bosh3) order: errors at the tolerance's scale.
    assert np.abs(values - exact).max() < 100 * tol
    np.testing.assert_allclose(result.evaluate(5.0).numpy(), result.states[-1].numpy(),
                               rtol=1e-12)


def test_the_dense_solution_of_a_failed_solve_is_nan_where_it_did_not_reach():
    """It repeated the state at the failure time for every later time (0.9136 at t = 2,
    where y = e^-2), beside NaN outputs."""
    for gradient in ("backprop", "checkpointed"):
        result = ki.ops.odeint(lambda t, y: -y, tf.constant([1.0], tf.float64),
                               [0.0, 1.0, 2.0], max_num_steps=3, rtol=1e-10, atol=1e-10,
                               on_failure="ignore", dense=True, gradient=gradient)
        reached = float(result.stats.final_time)
        assert int(result.stats.status) == 1 and 0 < reached < 0.5
        values = result.evaluate(tf.constant([0.0, reached / 2, reached, 0.7, 2.0],
                                             tf.float64)).numpy()[:, 0]
        np.testing.assert_allclose(values[:3], np.exp(-np.array([0.0, reached / 2, reached])),
                                   rtol=1e-9)
        assert np.all(np.isnan(values[3:]))


def test_dense_output_refuses_times_of_rank_two():  # it flattened them
    result = ki.ops.odeint(lambda t, y: -y, tf.constant([[1.0]], tf.float64), [0.0, 1.0],
                           dense=True)
    for t in (tf.constant([[0.2, 0.4]], tf.float64), [[0.2, 0.4]]):
        with pytest.raises(ValueError, match=r"`t` must be a scalar or a 1-D tensor of times. "
                                             r"Received: t of shape \(1, 2\)"):
            result.evaluate(t)
    assert result.evaluate([0.2, 0.4]).shape == (2, 1, 1)


def test_dense_output_is_differentiable_with_backprop_and_checkpointed():
    a = tf.Variable(-0.7, dtype=tf.float64)
    for gradient in ("backprop", "checkpointed"):
        with tf.GradientTape() as tape:
            result = ki.ops.odeint(lambda t, y: a * y, tf.constant([1.0], tf.float64),
                                   [0.0, 2.0], rtol=1e-10, atol=1e-10, dense=True,
                                   gradient=gradient)
            value = result.evaluate(1.3)[0]
        np.testing.assert_allclose(float(tape.gradient(value, a)), 1.3 * np.exp(-0.7 * 1.3),
                                   rtol=1e-6, err_msg=gradient)
    with tf.GradientTape() as tape:
        result = ki.ops.odeint(lambda t, y: a * y, tf.constant([1.0], tf.float64), [0.0, 2.0],
                               dense=True)
        value = result.evaluate(1.3)[0]
    with pytest.raises(tf.errors.InvalidArgumentError, match="not differentiable"):
        tape.gradient(value, a)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"solver": "rk4", "num_steps": 4, "event_fn": lambda t, y: y[:, 0]}, ValueError, "event_fn"),
    ({"solver": "bdf", "dense": True}, ValueError, "dense"),
    ({"solver": "tfp_dopri5", "step_control": "pid"}, ValueError, "step_control"),
    ({"event_fn": lambda t, y: y}, ValueError, r"shape \(batch,\)"),
    ({"event_fn": lambda t, y: tf.cast(y[:, 0] > 0, tf.int32)}, TypeError, "int32"),
    ({"event_fn": "y"}, TypeError, "event_fn"),
    ({"step_control": ki.solvers.IController(jump_times=[2.0])}, ValueError, "jump_times"),
])
def test_bad_event_and_control_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ki.ops.odeint(lambda t, y: -y, tf.ones([3, 2], tf.float64), [0.0, 1.0], **kwargs)


@pytest.mark.parametrize("make,match", [
    (lambda: ki.solvers.IController(min_step=0.1, max_step=0.01), "min_step"),
    (lambda: ki.solvers.IController(jump_times=[0.5, 0.2]), "jump_times"),
    (lambda: ki.solvers.PIDController(pcoeff=1.5, icoeff=1.0), "unstable"),
    (lambda: ki.solvers.PIDController(icoeff=0.0), "icoeff"),
    (lambda: ki.solvers.IController(safety=1.5), "safety=1.5"),
])
def test_bad_controllers(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_h211pi_with_a_negative_pcoeff_is_admissible():
    control = ki.solvers.PIDController(pcoeff=-1 / 6, icoeff=1 / 3)
    result = ki.ops.odeint(van_der_pol(2.0), tf.constant([2.0, 0.0], tf.float64), [0.0, 5.0],
                           rtol=1e-6, atol=1e-6, step_control=control)
    assert int(result.stats.status) == 0


def test_neural_ode_events_sequences_and_stats():
    class Height(keras.layers.Layer):
        def call(self, state, t=None):
            return state[:, 0]

    class Fall(keras.layers.Layer):
        def call(self, state):
            return tf.stack([state[:, 1], -GRAVITY * tf.ones_like(state[:, 0])], axis=1)

    layer = ki.layers.NeuralODE(Fall(dtype="float64"), t1=2.0, solution_times=[0.2, 1.0, 2.0],
                                return_sequences=True, rtol=1e-10, atol=1e-10,
                                event=Height(dtype="float64"), return_events=True,
                                dtype="float64")
    heights = np.array([1.0, 30.0])  # the second lands after t1 = 2
    states, times, fired = layer(np.stack([heights, np.zeros(2)], axis=1))
    exact = np.sqrt(2 * heights / GRAVITY)
    np.testing.assert_allclose(times.numpy(), [exact[0], 2.0], atol=1e-8)
    np.testing.assert_array_equal(fired.numpy(), [True, False])
    # The first body lands at 0.45 s: held at the floor at 1.0 and 2.0.
    np.testing.assert_allclose(states[0, 1:, 0].numpy(), 0.0, atol=1e-8)
    assert int(layer.solver_stats()["event_steps"]) >= 1
    config = layer.get_config()
    assert config["return_events"] is True and config["event"]["class_name"] == "Height"
