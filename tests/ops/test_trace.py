"""Divergence estimators against exact Jacobians and Hutchinson's variance (float64)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_implicit.ops import exact_trace, hutchinson_trace, sample_noise

RNG = np.random.default_rng(7)
A = RNG.normal(size=(4, 4))  # a non-symmetric Jacobian
W = RNG.normal(size=(3, 3))


def linear(matrix):
    matrix = tf.constant(matrix)
    return lambda z: tf.linalg.matvec(matrix, z)


def rademacher_variance(matrix):
    """Var(e^T M e) for Rademacher e: 2 (||S||_F^2 - sum S_ii^2), S the symmetric part."""
    s = 0.5 * (matrix + matrix.T)
    return 2.0 * (np.sum(s**2) - np.sum(np.diag(s) ** 2))


def gaussian_variance(matrix):
    s = 0.5 * (matrix + matrix.T)
    return 2.0 * np.sum(s**2)


def test_exact_trace_matches_the_analytic_jacobian_of_a_nonlinear_map():
    z = RNG.normal(size=(5, 3))
    f, trace, frobenius = exact_trace(lambda x: tf.tanh(x @ tf.constant(W)), tf.constant(z),
                                      frobenius=True)
    h = np.tanh(z @ W)
    jacobians = (1.0 - h**2)[:, :, None] * W.T[None]  # d f_i / d z_j = (1 - h_i^2) W_ji
    np.testing.assert_allclose(f.numpy(), h, rtol=1e-12)
    np.testing.assert_allclose(trace.numpy(), np.trace(jacobians, axis1=1, axis2=2), rtol=1e-12)
    np.testing.assert_allclose(frobenius.numpy(), np.sum(jacobians**2, axis=(1, 2)), rtol=1e-12)


def test_exact_trace_flattens_events_of_any_rank():
    matrix = RNG.normal(size=(12, 12))

    def fn(x):  # a linear map on the flattened (2, 3, 2) event
        flat = tf.reshape(x, (-1, 12))
        return tf.reshape(tf.linalg.matvec(tf.constant(matrix), flat), tf.shape(x))

    _, trace = exact_trace(fn, tf.constant(RNG.normal(size=(3, 2, 3, 2))))
    np.testing.assert_allclose(trace.numpy(), [np.trace(matrix)] * 3, rtol=1e-12)


@pytest.mark.parametrize("kind,variance", [("rademacher", rademacher_variance),
                                           ("gaussian", gaussian_variance)])
def test_hutchinson_is_unbiased_with_the_predicted_variance(kind, variance):
    n = 20_000
    z = tf.zeros((n, 4), tf.float64)
    noise = sample_noise((n, 4), kind, tf.float64, seed=3)
    _, estimates = hutchinson_trace(linear(A), z, noise)
    estimates = estimates.numpy()
    sigma = np.sqrt(variance(A))
    # The mean of n independent estimates is within 4 standard errors of tr(A)...
    assert abs(estimates.mean() - np.trace(A)) < 4.0 * sigma / np.sqrt(n)
    # ...and their spread is the one the formula predicts (std of the sample variance ~2%).
    assert estimates.var() == pytest.approx(sigma**2, rel=0.1)


def test_rademacher_probes_are_exact_for_a_diagonal_jacobian():
    diagonal = np.diag([1.0, -2.0, 3.5])
    noise = sample_noise((50, 3), "rademacher", tf.float64, seed=0)
    _, estimates = hutchinson_trace(linear(diagonal), tf.zeros((50, 3), tf.float64), noise)
    np.testing.assert_allclose(estimates.numpy(), 2.5, rtol=1e-14)  # variance 0


def test_hutchinson_frobenius_estimate_is_unbiased():
    n = 20_000
    noise = sample_noise((n, 4), "rademacher", tf.float64, seed=11)
    _, _, estimates = hutchinson_trace(linear(A), tf.zeros((n, 4), tf.float64), noise,
                                       frobenius=True)
    # ||e^T A||^2 = e^T (A A^T) e: unbiased for ||A||_F^2, variance as above with A A^T.
    sigma = np.sqrt(rademacher_variance(A @ A.T))
    assert abs(estimates.numpy().mean() - np.sum(A**2)) < 4.0 * sigma / np.sqrt(n)


def test_several_probes_average_the_single_probe_estimates():
    z = tf.constant(RNG.normal(size=(6, 3)))
    fn = lambda x: tf.sin(x @ tf.constant(W))  # noqa: E731
    noise = sample_noise((3, 6, 3), "gaussian", tf.float64, seed=5)
    _, averaged = hutchinson_trace(fn, z, noise)
    singles = [hutchinson_trace(fn, z, noise[k])[1].numpy() for k in range(3)]
    np.testing.assert_allclose(averaged.numpy(), np.mean(singles, axis=0), rtol=1e-12)


@pytest.mark.parametrize("estimator", ["exact", "hutchinson"])
def test_fn_is_evaluated_once(estimator):
    calls = []

    def fn(x):
        calls.append(1)
        return tf.tanh(x)

    z = tf.ones((4, 3), tf.float64)
    if estimator == "exact":
        exact_trace(fn, z)
    else:
        hutchinson_trace(fn, z, sample_noise((4, 4, 3), dtype=tf.float64, seed=1))
    assert len(calls) == 1


def test_sample_noise_is_seeded_and_standardised():
    first = sample_noise((200_000,), "rademacher", tf.float64, seed=42).numpy()
    again = sample_noise((200_000,), "rademacher", tf.float64, seed=42).numpy()
    other = sample_noise((200_000,), "rademacher", tf.float64, seed=43).numpy()
    np.testing.assert_array_equal(first, again)
    assert np.any(first != other)
    assert set(np.unique(first)) == {-1.0, 1.0}
    assert abs(first.mean()) < 5 / np.sqrt(first.size)
    gaussian = sample_noise((200_000,), "gaussian", tf.float32, seed=tf.constant([1, 2])).numpy()
    assert gaussian.dtype == np.float32
    assert abs(gaussian.mean()) < 5 / np.sqrt(gaussian.size)
    assert gaussian.var() == pytest.approx(1.0, abs=0.02)


def test_bad_inputs_name_the_argument_and_value():
    z = tf.zeros((2, 3))
    with pytest.raises(ValueError, match=r"noise='uniform'"):
        sample_noise((2, 3), "uniform")
    with pytest.raises(TypeError, match=r"z with dtype=int32"):
        exact_trace(tf.identity, tf.zeros((2, 3), tf.int32))
    with pytest.raises(ValueError, match=r"noise.shape=\(2, 4\)"):
        hutchinson_trace(tf.identity, z, tf.zeros((2, 4)))
    with pytest.raises(TypeError, match=r"noise with dtype=float64"):
        hutchinson_trace(tf.identity, z, tf.zeros((2, 3), tf.float64))
    with pytest.raises(ValueError, match=r"event shape \(2,\) for z.shape=\(2, 3\)"):
        exact_trace(lambda x: x[:, :2], z)
    with pytest.raises(ValueError, match=r"z.shape=\(3,\)"):
        exact_trace(tf.identity, tf.zeros((3,)))
