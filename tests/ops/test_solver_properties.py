"""Property-based tests of the solvers on problems with closed forms (``hypothesis``).

ODE: ``dy/dt = a y`` from ``y(t0) = c``, observed at a random grid of output
times (near-duplicate times, tiny first and last intervals, backwards in time),
loss ``L = sum_i w_i y(t_i)``. The gradients with respect to ``a`` and ``c``
are known exactly, ``dL/da = sum_i w_i c (t_i - t0) e^(a (t_i - t0))``.

- Adaptive solvers (ours with every gradient strategy, TFP's with the adjoint):
  the solve must not raise or return NaN on these smooth problems, and
  ``|g - g*| <= C * tol * S`` with ``S = max(|c|, 1) * sum_i |w_i| (1 + |t_i - t0|)
  e^(|a| |t_i - t0|)`` the size of the terms of ``g*`` and ``C = 20``. Why 20:
  error control keeps every step's local error below ``tol`` (relative to
  ``|y|`` or absolute); with ``|a| <= 1`` over spans up to 2 the global error
  of the state, and so of the adjoint, is a few times that (Hairer et al.,
  I.II.3); the dense output adds the interpolant's error, of the same order;
  the adjoint's own solve adds as much again. The long run (2,000 examples)
  measures the largest ratio ``|g - g*| / (tol * S)``: see the README.
- Fixed grids: ``Backprop`` and ``Checkpointed`` must give the gradient of the
  discretisation itself, ``y_N = c * prod_k R(a h_k)`` with ``R`` the method's
  stability polynomial, to rounding; the adjoint (RK4) the continuous gradient
  to the method's error, ``(|a| h)^4 * S``.

Fixed points: ``z = z W + x U`` with ``||W||_2 = L < 1``: every solver stops
with ``||z - z*|| <= 2 tol ||z*|| / (1 - L)`` per sample, and the implicit
gradient matches the closed form to the same order (the backward solve has
the same contraction).
"""

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import assume, given
from hypothesis import strategies as st

import keras_implicit as ki

pytestmark = pytest.mark.plain_graph  # numerics in TensorFlow's graph (tests/conftest.py)


C_ADAPTIVE = 20.0

STRATEGIES = [("dopri5", "adjoint"), ("dopri5", "backprop"), ("dopri5", "checkpointed"),
              ("bosh3", "adjoint"), ("bosh3", "backprop"), ("bosh3", "checkpointed"),
              ("tfp_dopri5", "adjoint"), ("bdf", "adjoint")]
STABILITY = {  # R(z) and R'(z) of each fixed-grid method
    "euler": (lambda z: 1 + z, lambda z: 1.0),
    "midpoint": (lambda z: 1 + z + z ** 2 / 2, lambda z: 1 + z),
    "rk4": (lambda z: 1 + z + z ** 2 / 2 + z ** 3 / 6 + z ** 4 / 24,
            lambda z: 1 + z + z ** 2 / 2 + z ** 3 / 6),
}


@st.composite
def time_grids(draw, dtype):
    """Strictly monotone grids with near-duplicates and tiny end intervals, maybe backwards."""
    eps = np.finfo(dtype).eps
    t0 = draw(st.floats(-1.0, 1.0))
    span = draw(st.floats(0.01, 2.0))
    inner = draw(st.lists(st.floats(0.0, 1.0), min_size=0, max_size=4))
    fractions = sorted(set([0.0, 1.0] + inner))
    kinds = draw(st.lists(st.sampled_from(["plain", "near_next", "tiny_first", "tiny_last"]),
                          min_size=1, max_size=2))
    gap = max(1e3 * eps, 1e-9)
    if "tiny_first" in kinds:
        fractions.insert(1, gap)
    if "tiny_last" in kinds:
        fractions.insert(-1, 1.0 - gap)
    if "near_next" in kinds and len(fractions) > 2:
        i = draw(st.integers(1, len(fractions) - 2))
        fractions.insert(i + 1, fractions[i] + gap)
    direction = draw(st.sampled_from([1.0, -1.0]))
    times = np.array([t0 + direction * span * f for f in sorted(set(fractions))])
    rounded = times.astype(dtype)
    # As odeint checks them: TensorFlow flushes subnormal times and gaps to 0.
    tiny = np.finfo(dtype).tiny
    rounded = np.where(np.abs(rounded) < tiny, 0, rounded)
    assume(np.all(np.diff(rounded) * direction >= tiny))
    return times


