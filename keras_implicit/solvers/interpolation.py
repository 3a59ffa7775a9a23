"""Dense output: the solution inside an accepted step as a polynomial in ``theta``.

Adaptive solvers step freely and interpolate at the requested times instead of
shortening steps to hit them. ``coefficients`` takes the step's endpoints
``y0``/``y1``, derivatives ``f0``/``f1`` (flat lists of tensors), its size
``dt`` and optionally the solution at its middle ``y_mid``, and returns, per
tensor, the coefficients ``[c0, c1, ...]`` of ``y(t0 + theta dt) = sum_k c_k
theta^k`` for ``theta`` in [0, 1]: the quartic through ``y0``, ``y_mid``, ``y1``
with slopes ``f0``, ``f1`` (fourth-order accurate with Dormand–Prince's
continuous extension for ``y_mid``), or without ``y_mid`` the cubic Hermite
interpolant (third order, any method). Both reproduce ``y0`` at 0 and ``y1``
at 1. Stored per step, the coefficients are the dense solution.
"""

import tensorflow as tf


def coefficients(y0, y1, f0, f1, dt, y_mid=None):
    """Per state tensor, the list of polynomial coefficients in ``theta`` (lowest first)."""
    out = []
    for j, (a0, a1, fa, fb) in enumerate(zip(y0, y1, f0, f1)):
        h = tf.cast(dt, a0.dtype)
        if y_mid is None:
            out.append([a0, h * fa, 3.0 * (a1 - a0) - h * (2.0 * fa + fb),
                        2.0 * (a0 - a1) + h * (fa + fb)])
            continue
        am = y_mid[j]
        out.append([
            a0,
            h * fa,
            h * (fb - 4.0 * fa) - 11.0 * a0 - 5.0 * a1 + 16.0 * am,
            h * (5.0 * fa - 3.0 * fb) + 18.0 * a0 + 14.0 * a1 - 32.0 * am,
            2.0 * h * (fb - fa) - 8.0 * (a0 + a1) + 16.0 * am,
        ])
    return out


def evaluate(coefficient_lists, theta):
    """The polynomials at ``theta`` (a scalar, or anything that broadcasts), by Horner's rule."""
    values = []
    for coeffs in coefficient_lists:
        th = tf.cast(theta, coeffs[0].dtype)
        value = coeffs[-1]
        for c in reversed(coeffs[:-1]):
            value = value * th + c
        values.append(value)
    return values


def derivative(coefficient_lists, theta, dt):
    """``dy/dt`` of the polynomials at ``theta`` for a step of size ``dt``."""
    values = []
    for coeffs in coefficient_lists:
        th = tf.cast(theta, coeffs[0].dtype)
        value = len(coeffs[1:]) * coeffs[-1]
        for k in range(len(coeffs) - 2, 0, -1):
            value = value * th + k * coeffs[k]
        values.append(value / tf.cast(dt, coeffs[0].dtype))
    return values
