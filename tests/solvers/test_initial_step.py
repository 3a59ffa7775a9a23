"""The first step: the automatic choice, a given step, and an adjoint's warm start."""

import numpy as np
import pytest
import tensorflow as tf

from keras_implicit.solvers import initial_step

Y0 = np.array([1.0, -2.0])
F0 = np.array([3.0, 0.5])
RTOL, ATOL = 1e-3, 1e-6


def _never_called(t, y):
    raise AssertionError("the dynamics must not be evaluated")


def _resolve(first_step, fn=_never_called):
    h, nfe = initial_step.resolve_first_step(
        first_step, fn, tf.constant(0.0, tf.float64), [tf.constant(Y0)], [tf.constant(F0)],
        5, RTOL, ATOL)
    return float(h), int(nfe)


def _h0():
    """Hairer, Norsett & Wanner's h0 = 0.01 * |y0| / |f0|, RMS norms scaled by the
    tolerances (here both norms are above 1e-5)."""
    scale = ATOL + RTOL * np.abs(Y0)
    d0 = np.sqrt(np.mean((Y0 / scale) ** 2))
    d1 = np.sqrt(np.mean((F0 / scale) ** 2))
    return 0.01 * d0 / d1


def test_a_positive_warm_start_is_the_first_step_without_evaluating_the_dynamics():
    assert _resolve(initial_step.WarmStart(tf.constant(0.125, tf.float64))) == (0.125, 0)
    assert _resolve(initial_step.WarmStart(tf.constant(0.125, tf.float32)))[0] == 0.125


@pytest.mark.parametrize("size", [0.0, -0.5, float("nan"), float("inf")])
def test_an_unusable_warm_start_falls_back_to_h0_without_evaluating_the_dynamics(size):
    h, nfe = _resolve(initial_step.WarmStart(tf.constant(size, tf.float64)))
    assert nfe == 0
    np.testing.assert_allclose(h, _h0(), rtol=1e-14)


def test_a_non_positive_tensor_still_selects_the_step_with_one_evaluation():
    calls = []

    def linear(t, y):
        calls.append(t)
        return [0.5 * v for v in y]

    h, nfe = _resolve(tf.constant(0.0, tf.float64), linear)
    automatic, one = initial_step.select_initial_step(
        linear, tf.constant(0.0, tf.float64), [tf.constant(Y0)], [tf.constant(F0)], 5,
        RTOL, ATOL)
    assert (nfe, int(one)) == (1, 1) and len(calls) == 2
    assert h == float(automatic) and 0 < h <= 100 * _h0()
    assert _resolve(tf.constant(0.25, tf.float64), linear) == (0.25, 0)
    assert len(calls) == 2  # a positive step evaluates nothing


def test_a_positive_number_is_the_first_step_without_a_conditional():
    graph = tf.function(lambda t0: _resolve_graph(0.25, t0)).get_concrete_function(
        tf.TensorSpec([], tf.float64)).graph
    assert not [op for op in graph.get_operations() if op.type in ("If", "StatelessIf")]
    assert _resolve(0.25) == (0.25, 0)


def _resolve_graph(first_step, t0):
    return initial_step.resolve_first_step(first_step, _never_called, t0, [tf.constant(Y0)],
                                           [tf.constant(F0)], 5, RTOL, ATOL)[0]
