"""Dense output: the solution inside an accepted step, for output times.

Adaptive solvers step freely and interpolate at the requested times instead of
shortening steps to hit them. Every function here takes the step's endpoints
``y0``/``y1``, derivatives ``f0``/``f1`` (flat lists of tensors), its size
``dt`` and ``theta`` in [0, 1], and returns the interpolant at
``t0 + theta * dt``. Both interpolants reproduce ``y0`` at 0 and ``y1`` at 1.
"""


def hermite_cubic(y0, y1, f0, f1, dt, theta):
    """Cubic Hermite interpolation: third-order accurate, for any method."""
    theta2 = theta * theta
    theta3 = theta2 * theta
    h00 = 2 * theta3 - 3 * theta2 + 1
    h10 = theta3 - 2 * theta2 + theta
    h01 = -2 * theta3 + 3 * theta2
    h11 = theta3 - theta2
    return [
        h00 * a + h01 * b + dt * (h10 * fa + h11 * fb)
        for a, b, fa, fb in zip(y0, y1, f0, f1)
    ]


def quartic_through_midpoint(y0, y1, y_mid, f0, f1, dt, theta):
    """The quartic through ``y0``, ``y_mid`` (at 1/2), ``y1`` with slopes ``f0``, ``f1``.

    With a fourth-order ``y_mid`` (Dormand–Prince's continuous extension) the
    interpolant is fourth-order accurate.
    """
    out = []
    for a0, a1, am, fa, fb in zip(y0, y1, y_mid, f0, f1):
        c4 = 2 * dt * (fb - fa) - 8 * (a0 + a1) + 16 * am
        c3 = dt * (5 * fa - 3 * fb) + 18 * a0 + 14 * a1 - 32 * am
        c2 = dt * (fb - 4 * fa) - 11 * a0 - 5 * a1 + 16 * am
        c1 = dt * fa
        out.append((((c4 * theta + c3) * theta + c2) * theta + c1) * theta + a0)
    return out
