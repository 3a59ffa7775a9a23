"""Butcher tableaux are validated against the Runge–Kutta order conditions."""

import pytest

import keras_implicit as ki
from keras_implicit.solvers import runge_kutta


@pytest.mark.parametrize("tableau,order", [
    (runge_kutta.EULER, 1), (runge_kutta.MIDPOINT, 2), (runge_kutta.RK4, 4),
    (runge_kutta.BOGACKI_SHAMPINE, 3), (runge_kutta.DORMAND_PRINCE, 5),
])
def test_shipped_tableaux_have_exactly_their_order(tableau, order):
    a = tableau._square_a()
    # Checked up to order 5: each method meets its order and (below 5) not one more.
    assert runge_kutta.satisfied_order(a, tableau.b, tableau.c, max_order=5) == order


def test_embedded_and_dense_output_orders():
    dp = runge_kutta.DORMAND_PRINCE
    a = dp._square_a()
    assert runge_kutta.satisfied_order(a, dp.b_error, dp.c) == 4
    assert runge_kutta.satisfied_order(a, dp.b_mid, dp.c, theta=0.5) == 4
    assert dp.fsal and runge_kutta.BOGACKI_SHAMPINE.fsal and not runge_kutta.RK4.fsal


def test_a_wrong_coefficient_is_caught():
    with pytest.raises(ValueError, match="claims order 4 but satisfies the order conditions "
                                         "only up to order"):
        runge_kutta.ButcherTableau("bad_rk4", c=[0, 0.5, 0.5, 1],
                                   a=[[], [0.5], [0, 0.5], [0, 0, 1]],
                                   b=[1 / 6, 1 / 3, 1 / 3, 1 / 5], order=4)


def test_row_sums_must_match_c():
    with pytest.raises(ValueError, match=r"c\[1\] must equal the sum of a\[1\]"):
        runge_kutta.ButcherTableau("bad", c=[0, 0.5], a=[[], [0.4]], b=[0, 1], order=2)


def test_a_must_be_strictly_lower_triangular():
    with pytest.raises(ValueError, match="strictly lower triangular"):
        runge_kutta.ButcherTableau("bad", c=[0, 0.5], a=[[0.0], [0.5]], b=[0, 1], order=2)


def test_registry_round_trip_and_custom_tableau_solver():
    with pytest.warns(DeprecationWarning, match="IController"):
        solver = ki.solvers.get({"name": "dopri5", "safety": 0.8})  # a 0.1.0 config
    assert solver.default_controller().safety == 0.8
    with pytest.warns(DeprecationWarning):
        restored = ki.serialization.deserialize(ki.serialization.serialize(solver), "ode_solver")
    assert restored.get_config() == solver.get_config()
    heun = runge_kutta.ButcherTableau("heun", c=[0, 1], a=[[], [1]], b=[0.5, 0.5], order=2)
    fixed = ki.solvers.FixedGridRungeKutta(heun)
    assert ki.solvers.get(fixed) is fixed


def test_adaptive_solver_refuses_tableau_without_error_estimate():
    with pytest.raises(ValueError, match="embedded error estimate"):
        ki.solvers.AdaptiveRungeKutta(runge_kutta.RK4)


@pytest.mark.parametrize("times,dense,midpoint", [
    ([0.0, 1.0], False, False), ([0.0, 0.5, 1.0], False, True), ([0.0, 1.0], True, True)])
