"""Fixed-grid explicit Runge–Kutta solvers: Euler, midpoint, RK4 (the paper's RK-Net).

``num_steps`` is the total number of steps over ``[times[0], times[-1]]``.
Every output time is a grid point: the interval between consecutive output
times gets ``ceil(num_steps * its length / whole span)`` equal steps (at
least one), so outputs carry the method's full order and the total is at
least ``num_steps``.
"""

import tensorflow as tf

from keras_implicit.solvers import base
from keras_implicit.solvers import runge_kutta
from keras_implicit.solvers import state as state_ops


def steps_per_interval(times, num_steps):
    """Number of steps in each interval between consecutive output times (int32)."""
    span = times[-1] - times[0]
    share = (times[1:] - times[:-1]) / span * tf.cast(num_steps, times.dtype)
    # Shares that are whole numbers up to rounding (5.0000001) are not rounded up.
    count = tf.math.ceil(share - 1e-4)
    return tf.maximum(tf.cast(count, tf.int32), 1)


class FixedGridRungeKutta(base.ODESolver):
    """A Runge–Kutta method on a uniform grid per output interval.

    Args:
        tableau: a :class:`ButcherTableau` (its ``b_error`` is ignored).

    Example:
        >>> ki.ops.odeint(fn, y0, [0.0, 1.0], solver="rk4", num_steps=10)
    """

    adaptive = False
    differentiable = True
    supports_error_mask = False

    def __init__(self, tableau):
        if not isinstance(tableau, runge_kutta.ButcherTableau):
            raise TypeError(f"`tableau` must be a ButcherTableau. Received: tableau={tableau!r}")
        self.tableau = tableau
        self.name = tableau.name

    def step(self, fn, t, dt, y):
        tab = self.tableau
        ks = []
        for i in range(tab.num_stages):
            y_i = state_ops.combine(y, dt, tab.a[i], ks) if i else y
            ks.append(fn(t + tab.c[i] * dt, y_i))
        return state_ops.combine(y, dt, tab.b, ks)

    def solve(self, fn, y0, times, *, rtol=None, atol=None, num_steps=None,
              max_num_steps=10_000, error_mask=None, first_step=None, f0=None):
        if num_steps is None:
            raise ValueError(
                f"The fixed-grid solver {self.name!r} needs `num_steps` (an int >= 1). "
                f"Received: num_steps=None"
            )
        num_times = tf.shape(times)[0]
        counts = steps_per_interval(times, num_steps)
        outputs = [
            tf.TensorArray(y.dtype, size=num_times, element_shape=y.shape).write(0, y)
            for y in y0
        ]

        def interval(i, y, outputs):
            n = counts[i]
            t_start = times[i]
            dt = (times[i + 1] - t_start) / tf.cast(n, times.dtype)

            def step_body(k, y):
                t = t_start + tf.cast(k, times.dtype) * dt
                return k + 1, self.step(fn, t, dt, y)

            # No interval has more than num_steps steps; the static bounds let XLA
            # size the tape of these loops (backprop under jit_compile=True).
            _, y = tf.while_loop(lambda k, _: k < n, step_body, (tf.constant(0), list(y)),
                                 maximum_iterations=num_steps)
            outputs = [ta.write(i + 1, v) for ta, v in zip(outputs, y)]
            return i + 1, y, outputs

        num_intervals = tf.compat.dimension_value(times.shape[0])
        _, y, outputs = tf.while_loop(
            lambda i, *_: i < num_times - 1, interval, (tf.constant(0), list(y0), outputs),
            maximum_iterations=None if num_intervals is None else num_intervals - 1)
        states = [ta.stack() for ta in outputs]
        for s, y_ in zip(states, y0):
            s.set_shape(tf.TensorShape([None]).concatenate(y_.shape))
        total = tf.reduce_sum(counts)
        finite = state_ops.all_finite(y)
        status = tf.where(finite, base.SUCCESS, base.NON_FINITE)
        zero = tf.constant(0, tf.int32)
        nfe = total * self.tableau.num_stages
        return states, base.SolveStats(nfe, total, zero, status, times[-1],
                                       tf.zeros([], times.dtype))