# tfp.math.ode.DormandPrince does not resolve below about 2.5e-8 in float64: y' = 1 over
# [-0.964, 0.137] at rtol = atol = 1e-11 ends 2.45e-8 off after 1290 evaluations, and
# tighter tolerances run into max_num_steps. Its tolerances are drawn above that floor.
TFP_DOPRI5_FLOOR = 1e-7
# Bogacki-Shampine is third order: at rtol = atol = 2.2e-14 its 10,000 steps (the default
# max_num_steps) reached t = 1.32 of a grid 2 long (found by the long run); at 1e-12 the
# steps are 3.7x longer.
# TFP's BDF is slow at tight tolerances: eagerly, its three CI examples took 100 s with
# draws down to 100 eps and 66 s stopping at 1e-9; it runs in a tf.function (``gradients``),
# where six examples take about 20 s.
FLOORS = {"tfp_dopri5": TFP_DOPRI5_FLOOR, "bosh3": 1e-12, "bdf": 1e-9}


def closed_form(a, c, times, weights):
    elapsed = times - times[0]
    growth = np.exp(a * elapsed)
    return (np.sum(weights * c * elapsed * growth), np.sum(weights * growth),
            max(abs(c), 1.0) * np.sum(np.abs(weights) * (1 + np.abs(elapsed))
                                      * np.exp(abs(a) * np.abs(elapsed))))


def gradients(solver, gradient, a, c, times, weights, dtype, tol, **kwargs):
    a_var = tf.Variable(a, dtype=dtype)
    y0 = tf.constant([c], dtype)

    def solve():
        with tf.GradientTape() as tape:
            tape.watch(y0)
            result = ki.ops.odeint(lambda t, y: a_var * y, y0, tf.constant(times, dtype),
                                   solver=solver, gradient=gradient, rtol=tol, atol=tol,
                                   **kwargs)
            loss = tf.reduce_sum(result.states[:, 0] * tf.constant(weights, dtype))
        grad_a, grad_c = tape.gradient(loss, [a_var, y0])
        return grad_a, grad_c, result.states, result.stats.status

    if solver == "bdf":
        solve = tf.function(solve)
    grad_a, grad_c, states, status = solve()
    return float(grad_a), float(grad_c[0]), states, status


@pytest.mark.parametrize("solver,gradient", STRATEGIES)
def test_adaptive_gradients_match_the_closed_form(solver, gradient):
    @given(dtype=st.sampled_from([np.float32, np.float64]), a=st.floats(-1.0, 1.0),
           c=st.floats(0.3, 2.0) | st.floats(-2.0, -0.3), data=st.data())
    def check(dtype, a, c, data):
        eps = np.finfo(dtype).eps
        times = data.draw(time_grids(dtype))
        tightest = max(100 * eps, FLOORS.get(solver, 0.0))
        tol = 10.0 ** data.draw(st.floats(math.log10(tightest), -2.0))
        weights = np.array(data.draw(st.lists(st.floats(-1.0, 1.0), min_size=len(times),
                                              max_size=len(times))))
        # The closed form of the numbers the solve sees: 4.6e-235 is 0 in float32, and
        # TensorFlow's CPU kernels flush subnormals to 0, also those of products with
        # the weights (a weight of float32's smallest normal, 1.2e-38, gave 0): numbers
        # within a factor 1/eps of the subnormal range are taken as 0.
        near_underflow = np.finfo(dtype).tiny / eps
        a, c = (float(np.asarray(v, dtype)) for v in (a, c))
        weights = weights.astype(dtype).astype(np.float64)
        weights[np.abs(weights) < near_underflow] = 0.0
        a = 0.0 if abs(a) < near_underflow else a
        grad_a, grad_c, states, status = gradients(solver, gradient, a, c, times, weights,
                                                   dtype, tol)
        exact_a, exact_c, scale = closed_form(a, c, times, weights)
        assert np.all(np.isfinite(states.numpy()))
        assert int(status) == 0
        bound = C_ADAPTIVE * tol * scale + 100 * eps * scale
        assert abs(grad_a - exact_a) <= bound, (grad_a, exact_a, bound)
        assert abs(grad_c - exact_c) <= bound, (grad_c, exact_c, bound)

    check()


