"""Bad input to odeint: clear errors naming the argument and the value; nothing hangs."""

import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki

Y0 = tf.constant([1.0, 2.0], tf.float64)


def decay(t, y):
    return -y


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"solver": "rk45"}, ValueError, r"Valid names: \['bdf', 'bosh3', 'dopri5'.*solver='rk45'"),
        ({"solver": {"name": "dopri5", "safety": 2.0}}, ValueError, "safety=2.0"),
        ({"solver": {"name": "rk4", "bogus": 1}, "num_steps": 2}, ValueError, "bogus"),
        ({"solver": 3}, TypeError, "solver=3"),
        ({"rtol": 0.0}, ValueError, "rtol=0.0"),
        ({"atol": -1e-3}, ValueError, "atol=-0.001"),
        ({"solver": "rk4"}, ValueError, "num_steps=None"),
        ({"solver": "euler", "num_steps": 0}, ValueError, "num_steps=0"),
        ({"solver": "euler", "num_steps": 2.5}, ValueError, "num_steps=2.5"),
        ({"gradient": "reverse"}, ValueError,
         r"Valid names: \['adjoint', 'backprop', 'checkpointed'\].*'reverse'"),
        ({"gradient": "backprop", "solver": "bdf"}, ValueError, "gradient='backprop'"),
        ({"max_num_steps": 0}, ValueError, "max_num_steps=0"),
        ({"first_step": 0.0}, ValueError, "first_step=0.0"),
        ({"first_step": -0.1}, ValueError, "first_step=-0.1"),
        ({"first_step": float("nan")}, ValueError, "first_step=nan"),
        ({"first_step": "0.1"}, TypeError, "first_step='0.1'"),
        # Ignored, silently, by a fixed grid:
        ({"first_step": 0.3, "solver": "rk4", "num_steps": 4}, ValueError,
         "`first_step` works with the adaptive solvers.*Received: first_step=0.3, "
         "solver='rk4'"),
        ({"event_fn": lambda t, y: None}, ValueError,  # was TensorFlow's conversion error
         r"`event_fn` must return one floating value per sample, shape \(batch,\). "
         "Received: None"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ki.ops.odeint(decay, Y0, [0.0, 1.0], **kwargs)


@pytest.mark.parametrize(
    "times,match",
    [
        ([0.0, 0.0], r"t0 == t1.*times=\[0.0, 0.0\]"),
        ([0.0, 2.0, 1.0], r"strictly increasing or strictly decreasing.*times=\[0.0, 2.0, 1.0\]"),
        ([0.0], r"at least two entries.*times=\[0.0\]"),
        ([[0.0, 1.0]], r"1-D"),
    ],
)
def test_bad_times(times, match):
    with pytest.raises(ValueError, match=match):
        ki.ops.odeint(decay, Y0, times)


def test_a_subnormal_gap_between_times_is_refused_not_a_nan_gradient():
    # 5.9e-39 is subnormal in float32: TensorFlow flushes it to 0, and the adjoint of the
    # zero-length interval was NaN (found by the long property-test run).
    times = np.array([0.0, 5.877e-39, 0.5], np.float32)
    with pytest.raises(ValueError, match=r"strictly ordered.*float32.*5.87"):
        ki.ops.odeint(lambda t, y: -y, tf.constant([1.0]), times)
    with pytest.raises(ValueError, match=r"strictly ordered.*float32"):
        ki.ops.odeint(lambda t, y: -y, tf.constant([1.0]), tf.constant(times))


def test_unsorted_times_in_a_graph_fail_at_run_time():
    solve = tf.function(lambda times: ki.ops.odeint(decay, Y0, times).states,
                        input_signature=[tf.TensorSpec([None], tf.float64)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="strictly increasing"):
        solve(tf.constant([0.0, 2.0, 1.0], tf.float64))


def test_integer_state_is_refused():
    with pytest.raises(TypeError, match="dtype=int32"):
        ki.ops.odeint(decay, tf.constant([1, 2]), [0.0, 1.0])


def test_mixed_dtype_state_is_refused():
    with pytest.raises(TypeError, match="one dtype"):
        ki.ops.odeint(decay, (Y0, tf.constant([1.0], tf.float32)), [0.0, 1.0])


def test_dynamics_with_wrong_shape():
    with pytest.raises(ValueError, match=r"shape \(3,\) for a state of shape \(2,\)"):
        ki.ops.odeint(lambda t, y: tf.concat([y, y[:1]], 0), Y0, [0.0, 1.0])


def test_dynamics_with_wrong_dtype():
    with pytest.raises(TypeError, match="dtype float32 for a state of dtype float64"):
        ki.ops.odeint(lambda t, y: tf.cast(y, tf.float32), Y0, [0.0, 1.0])


def test_dynamics_returning_none_names_fn():
    with pytest.raises(ValueError, match=r"`fn` must return d\(state\)/dt.*Received: None"):
        ki.ops.odeint(lambda t, y: None, Y0, [0.0, 1.0])
    with pytest.raises(ValueError, match=r"`fn` must return.*Received: \[None\]"):
        ki.ops.odeint(lambda t, y: [None], [Y0], [0.0, 1.0])


def test_scalar_tensors_with_a_value_are_taken_as_numbers():
    # rtol/atol as eager tensors or 0-d arrays, as torchdiffeq and TFP take them: the solve
    # of the Python floats they hold (a float32 tolerance is its float32 rounding).
    expected = ki.ops.odeint(decay, Y0, [0.0, 1.0], rtol=1e-6, atol=1e-8).states
    for rtol, atol in ((tf.constant(1e-6, tf.float64), np.array(1e-8)),
                       (np.float32(1e-6), tf.constant(1e-8, tf.float64))):
        states = ki.ops.odeint(decay, Y0, [0.0, 1.0], rtol=rtol, atol=atol).states
        np.testing.assert_allclose(states, expected, rtol=1e-6)
    np.testing.assert_allclose(ki.ops.odeint(decay, Y0, [0.0, 1.0], rtol=1e-6, atol=1e-8,
                                             max_num_steps=tf.constant(100)).states, expected)
    euler = ki.ops.odeint(decay, Y0, [0.0, 1.0], solver="euler", num_steps=tf.constant(4))
    np.testing.assert_allclose(euler.states[-1], Y0.numpy() * 0.75 ** 4, rtol=1e-12)


@pytest.mark.parametrize("name,value", [
    ("rtol", tf.Variable(1e-3)),  # its value read now would not follow later assignments
    ("rtol", tf.constant([1e-3, 1e-4])),
    ("atol", tf.constant(True)),
    ("num_steps", tf.constant(4.0)),
])
def test_tensors_that_are_not_numbers_now_are_refused_with_what_is_taken(name, value):
    kwargs = {name: value, **({"solver": "euler"} if name == "num_steps" else {})}
    with pytest.raises(TypeError, match=rf"`{name}` must be .*scalar tensor whose value is "
                                        rf"known now.*Received: {name}=<tf\."):
        ki.ops.odeint(decay, Y0, [0.0, 1.0], **kwargs)


def test_a_tolerance_traced_in_a_tf_function_is_refused_naming_it():
    @tf.function
    def solve(rtol):
        return ki.ops.odeint(decay, Y0, [0.0, 1.0], rtol=rtol).states

    with pytest.raises(TypeError, match=r"`rtol` must be .*tf.function being traced"):
        solve(tf.constant(1e-3))


def test_dynamics_with_wrong_structure():
    with pytest.raises(ValueError, match="structure of the state"):
        ki.ops.odeint(lambda t, y: (y, y), Y0, [0.0, 1.0])
    # The message printed a single-tensor state's structure as "."
    with pytest.raises(ValueError, match=r"Received: \['tensor'\] for a state that is a "
                                         r"single tensor"):
        ki.ops.odeint(lambda t, y: [-y], Y0, [0.0, 1.0])


def test_times_tensors_with_fewer_than_two_entries_are_refused():
    """A static list was refused; a tensor of one entry returned the initial state, and
    one of none failed in a strided slice."""
    fixed_length = tf.function(lambda times: ki.ops.odeint(lambda t, y: -y, Y0, times).states)
    for times in (tf.constant([0.0]), tf.zeros([0])):
        with pytest.raises(ValueError, match="`times` must be 1-D with at least two entries"):
            fixed_length(times)
    any_length = tf.function(lambda times: ki.ops.odeint(lambda t, y: -y, Y0, times).states,
                             input_signature=[tf.TensorSpec([None], tf.float32)])
    for times in (tf.constant([0.0]), tf.zeros([0])):
        with pytest.raises(tf.errors.InvalidArgumentError, match="at least two entries"):
            any_length(times)
    assert any_length(tf.constant([0.0, 1.0])).shape[0] == 2


def test_exceeding_max_num_steps_stops_with_a_clear_error():
    with pytest.raises(tf.errors.InvalidArgumentError, match="status 1 .*max_num_steps"):
        ki.ops.odeint(lambda t, y: -50.0 * (y - tf.cos(t)), Y0, [0.0, 10.0], rtol=1e-9,
                      atol=1e-9, max_num_steps=20)


NAN_AT_START = [("dopri5", {}), ("rk4", {"num_steps": 4}), ("tfp_dopri5", {})]


@pytest.mark.parametrize("solver,kwargs", NAN_AT_START)
def test_nan_dynamics_at_t0_fail_fast_even_with_a_gradient(solver, kwargs):
    """TFP's own adjoint loops forever here; ours raises in the forward solve."""
    w = tf.Variable(1.0, dtype=tf.float64)

    @tf.function
    def run():
        with tf.GradientTape() as tape:
            states = ki.ops.odeint(lambda t, y: w * y * np.nan, Y0, [0.0, 1.0], solver=solver,
                                   **kwargs).states
            loss = tf.reduce_sum(states[-1])
        return tape.gradient(loss, w)

    with pytest.raises(tf.errors.InvalidArgumentError, match="failed with status"):
        run()


def test_nan_appearing_mid_solve_stops_with_non_finite_status():
    def fn(t, y):
        return tf.where(t > 0.5, tf.constant(np.nan, tf.float64), tf.ones_like(y))

    with pytest.raises(tf.errors.InvalidArgumentError, match="status 2 at time 0.5.*NaN or Inf"):
        ki.ops.odeint(fn, Y0, [0.0, 1.0])


def test_finite_time_blow_up_ends_with_an_error():
    """dy/dt = y^2 from y(0) = 1 blows up at t = 1; solving to t = 2 must stop."""
    with pytest.raises(tf.errors.InvalidArgumentError, match="failed with status"):
        tf.function(lambda: ki.ops.odeint(lambda t, y: y * y, tf.constant([1.0], tf.float64),
                                          [0.0, 2.0]).states)()


def test_failure_is_a_status_under_xla():
    """XLA compiles no assertions: the status and NaN outputs report the failure."""

    @tf.function(jit_compile=True)
    def run():
        result = ki.ops.odeint(lambda t, y: y * np.nan, Y0, [0.0, 1.0])
        return result.states, result.stats.status

    states, status = run()
    assert int(status) == 2
    assert np.all(np.isnan(states[-1]))


def test_the_failure_check_in_a_graph_is_one_assert_with_the_time_in_its_message():
    """The check is one Assert op, not guarded by an If (a branch per solve cost about 5%
    of a small solve run in a loop) and with no op formatting its numbers."""
    def fn(t, y):
        return tf.where(t > 0.5, tf.constant(np.nan, tf.float64), tf.ones_like(y))

    run = tf.function(lambda y0: ki.ops.odeint(fn, y0, [0.0, 1.0], jit_dynamics=False).states)
    graph = run.get_concrete_function(Y0).graph
    types = [op.type for op in graph.get_operations()]
    assert "Assert" in types and not {"If", "StatelessIf", "AsString"} & set(types)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"status\] \[2\] \[at time\] \[0\.(5|49999)"):
        run(Y0)


def test_the_graph_failure_message_shows_numbers_of_every_dtype():
    """Every detail dtype reaches the message (formatting them as strings in the graph
    had failed for int64 and bool)."""
    from keras_implicit.ops import failure

    details = ["at", tf.constant(0.25, tf.float64), tf.constant(1.5, tf.float16),
               tf.constant(7, tf.int64), tf.constant(True), tf.constant(3)]
    run = tf.function(lambda status: failure.report(status, "raise", "ode", "test", details,
                                                    [tf.constant(1.0)]))
    assert run(tf.constant(0))[0].numpy() == 1.0
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"\[at\] \[0.25\] \[1.5\] \[7\] \[1\] \[3\]"):
        run(tf.constant(2))
