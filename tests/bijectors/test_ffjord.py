"""FFJORD: exact log-determinants of linear flows, Hutchinson in expectation, inversion,
TFP integration, gradients against finite differences, regularisers, bad input (float64)."""

import keras
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf
import tensorflow_probability as tfp

import keras_implicit as ki
from keras_implicit.bijectors import ffjord as ffjord_module
from keras_implicit.layers import ConcatMLP

tfd, tfb = tfp.distributions, tfp.bijectors
RNG = np.random.default_rng(3)
A = np.array([[0.3, 0.8, -0.2], [-0.5, -0.1, 0.4], [0.2, -0.3, 0.25]])
TOL = {"rtol": 1e-8, "atol": 1e-8}


@keras.saving.register_keras_serializable(package="keras_implicit_tests")
class Linear(keras.layers.Layer):
    """dz/dt = M z on the flattened event (any rank): log-det of the flow = t tr(M)."""

    def __init__(self, matrix, **kwargs):
        super().__init__(**kwargs)
        self.matrix = np.asarray(matrix, dtype=np.float64)

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=self.matrix.shape, initializer=keras.initializers.Constant(self.matrix),
            name="kernel")

    def call(self, z, t=None):
        flat = tf.reshape(z, (-1, self.matrix.shape[0]))
        return tf.reshape(tf.linalg.matvec(self.kernel, flat), tf.shape(z))

    def get_config(self):
        return {**super().get_config(), "matrix": self.matrix.tolist()}


def linear_flow(matrix=A, **kwargs):
    return ki.bijectors.FFJORD(Linear(matrix, dtype="float64"), **{**TOL, **kwargs})


def rademacher_variance(matrix):
    s = 0.5 * (matrix + matrix.T)
    return 2.0 * (np.sum(s**2) - np.sum(np.diag(s) ** 2))


@pytest.mark.parametrize("t0,t1", [(0.0, 1.5), (1.0, -0.5)])
def test_linear_flow_exact_trace_gives_t_times_trace(t0, t1):
    flow = linear_flow(t0=t0, t1=t1, trace="exact")
    x = tf.constant(RNG.normal(size=(4, 3)))
    span = t1 - t0
    y = flow.forward(x)
    np.testing.assert_allclose(y.numpy(), x.numpy() @ scipy.linalg.expm(span * A).T, atol=1e-7)
    np.testing.assert_allclose(flow.forward_log_det_jacobian(x).numpy(), span * np.trace(A),
                               rtol=1e-7)
    y_fresh = tf.constant(y.numpy())  # not in the bijector cache: a real inverse solve
    np.testing.assert_allclose(flow.inverse_log_det_jacobian(y_fresh).numpy(),
                               -span * np.trace(A), rtol=1e-7)
    np.testing.assert_allclose(flow.inverse(y_fresh).numpy(), x.numpy(), atol=1e-7)


@pytest.mark.parametrize("noise,num_probes", [("rademacher", 1), ("gaussian", 1),
                                              ("rademacher", 4)])
def test_linear_flow_hutchinson_matches_in_expectation(noise, num_probes):
    n, span = 4000, 1.5
    flow = linear_flow(t1=span, trace="hutchinson", noise=noise, num_probes=num_probes)
    estimates = flow.forward_log_det_jacobian(tf.zeros((n, 3), tf.float64) + 0.1, seed=9).numpy()
    s = 0.5 * (A + A.T)
    per_probe = rademacher_variance(A) if noise == "rademacher" else 2.0 * np.sum(s**2)
    sigma = span * np.sqrt(per_probe / num_probes)
    # The probe is fixed along the trajectory: each estimate is span * mean_k e_k^T A e_k,
    # unbiased for span * tr(A) with standard deviation sigma.
    assert abs(estimates.mean() - span * np.trace(A)) < 4.0 * sigma / np.sqrt(n)
    assert estimates.std() == pytest.approx(sigma, rel=0.1)


def test_any_event_rank_is_flattened_for_the_trace():
    matrix = RNG.normal(size=(12, 12)) * 0.2
    flow = linear_flow(matrix, trace="exact", event_shape=(2, 3, 2))
    x = tf.constant(RNG.normal(size=(5, 2, 3, 2)))
    assert flow.forward_min_event_ndims == 3
    np.testing.assert_allclose(flow.forward_log_det_jacobian(x).numpy(), [np.trace(matrix)] * 5,
                               rtol=1e-7)
    y = flow.forward(x)
    assert y.shape == x.shape
    expected = x.numpy().reshape(5, 12) @ scipy.linalg.expm(matrix).T
    np.testing.assert_allclose(y.numpy().reshape(5, 12), expected, atol=1e-7)
    # Extra batch dimensions are kept.
    assert flow.forward_log_det_jacobian(tf.reshape(x[:4], (2, 2, 2, 3, 2))).shape == (2, 2)