def test_the_midpoint_is_computed_only_where_a_step_may_be_interpolated(times, dense, midpoint):
    """A solve to its end time alone lands its last step on it and never interpolates:
    dopri5's midpoint (a state-sized combination per step) is skipped there."""
    import numpy as np
    import tensorflow as tf

    from keras_implicit.solvers import SolverOptions

    solver = ki.solvers.get("dopri5")
    times = tf.constant(times, tf.float64)
    y0 = [tf.constant([1.0, 2.0], tf.float64)]
    loop = solver.make_loop(lambda t, y: [-v for v in y], times, SolverOptions.make(),
                            dense=dense)
    h = tf.constant(0.1, tf.float64)
    y_new, _, y_mid, _ = loop.attempt(times[0], h, h, y0, [-y0[0]], None)
    assert (y_mid is not None) == midpoint
    assert loop.interpolates == midpoint  # else the one output is written after the loop
    if midpoint:  # the quartic's midpoint of y' = -y: y0 exp(-h / 2) to the method's order
        np.testing.assert_allclose(y_mid[0], y0[0] * np.exp(-0.05), rtol=1e-6)
    result = solver.integrate(lambda t, y: [-v for v in y], y0, times, SolverOptions.make(
        rtol=1e-10, atol=1e-10))
    np.testing.assert_allclose(result.states[0], y0[0] * np.exp(-times[:, None]), rtol=1e-8)
    # A solve that stops early returns NaN where it did not reach, written after the loop too.
    failed = solver.integrate(lambda t, y: [-v for v in y], y0, times, SolverOptions.make(
        rtol=1e-10, atol=1e-10, max_num_steps=3))
    assert int(failed.stats.status) == ki.ops.Status.MAX_STEPS_REACHED
    np.testing.assert_array_equal(failed.states[0][0], y0[0])
    assert np.all(np.isnan(failed.states[0][-1]))


def test_combine_is_the_weighted_sum_for_tensor_and_python_step_sizes():
    import numpy as np
    import tensorflow as tf

    from keras_implicit.solvers import state as state_ops

    y = [tf.constant([1.0, -2.0], tf.float64)]
    ks = [[tf.constant([3.0, 5.0], tf.float64)], [tf.constant([-7.0, 11.0], tf.float64)]]
    expected = np.array([1.0, -2.0]) + 0.5 * (0.25 * np.array([3.0, 5.0])
                                              - 3.0 * np.array([-7.0, 11.0]))
    for dt in (0.5, tf.constant(0.5, tf.float64)):
        np.testing.assert_allclose(state_ops.combine(y, dt, [0.25, -3.0], ks)[0], expected,
                                   rtol=1e-15)
        np.testing.assert_allclose(state_ops.combine(None, dt, [0.25, -3.0], ks)[0],
                                   expected - np.array([1.0, -2.0]), rtol=1e-15)
        assert state_ops.combine(y, dt, [0.0, 0.0], ks)[0] is y[0]
        np.testing.assert_array_equal(state_ops.combine(None, dt, [0.0, 0.0], ks)[0], [0, 0])
    # A float16 state keeps its dtype; the weight dt * c is formed in the step's dtype.
    half = state_ops.combine([tf.constant([1.0], tf.float16)], tf.constant(1e-3),
                             [1.0 / 3.0], [[tf.constant([3.0], tf.float16)]])[0]
    assert half.dtype == tf.float16
    np.testing.assert_allclose(float(half[0]), 1.001, rtol=1e-3)


def test_combine_forms_each_weight_once_for_all_state_tensors():
    import numpy as np
    import tensorflow as tf

    from keras_implicit.solvers import state as state_ops

    # Three state tensors (as the adjoint's), one of another dtype, and two equal
    # coefficients: the values are each tensor's weighted sum in its own dtype.
    y = [tf.constant([1.0, 2.0], tf.float64), tf.constant([[3.0]], tf.float64),
         tf.constant([-1.0], tf.float32)]
    ks = [[tf.constant([0.5, 0.25], tf.float64), tf.constant([[2.0]], tf.float64),
           tf.constant([4.0], tf.float32)]] * 3
    coefficients = [0.1, 0.1, -2.0]
    dt = tf.constant(0.3, tf.float64)
    out = state_ops.combine(y, dt, coefficients, ks)
    for y_j, k_j, o in zip(y, ks[0], out):
        assert o.dtype == y_j.dtype
        np.testing.assert_allclose(o, y_j.numpy() + 0.3 * (0.1 + 0.1 - 2.0) * k_j.numpy(),
                                   rtol=1e-6 if o.dtype == tf.float32 else 1e-15)

    graph = tf.function(lambda dt: state_ops.combine(y[:2], dt, coefficients,
                                                     [k[:2] for k in ks])
                        ).get_concrete_function(tf.TensorSpec([], tf.float64)).graph
    # Two distinct weights (0.1 and -2.0), then one multiply per term and tensor.
    muls = [op for op in graph.get_operations() if op.type == "Mul"]
    assert len(muls) == 2 + 3 * 2
