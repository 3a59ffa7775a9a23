"""Regression tests of the hostile probe's findings (issue 10): each reproduction, fixed."""

import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki


def exponential_gradient(times, gradient="adjoint", dtype=tf.float64, **kwargs):
    a = tf.Variable(0.7, dtype=dtype)
    with tf.GradientTape() as tape:
        result = ki.ops.odeint(lambda t, y: a * y, tf.constant([1.3], dtype),
                               tf.constant(times, dtype), gradient=gradient, **kwargs)
        loss = tf.reduce_sum(result.states)
    return float(tape.gradient(loss, a)), result


@pytest.mark.parametrize("gradient", ["adjoint", "backprop", "checkpointed"])
def test_close_output_times_do_not_underflow_the_adjoint(gradient):
    """times = [0, 1e-3, 1]: the backward solve of [1e-3, 1] ended with a rounding-sized
    step that warm-started [0, 1e-3] into a step-size underflow."""
    times = [0.0, 1e-3, 1.0]
    grad, _ = exponential_gradient(times, gradient)
    exact = 1.3 * sum(t * np.exp(0.7 * t) for t in times)
    assert abs(grad - exact) < 1e-3 * exact


def test_close_output_times_under_xla_keep_the_loss_finite():
    a = tf.Variable(0.7)

    @tf.function(jit_compile=True)
    def step():
        with tf.GradientTape() as tape:
            states = ki.ops.odeint(lambda t, y: a * y, tf.constant([1.3]),
                                   tf.constant([0.0, 1e-3, 1.0])).states
            loss = tf.reduce_sum(states)
        return loss, tape.gradient(loss, a)

    loss, grad = step()
    assert np.isfinite(float(loss)) and np.isfinite(float(grad))