@pytest.mark.parametrize("method", sorted(STABILITY))
def test_fixed_grid_gradients_are_those_of_the_discretisation(method):
    R, dR = STABILITY[method]

    @given(a=st.floats(-1.0, 1.0), c=st.floats(0.3, 2.0), times=time_grids(np.float64),
           num_steps=st.integers(1, 40), data=st.data())
    def check(a, c, times, num_steps, data):
        weights = np.array(data.draw(st.lists(st.floats(-1.0, 1.0), min_size=len(times),
                                              max_size=len(times))))
        span = times[-1] - times[0]
        counts = np.maximum(np.ceil((np.diff(times) / span) * num_steps - 1e-4), 1).astype(int)
        assume(counts.sum() <= 400)
        sizes = np.diff(times) / counts
        # y_i = c prod_{k < i} R(a h_k)^n_k; dy_i/da = y_i sum_k n_k h_k R'(a h_k) / R(a h_k).
        factors = np.array([R(a * h) for h in sizes])
        log_derivatives = np.array([n * h * dR(a * h) / R(a * h) for n, h in zip(counts, sizes)])
        ys = c * np.concatenate([[1.0], np.cumprod(factors ** counts)])
        exact_a = np.sum(weights * ys * np.concatenate([[0.0], np.cumsum(log_derivatives)]))
        exact_c = np.sum(weights * ys / c)
        for gradient in ("backprop", "checkpointed"):
            grad_a, grad_c, _, _ = gradients(method, gradient, a, c, times, weights,
                                             np.float64, 1e-3, num_steps=num_steps,
                                             max_num_steps=1000)
            scale = 1e-9 * (1 + np.sum(np.abs(weights * ys)) * (1 + abs(span)))
            assert abs(grad_a - exact_a) <= scale, (gradient, grad_a, exact_a)
            assert abs(grad_c - exact_c) <= scale, (gradient, grad_c, exact_c)
        if method == "rk4":
            grad_a, _, _, _ = gradients(method, "adjoint", a, c, times, weights, np.float64,
                                        1e-3, num_steps=num_steps, max_num_steps=1000)
            continuous, _, scale = closed_form(a, c, times, weights)
            bound = (abs(a) * np.max(np.abs(sizes))) ** 4 * scale + 1e-9 * scale
            assert abs(grad_a - continuous) <= bound, (grad_a, continuous, bound)

    check()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("solver", ["picard", "anderson", "broyden"])
def test_fixed_points_and_implicit_gradients_match_the_closed_form(solver, dtype):
    eps = np.finfo(dtype).eps

    @given(seed=st.integers(0, 2**31 - 1), dim=st.integers(1, 6), batch=st.integers(1, 4),
           norm=st.floats(0.05, 0.8), log_tol=st.floats(math.log10(1e3 * eps), -3.0))
    def check(seed, dim, batch, norm, log_tol):
        tol = 10.0 ** log_tol
        rng = np.random.default_rng(seed)
        w = rng.normal(size=(dim, dim))
        w *= norm / np.linalg.norm(w, 2)
        u = rng.normal(size=(dim, dim))
        x = rng.normal(size=(batch, dim))
        weights = rng.normal(size=(batch, dim))
        inverse = np.linalg.inv(np.eye(dim) - w)
        z_star = x @ u @ inverse
        grad_x = (weights @ inverse.T) @ u.T
        w_t, u_t, x_t = (tf.constant(v, dtype) for v in (w, u, x))
        with tf.GradientTape() as tape:
            tape.watch(x_t)
            result = ki.ops.fixed_point(lambda z, x: z @ w_t + x @ u_t, x_t, tf.zeros_like(x_t),
                                        solver=solver, tol=tol, max_iter=500,
                                        on_failure="raise")
            loss = tf.reduce_sum(result.z * tf.constant(weights, dtype))
        grad = tape.gradient(loss, x_t).numpy()
        rows = np.linalg.norm(z_star, axis=1)
        error = np.linalg.norm(result.z.numpy() - z_star, axis=1)
        floor = 100 * eps * (1 + np.abs(z_star).max()) / (1 - norm)
        assert np.all(error <= 2 * tol * rows / (1 - norm) + floor), (error, rows)
        grad_scale = np.linalg.norm(grad_x) + np.linalg.norm(weights @ inverse.T)
        assert np.linalg.norm(grad - grad_x) <= (
            2 * tol / (1 - norm) * grad_scale * np.linalg.norm(u, 2) + floor * grad_scale)

    check()
