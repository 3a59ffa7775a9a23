"""Automatic selection of the first step size (Hairer, Norsett & Wanner, II.4).

A fixed first step (TFP uses 1e-3) costs a run of rejected or needlessly small
steps; this estimate costs one evaluation of the dynamics.
"""

import collections

import tensorflow as tf

from keras_implicit.solvers import state as state_ops


class WarmStart(collections.namedtuple("WarmStart", ["size"])):
    """A first step proposed by an earlier solve of the same solver (the adjoint's
    backward intervals start with the forward's last proposal): used where it is
    positive and finite, else replaced by ``h0`` of ``select_initial_step``, which
    costs no evaluation of the dynamics. Only solvers that declare
    ``ODESolver.reports_next_step`` receive it."""

    __slots__ = ()


def _first_guess(t0, y0, f0, rtol, atol, error_mask):
    """``(h0, d1, zeros)``: Hairer & Wanner's first guess ``h0 = 0.01 * |y0| / |f0|``,
    ``d1 = |f0|`` (norms scaled by the tolerances) and zeros like ``y0``."""
    dtype = t0.dtype
    zeros = [tf.zeros_like(y) for y in y0]
    d0 = tf.cast(state_ops.error_ratio(y0, zeros, y0, rtol, atol, error_mask), dtype)
    d1 = tf.cast(state_ops.error_ratio(f0, zeros, y0, rtol, atol, error_mask), dtype)
    small = tf.constant(1e-5, dtype)
    h0 = tf.where((d0 < small) | (d1 < small), tf.constant(1e-6, dtype),
                  0.01 * d0 / tf.maximum(d1, small))
    return h0, d1, zeros


def select_initial_step(fn, t0, y0, f0, order, rtol, atol, error_mask=None):
    """Returns ``(h, nfe)``: a first step for a method of order ``order``.

    ``h0 = 0.01 * |y0| / |f0|`` (scaled norms), then an explicit Euler step of
    ``h0`` estimates the second derivative and ``h1 = (0.01 / max(|f0|, |f''|))
    ** (1 / order)``; the result is ``min(100 * h0, h1)``.
    """
    dtype = t0.dtype
    h0, d1, zeros = _first_guess(t0, y0, f0, rtol, atol, error_mask)
    y1 = [y + tf.cast(h0, y.dtype) * f for y, f in zip(y0, f0)]
    f1 = fn(t0 + h0, y1)
    diff = [b - a for a, b in zip(f0, f1)]
    d2 = tf.cast(state_ops.error_ratio(diff, zeros, y0, rtol, atol, error_mask), dtype) / h0
    dmax = tf.maximum(d1, d2)
    h1 = tf.where(
        dmax <= 1e-15,
        tf.maximum(tf.constant(1e-6, dtype), h0 * 1e-3),
        tf.pow(0.01 / tf.maximum(dmax, 1e-15), 1.0 / order),
    )
    h = tf.minimum(100 * h0, h1)
    # Non-finite estimates (a NaN state is caught by the solver itself) fall back to h0.
    h = tf.where(tf.math.is_finite(h), h, tf.constant(1e-6, dtype))
    return tf.stop_gradient(h), tf.constant(1, tf.int32)


def resolve_first_step(first_step, fn, t0, y0, f0, order, rtol, atol, error_mask=None):
    """``(h, nfe)``: ``first_step`` if it is positive, else the automatic choice.

    ``first_step`` may be None (always automatic), a positive number, a tensor
    (automatic where it is <= 0 at run time: the adjoint with another backward
    solver passes 0 for the first interval), or a :class:`WarmStart`. A number
    or a ``WarmStart`` needs no conditional: the automatic choice's graph (a
    second evaluation of the dynamics) is not built, 170 ops of the ODE
    block's adjoint.
    """
    if first_step is None:
        return select_initial_step(fn, t0, y0, f0, order, rtol, atol, error_mask)
    if isinstance(first_step, WarmStart):
        h = state_ops.cast_to(first_step.size, t0.dtype)
        usable = (h > 0) & tf.math.is_finite(h)
        h0 = _first_guess(t0, y0, f0, rtol, atol, error_mask)[0]
        return tf.where(usable, h, h0), tf.constant(0, tf.int32)
    if not tf.is_tensor(first_step) and first_step > 0:  # a number: no conditional
        return state_ops.cast_to(first_step, t0.dtype), tf.constant(0, tf.int32)
    first_step = state_ops.cast_to(first_step, t0.dtype)
    return tf.cond(
        first_step > 0,
        lambda: (first_step, tf.constant(0, tf.int32)),
        lambda: select_initial_step(fn, t0, y0, f0, order, rtol, atol, error_mask),
    )