def test_inverse_of_forward_recovers_the_input_to_solver_tolerance():
    dynamics = ConcatMLP((16,), activation="tanh", dtype="float64")
    flow = ki.bijectors.FFJORD(dynamics, trace="exact", rtol=1e-9, atol=1e-9)
    x = tf.constant(RNG.normal(size=(8, 2)))
    forward = flow.solve(x, "forward")
    backward = flow.solve(forward.output, "inverse")
    np.testing.assert_allclose(backward.output.numpy(), x.numpy(), atol=1e-6)
    np.testing.assert_allclose(backward.log_det_jacobian.numpy(),
                               -forward.log_det_jacobian.numpy(), atol=1e-6)
    assert forward.stats.forward_nfe.numpy() > 0


def test_transformed_distribution_and_chain_solve_once_per_block(monkeypatch):
    solves = []
    original = ffjord_module.FFJORD.solve

    def counting(self, *args, **kwargs):
        solves.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ffjord_module.FFJORD, "solve", counting)
    first = linear_flow(trace="exact", name="first")
    second = linear_flow(A.T * 0.5, trace="exact", name="second")
    dist = ki.bijectors.flow_distribution([first, second], (3,), tf.float64)
    y = tf.constant(RNG.normal(size=(6, 3)))
    log_prob = dist.log_prob(y).numpy()
    assert sorted(solves) == ["first", "second"]
    # Density of the linear map y = expm(0.5 A^T) expm(A) z, z standard normal.
    m = scipy.linalg.expm(0.5 * A.T) @ scipy.linalg.expm(A)
    z = np.linalg.solve(m, y.numpy().T).T
    expected = (-0.5 * np.sum(z**2, -1) - 1.5 * np.log(2 * np.pi)
                - np.log(abs(np.linalg.det(m))))
    np.testing.assert_allclose(log_prob, expected, rtol=1e-6)
    assert len(dist.trainable_variables) == 2
    assert dist.sample(7, seed=1).shape == (7, 3)


def test_hutchinson_seed_makes_the_estimate_reproducible():
    flow = ki.bijectors.FFJORD(ConcatMLP((8,), dtype="float64"), rtol=1e-6, atol=1e-6)
    x = tf.constant(RNG.normal(size=(5, 2)))
    a = flow.solve(x, seed=1).log_det_jacobian.numpy()
    b = flow.solve(x, seed=1).log_det_jacobian.numpy()
    c = flow.solve(x, seed=2).log_det_jacobian.numpy()
    np.testing.assert_array_equal(a, b)
    assert np.any(a != c)


@pytest.mark.parametrize("trace", ["hutchinson", "exact"])
def test_gradients_adjoint_backprop_and_finite_differences_agree(trace):
    keras.utils.set_random_seed(1)
    dynamics = ConcatMLP((6,), activation="tanh", dtype="float64")
    options = {"trace": trace, "rtol": 1e-9, "atol": 1e-9, "event_shape": (2,)}
    adjoint = ki.bijectors.FFJORD(dynamics, gradient="adjoint", **options)
    backprop = ki.bijectors.FFJORD(dynamics, gradient="backprop", **options)
    y = tf.constant(RNG.normal(size=(4, 2)))
    variables = dynamics.trainable_variables

    def loss(flow):
        solution = flow.solve(y, "inverse", seed=5)  # a fixed probe: a smooth function
        return tf.reduce_sum(-0.5 * tf.reduce_sum(solution.output**2, -1)
                             + solution.log_det_jacobian)

    def gradient(flow):  # eager: cheaper than compiling for one call
        with tf.GradientTape() as tape:
            value = loss(flow)
        return tape.gradient(value, variables)

    g_adjoint = gradient(adjoint)
    g_backprop = gradient(backprop)
    for a, b in zip(g_adjoint, g_backprop):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-8)
    # Central differences along a random direction of all the weights.
    directions = [RNG.normal(size=v.shape) for v in variables]
    start = [v.numpy() for v in variables]
    h, values = 1e-4, []
    for sign in (1.0, -1.0):
        for v, s, d in zip(variables, start, directions):
            v.assign(s + sign * h * d)
        values.append(loss(adjoint).numpy())
    for v, s in zip(variables, start):
        v.assign(s)
    finite_difference = (values[0] - values[1]) / (2 * h)
    directional = sum(np.sum(g.numpy() * d) for g, d in zip(g_adjoint, directions))
    assert directional == pytest.approx(finite_difference, rel=1e-5)