def test_neural_ode_fits_with_an_early_solution_time():
    x = np.random.RandomState(0).randn(32, 2).astype("float32")
    model = keras.Sequential([
        keras.Input((2,)),
        ki.layers.NeuralODE(ki.layers.ConcatDense(2, activation="tanh"),
                            solution_times=[0.001, 1.0], return_sequences=True),
        keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    history = model.fit(x, x[:, :1], epochs=2, batch_size=8, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_step_counts_that_would_overflow_are_refused():
    y0 = tf.constant([1.0], tf.float64)
    with pytest.raises(ValueError, match=r"at most 2\*\*31 - 1.*num_steps=2147483648"):
        ki.ops.odeint(lambda t, y: y, y0, [0.0, 1.0], solver="euler", num_steps=2**31)
    with pytest.raises(ValueError, match=r"at most 2\*\*31 - 1.*max_num_steps=2147483648"):
        ki.ops.odeint(lambda t, y: y, y0, [0.0, 1.0], max_num_steps=2**31)
    with pytest.raises(ValueError, match="num_steps=20000, max_num_steps=10000"):
        ki.ops.odeint(lambda t, y: y, y0, [0.0, 1.0], solver="euler", num_steps=20_000)


def test_a_step_the_time_dtype_cannot_resolve_is_an_error():
    """float32 times: 2**30 steps over [0, 1] are below the spacing of floats near 1."""
    with pytest.raises(ValueError, match="num_steps"):
        ki.ops.odeint(lambda t, y: y, tf.constant([1.0]), [0.0, 1.0], solver="euler",
                      num_steps=2**30, max_num_steps=2**31 - 1)


def test_half_precision_states_take_many_steps_in_float32_time():
    """float16 cannot count 70,000 steps of 1/70000; the solver's time is float32."""
    run = tf.function(lambda: ki.ops.odeint(
        lambda t, y: y, tf.constant([1.0], tf.float16), [0.0, 1.0], solver="euler",
        num_steps=70_000, max_num_steps=70_000).states[-1], jit_compile=True)
    np.testing.assert_allclose(float(run()[0]), np.e, rtol=2e-3)


def test_long_intervals_may_start_with_small_steps(dtype=tf.float32):
    """The step-size floor was 16 eps of the interval's end: dy/dt = 0 (a zero-initialised
    dynamics) failed in float32 over [0, 10] (its first step is 1e-6), and so did
    y' = -1000 e^-t (y - 1) over [0, 1000]. The floor is now relative to the current time."""
    for t1 in (10.0, 1000.0):
        result = ki.ops.odeint(lambda t, y: tf.zeros_like(y), tf.ones([2, 3], dtype), [0.0, t1])
        np.testing.assert_array_equal(result.states[-1].numpy(), 1.0)
    result = ki.ops.odeint(lambda t, y: -1000.0 * tf.exp(-t) * (y - 1.0),
                           tf.constant([2.0], dtype), [0.0, 1000.0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result.states[-1].numpy(), 1.0, atol=1e-5)  # 1 + e^-1000
    # Solves that cannot go on still stop soon: a blow-up at t = 1, a NaN from t > 0 on.
    result = ki.ops.odeint(lambda t, y: y ** 2, tf.constant([1.0], dtype), [0.0, 2.0],
                           on_failure="ignore")
    assert int(result.stats.status) == int(ki.ops.Status.STEP_SIZE_TOO_SMALL)
    assert abs(float(result.stats.final_time) - 1.0) < 1e-3
    assert int(result.stats.forward_nfe) < 3000
    result = ki.ops.odeint(lambda t, y: tf.sqrt(-t) * y, tf.constant([1.0], dtype), [0.0, 1.0],
                           on_failure="ignore")
    assert int(result.stats.status) == int(ki.ops.Status.NON_FINITE)
    assert int(result.stats.forward_nfe) < 1000


@pytest.mark.parametrize("solver", ["tfp_dopri5", "bdf"])
def test_tfp_solvers_stop_soon_after_the_dynamics_turn_nan(solver):
    def fn(t, y):
        return tf.where(t > 0.5, tf.constant(np.nan, tf.float64), -y)

    result = ki.ops.odeint(fn, tf.constant([1.0, 2.0], tf.float64), [0.0, 1.0], solver=solver,
                           on_failure="ignore")
    assert int(result.stats.status) == int(ki.ops.Status.NON_FINITE)
    # It stops soon, counted in evaluations, not seconds (it had run on for minutes).
    assert int(result.stats.forward_nfe) < 500
    # TFP's step control locates the onset to about a step at atol = 1e-3.
    assert abs(float(result.stats.final_time) - 0.5) < 0.1
    assert np.all(np.isnan(result.states[-1].numpy()))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"status 2 at time 0\.[456]"):
        ki.ops.odeint(fn, tf.constant([1.0, 2.0], tf.float64), [0.0, 1.0], solver=solver)


def test_backward_failure_names_the_time_it_reached():
    """A backward (adjoint) solve that runs out of steps reports its own time, not 0."""
    a = tf.Variable(0.7, dtype=tf.float64)
    with tf.GradientTape() as tape:
        states = ki.ops.odeint(lambda t, y: a * y, tf.constant([1.0], tf.float64),
                               [0.0, 1.0, 2.0], rtol=1e-10, atol=1e-10,
                               gradient=ki.ops.Adjoint(max_num_steps=3)).states
        loss = tf.reduce_sum(states)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"backward \(adjoint\) solve .* status 1 at time 1\.\d"):
        tape.gradient(loss, a)


@pytest.mark.parametrize("traced", [False, True])
def test_empty_batches_give_empty_outputs_and_zero_gradients(traced):
    """Eager, and traced (where "auto" compiles both layers' whole solves with XLA)."""
    ode = ki.layers.NeuralODE(ki.layers.ConcatDense(2, activation="tanh"))
    deq = ki.layers.DEQ(ki.layers.DEQDenseCell(), state_shape=(3,))
    for layer, width in ((ode, 2), (deq, 3)):
        def call(empty):
            with tf.GradientTape() as tape:
                out = layer(empty)
                loss = tf.reduce_sum(out)
            return out, tape.gradient(loss, layer.trainable_variables)

        out, grads = (tf.function(call) if traced else call)(tf.zeros([0, 2]))
        assert out.shape == (0, width)
        for grad in grads:
            assert grad is None or float(tf.reduce_sum(tf.abs(grad))) == 0.0
        assert layer.compiled_path == ("solve" if traced else "none"), layer.compiled_path


@pytest.mark.plain_graph  # XLA compiled every replica's shape: 45 of the test's 50 s
def test_a_last_batch_smaller_than_the_replicas_trains(two_device_strategies):
    """33 samples in batches of 16: the last global batch (1 sample) leaves one replica empty.

    (Compiled empty batches: ``test_empty_batches_give_empty_outputs_and_zero_gradients``.)"""
    _, mirrored = two_device_strategies
    x = np.random.RandomState(0).randn(33, 2).astype("float32")
    with mirrored.scope():
        model = keras.Sequential([
            keras.Input((2,)),
            ki.layers.NeuralODE(ki.layers.ConcatDense(2, activation="tanh")),
            # (jit_cell=False: XLA compiles each replica's shape, 8, 1 and 0, which tripled
            # this test's time; tests/layers/test_deq.py runs "auto" under the strategy)
            ki.layers.DEQ(ki.layers.DEQDenseCell(), state_shape=(3,), jit_cell=False),
            keras.layers.Dense(1)])
        model.compile("sgd", "mse")
    history = model.fit(x, x[:, :1], batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


@pytest.mark.parametrize("kwargs,match", [
    ({"rtol": float("nan")}, "rtol=nan"), ({"atol": float("inf")}, "atol=inf"),
    ({"rtol": float("inf")}, "rtol=inf"), ({"t1": float("inf")}, "t1=inf"),
    ({"t0": float("nan")}, "t0=nan"), ({"gradient": {"name": "adjoint", "rtol": float("nan")}},
                                       "rtol=nan"),
    ({"solver": {"name": "bdf", "max_order": 9}}, "max_order=9"),
    ({"solver": {"name": "bdf", "newton_tol_factor": -1}}, "newton_tol_factor=-1"),
    ({"solver": {"name": "tfp_dopri5", "bogus": 1}}, "bogus"),
    ({"solution_times": [0.5, float("nan"), 1.0], "return_sequences": True}, "solution_times"),
])
def test_numeric_options_are_checked_on_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ki.layers.NeuralODE(ki.layers.ConcatDense(2), **kwargs)


def test_a_crafted_config_is_checked_when_loaded():
    layer = ki.layers.NeuralODE(ki.layers.ConcatDense(2))
    config = layer.get_config()
    config["rtol"] = float("nan")
    with pytest.raises(ValueError, match="rtol=nan"):
        ki.layers.NeuralODE.from_config(config)
    config = layer.get_config()
    config["gradient"] = {"module": "keras_implicit.ops.adjoint", "class_name": "Adjoint",
                          "config": {"atol": -1.0}, "registered_name": "keras_implicit>Adjoint"}
    with pytest.raises(ValueError, match="atol=-1.0"):
        ki.layers.NeuralODE.from_config(config)


@pytest.mark.parametrize("gradient", ["adjoint", "backprop", "checkpointed"])
def test_a_loss_on_what_a_failed_solve_did_not_reach_has_nan_gradients(gradient):
    """on_failure="ignore" and a solve out of steps: its unreached outputs are NaN, and so
    is the gradient of a loss on them for every strategy. Backprop and checkpointed gave
    0 there (an optimizer's silent zero step); a loss on a reached output keeps its
    exact gradient."""
    a = tf.Variable(0.7, dtype=tf.float64)
    y0 = tf.constant([1.3, -0.4], tf.float64)

    @tf.function
    def run(output):
        with tf.GradientTape() as tape:
            tape.watch(y0)
            result = ki.ops.odeint(lambda t, y: -a * y, y0, [0.0, 0.5, 1.0],
                                   gradient=gradient, on_failure="ignore", max_num_steps=3,
                                   rtol=1e-10, atol=1e-10, jit_dynamics=False)
            loss = tf.reduce_sum(result.states[output])
        return result.stats.status, loss, tape.gradient(loss, [y0, a])

    status, loss, grads = run(-1)
    assert int(status) == int(ki.ops.Status.MAX_STEPS_REACHED) and np.isnan(float(loss))
    assert all(np.all(np.isnan(g.numpy())) for g in grads), grads
    # The adjoint's backward solve started from the NaN state, so its gradients were NaN
    # here too: it now skips the unreached intervals that no loss depends on.
    _, _, (grad_y0, grad_a) = run(0)
    np.testing.assert_array_equal(grad_y0.numpy(), [1.0, 1.0])
    assert grad_a is None or float(grad_a) == 0.0

    @tf.function
    def blow_up(y0):  # y' = y², y(0) = 1: y = 1 / (1 - t) reaches 0.5, not 2
        with tf.GradientTape() as tape:
            tape.watch(y0)
            result = ki.ops.odeint(lambda t, y: y * y, y0, [0.0, 0.5, 2.0], gradient=gradient,
                                   on_failure="ignore", rtol=1e-10, atol=1e-10)
            loss = tf.reduce_sum(result.states[1])
        return result.stats.status, tape.gradient(loss, y0)

    status, grad = blow_up(tf.constant([1.0], tf.float64))
    assert int(status) != int(ki.ops.Status.SUCCESS)
    np.testing.assert_allclose(grad.numpy(), [4.0], rtol=1e-6)  # d y(0.5) / d y0


LONG_CONSTANT_SOLVES = '''
import numpy as np, tensorflow as tf, keras_implicit as ki
@tf.function
def solves():  # every input a constant of the graph: TensorFlow may constant-fold a call
    ode = ki.ops.odeint(lambda t, y: tf.stack([y[1], -y[0]]), tf.constant([1.0, 0.0], tf.float64),
                        [0.0, 100.0], rtol=1e-10, atol=1e-10)
    x = tf.constant([[1.0, 2.0]], tf.float64)
    deq = ki.ops.fixed_point(lambda z, x: 0.995 * z + 0.005 * x, x, tf.zeros_like(x),
                             solver="picard", tol=1e-9, max_iter=10000)
    return (ode.states[-1], ode.stats.accepted_steps, ode.stats.compiled, deq.z,
            deq.stats.forward_iterations, deq.stats.compiled)
y, steps, ode_path, z, iterations, deq_path = (v.numpy() for v in solves())
assert ode_path == deq_path == b"solve", (ode_path, deq_path)
assert steps > 2000 and iterations > 3000, (steps, iterations)
np.testing.assert_allclose(y, [np.cos(100.0), -np.sin(100.0)], atol=1e-7)
np.testing.assert_allclose(z, [[1.0, 2.0]], rtol=1e-6)
print("ok")
'''


def test_long_compiled_solves_of_constants_run():
    """A solve compiled whole whose inputs are all graph constants was constant-folded by
    TensorFlow's function runtime, which ran its loop recursively: past about 1,400 steps
    (ODE) or iterations (DEQ) the process died of a stack overflow (a segmentation
    fault). In a subprocess, so that the old failure fails this test, not the run."""
    result = subprocess.run([sys.executable, "-c", LONG_CONSTANT_SOLVES], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (
        result.returncode, result.stderr[-2000:])


def second_derivative(solve, a):
    """d²/da² of ``solve(a)`` by nested tapes, traced."""
    @tf.function
    def run():
        with tf.GradientTape() as outer:
            outer.watch(a)
            with tf.GradientTape() as inner:
                inner.watch(a)
                value = tf.reduce_sum(solve(a))
            first = inner.gradient(value, a)
        return outer.gradient(first, a)
    return run().numpy()


def test_second_derivatives_are_right_or_refused():
    """Nested tapes through the implicit gradient gave a wrong second derivative silently
    (-1.92 where finite differences give -3.07), and through a compiled adjoint an
    UnimplementedError about TensorLists. Both now name what to use instead."""
    x = tf.constant([0.3], tf.float64)

    def fixed_point(gradient):
        return lambda x: ki.ops.fixed_point(lambda z, x: tf.tanh(0.5 * z + x), x,
                                            tf.zeros_like(x), tol=1e-13, max_iter=200,
                                            gradient=gradient).z

    # z = tanh(z/2 + x): dz/dx = s / (1 - s/2) with s = 1 - z², by implicit differentiation.
    def first(x):
        z = fixed_point("unrolled")(tf.constant([x], tf.float64)).numpy()[0]
        s = 1.0 - z * z
        return s / (1.0 - 0.5 * s)

    exact = (first(0.3 + 1e-5) - first(0.3 - 1e-5)) / 2e-5
    np.testing.assert_allclose(second_derivative(fixed_point("unrolled"), x), [exact],
                               rtol=1e-6)
    with pytest.raises(Exception, match="second derivatives through a fixed point"):
        second_derivative(fixed_point("implicit"), x)

    a = tf.constant(0.5, tf.float64)  # y' = a y, y(1) = e^a: d²y(1)/da² = e^a

    def ode(jit):
        return lambda a: ki.ops.odeint(lambda t, y, a: a * y, tf.ones([1], tf.float64),
                                       [0.0, 1.0], params=a, rtol=1e-10, atol=1e-10,
                                       jit_dynamics=jit).states[-1]

    np.testing.assert_allclose(second_derivative(ode(False), a), np.exp(0.5), rtol=1e-8)
    with pytest.raises(Exception, match="second derivatives through the adjoint"):
        second_derivative(ode("auto"), a)


def test_an_integer_variable_read_by_the_dynamics_gets_no_gradient():
    """TensorFlow hands a custom gradient every trainable variable read, an int64 counter
    too: the adjoint, BDF and the implicit gradient failed on its dtype."""
    calls = tf.Variable(0, dtype=tf.int64)
    w = tf.Variable(0.5, dtype=tf.float64)
    x = tf.constant([[1.0]], tf.float64)

    def counted(fn):
        def counting(*args):
            calls.assign_add(1)
            return fn(*args)
        return counting

    solves = {
        "implicit": lambda f: ki.ops.fixed_point(f(lambda z, x: w * tf.tanh(z) + x), x,
                                                 tf.zeros_like(x), tol=1e-12).z,
        "adjoint": lambda f: ki.ops.odeint(f(lambda t, y: -w * y), x, [0.0, 1.0],
                                           rtol=1e-10, atol=1e-10).states[-1],
        "bdf": lambda f: ki.ops.odeint(f(lambda t, y: -w * y), x, [0.0, 1.0], solver="bdf",
                                       rtol=1e-10, atol=1e-10).states[-1],
    }
    for name, solve in solves.items():
        grads = []
        for wrap in (counted, lambda fn: fn):
            @tf.function
            def step():
                with tf.GradientTape() as tape:
                    loss = tf.reduce_sum(solve(wrap))
                return tape.gradient(loss, w)
            grads.append(step().numpy())
        np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12, err_msg=name)
    assert calls.numpy() > 0


def test_a_watched_tensor_the_map_closes_over_is_named_not_dropped_silently():
    """The adjoint and the implicit gradient differentiate their inputs and the variables
    read: a closure over `2 * W` gave W no gradient (None) without a word. They now warn;
    backprop and unrolled differentiate it, and unwatched closures stay silent."""
    W = tf.Variable(0.3 * np.eye(3))
    x = tf.ones((2, 3), tf.float64)
    solves = {
        "implicit": lambda Ws: ki.ops.fixed_point(lambda z, x: tf.tanh(z @ Ws + x), x,
                                                  tf.zeros_like(x), tol=1e-10).z,
        "unrolled": lambda Ws: ki.ops.fixed_point(lambda z, x: tf.tanh(z @ Ws + x), x,
                                                  tf.zeros_like(x), tol=1e-10,
                                                  gradient="unrolled").z,
        "adjoint": lambda Ws: ki.ops.odeint(lambda t, y: -(y @ Ws), x, [0.0, 1.0]).states,
        "backprop": lambda Ws: ki.ops.odeint(lambda t, y: -(y @ Ws), x, [0.0, 1.0],
                                             gradient="backprop").states,
    }
    for name, solve in solves.items():
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(solve(2.0 * W))
            return tape.gradient(loss, W)

        with warnings.catch_warnings(record=True) as log:
            warnings.simplefilter("always")
            grad = step()
            tf.function(lambda: solve(2.0 * W))()  # no tape: nothing to drop
        dropped = [w for w in log if "tensors computed outside it" in str(w.message)]
        if name in ("implicit", "adjoint"):
            assert grad is None and len(dropped) == 1, (name, grad, log)
            assert dropped[0].filename == __file__
        else:
            assert grad is not None and not dropped, (name, log)