def test_rnode_regularisers_are_integrated_along_the_trajectory():
    span = 1.5
    flow = linear_flow(t1=span, trace="exact",
                       regularizers=("kinetic_energy", "jacobian_frobenius"))
    x = tf.constant(RNG.normal(size=(3, 3)))
    regs = flow.forward_regularization(x)
    # Kinetic energy: the integral of ||A z(t)||^2, z(t) = expm(tA) x, by Simpson's rule.
    times, states = np.linspace(0.0, span, 1001), [x.numpy()]
    step = scipy.linalg.expm((times[1] - times[0]) * A)
    for _ in times[1:]:
        states.append(states[-1] @ step.T)
    speeds = np.sum((np.stack(states) @ A.T) ** 2, axis=-1)
    kinetic = scipy.integrate.simpson(speeds, x=times, axis=0)
    np.testing.assert_allclose(regs["kinetic_energy"].numpy(), kinetic, rtol=1e-7)
    np.testing.assert_allclose(regs["jacobian_frobenius"].numpy(), span * np.sum(A**2), rtol=1e-7)
    # The same integrals along the inverse solve, still positive.
    y = tf.constant(flow.forward(x).numpy())
    backward = flow.inverse_regularization(y)
    np.testing.assert_allclose(backward["kinetic_energy"].numpy(), kinetic, rtol=1e-6)


def test_variables_are_tracked_and_the_estimator_is_switchable():
    flow = linear_flow(trace="hutchinson", event_shape=(3,))
    assert [v.name for v in flow.trainable_variables] == ["linear/kernel:0"]
    assert tf.Module.trainable_variables.fget(flow)  # found by a tf.Module walk as well
    x = tf.constant(RNG.normal(size=(2, 3)))
    flow.trace = "exact"
    np.testing.assert_allclose(flow.forward_log_det_jacobian(x).numpy(), np.trace(A), rtol=1e-7)
    with pytest.raises(ValueError, match="trace='trapezoid'"):
        flow.trace = "trapezoid"
    clone = ki.bijectors.FFJORD.from_config(flow.get_config())
    assert clone.trace == "exact" and clone.event_shape == (3,)


def test_bad_inputs_name_the_argument_and_value():
    dynamics = Linear(A, dtype="float64")
    with pytest.raises(ValueError, match=r"Unknown trace estimator\. Valid names: \[.*'exact'.*"
                                         r"Received: trace='stochastic'"):
        ki.bijectors.FFJORD(dynamics, trace="stochastic")
    with pytest.raises(ValueError, match=r"Valid names: \['rademacher', 'gaussian'\]\. "
                                         r"Received: noise='uniform'"):
        ki.bijectors.FFJORD(dynamics, noise="uniform")
    with pytest.raises(ValueError, match="num_probes=0"):
        ki.bijectors.FFJORD(dynamics, num_probes=0)
    with pytest.raises(ValueError, match="t0=1.0, t1=1.0"):
        ki.bijectors.FFJORD(dynamics, t0=1.0, t1=1.0)
    with pytest.raises(ValueError, match="regularizers="):
        ki.bijectors.FFJORD(dynamics, regularizers=("kinetic",))
    with pytest.raises(TypeError, match="dynamics="):
        ki.bijectors.FFJORD(lambda t, z: z)
    flow = ki.bijectors.FFJORD(dynamics, event_shape=(3,))
    with pytest.raises(ValueError, match=r"event shape \(4,\).*event_shape=\(3,\)"):
        flow.forward(tf.zeros((2, 4), tf.float64))
    with pytest.raises(TypeError, match="x with dtype=int32"):
        flow.forward(tf.zeros((2, 3), tf.int32))
    with pytest.raises(TypeError, match="dtype='float64'"):
        ki.bijectors.FFJORD(Linear(A, dtype="float32")).forward(tf.zeros((2, 3), tf.float64))


def test_the_augmented_right_hand_side_is_not_a_tf_function_of_its_own():
    # Traced with relaxed shapes inside XLA's compiled solve, a tf.function of its own
    # made every argument a compile-time constant: one XLA compilation per training step
    # (ContinuousFlow.fit took ~2 s a step and crashed after some hundreds).
    from keras_implicit.bijectors import augmented_dynamics

    fn = augmented_dynamics.augmented_fn(lambda t, x: -x, "exact", True, False, False)
    assert not isinstance(fn, tf.types.experimental.PolymorphicFunction)
    out = fn(tf.constant(0.0), {"z": tf.ones((3, 2)), "log_det": tf.zeros(3)}, None)
    np.testing.assert_allclose(out["log_det"].numpy(), [-2.0] * 3)
