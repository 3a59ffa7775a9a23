"""Adaptive explicit Runge–Kutta solvers driven by an embedded error estimate.

``AdaptiveRungeKutta`` runs any first-same-as-last tableau with an embedded
pair (Dormand–Prince 5(4) as ``"dopri5"``, Bogacki–Shampine 3(2) as
``"bosh3"``) in one ``tf.while_loop``: automatic initial step, standard
step-size control, dense output at the requested times (steps are never
shortened to hit an output time), and a mixed RMS error norm that can leave
state components out (the adjoint seminorm). Every operation is a plain
TensorFlow op, so backpropagating through a solve gives the exact gradient of
the discretisation (the step sizes are treated as constants); the
continuous adjoint in ``ops`` drives the same solver backwards in time.

A solve always terminates: NaN/Inf states are rejected and shrink the step
until it underflows (status ``NON_FINITE``); ``max_num_steps`` bounds the
loop (status ``MAX_NUM_STEPS_REACHED``).
"""

import tensorflow as tf

from keras_implicit.solvers import base
from keras_implicit.solvers import interpolation
from keras_implicit.solvers import runge_kutta
from keras_implicit.solvers import state as state_ops
from keras_implicit.solvers.initial_step import resolve_first_step


class AdaptiveRungeKutta(base.ODESolver):
    """An embedded Runge–Kutta pair with error control and dense output.

    Args:
        tableau: a :class:`ButcherTableau` with ``b_error`` and the first
            same as last property.
        safety: factor applied to the optimal step size, in (0, 1].
        min_factor: smallest factor by which one step may shrink the next, in (0, 1).
        max_factor: largest factor by which one step may grow the next, > 1.

    Example:
        >>> solver = AdaptiveRungeKutta(runge_kutta.DORMAND_PRINCE, safety=0.8)
        >>> ki.ops.odeint(fn, y0, times, solver=solver)
    """

    adaptive = True
    differentiable = True
    supports_error_mask = True

    def __init__(self, tableau, safety=0.9, min_factor=0.2, max_factor=10.0):
        if not isinstance(tableau, runge_kutta.ButcherTableau):
            raise TypeError(f"`tableau` must be a ButcherTableau. Received: tableau={tableau!r}")
        if tableau.b_error is None:
            raise ValueError(
                f"An adaptive solver needs an embedded error estimate (b_error). "
                f"Received: tableau={tableau.name!r}"
            )
        if not tableau.fsal:
            raise ValueError(
                f"AdaptiveRungeKutta needs a first-same-as-last tableau. Received: "
                f"tableau={tableau.name!r}"
            )
        if not 0.0 < safety <= 1.0:
            raise ValueError(f"`safety` must be in (0, 1]. Received: safety={safety}")
        if not 0.0 < min_factor < 1.0:
            raise ValueError(f"`min_factor` must be in (0, 1). Received: min_factor={min_factor}")
        if not max_factor > 1.0:
            raise ValueError(f"`max_factor` must be > 1. Received: max_factor={max_factor}")
        self.tableau = tableau
        self.name = tableau.name
        self.safety = float(safety)
        self.min_factor = float(min_factor)
        self.max_factor = float(max_factor)

    def get_config(self):
        return {"name": self.name, "safety": self.safety, "min_factor": self.min_factor,
                "max_factor": self.max_factor}

    def _stages(self, fn, t, dt, y, f):
        """One trial step: the new state, its derivative, the error, the midpoint."""
        tab = self.tableau
        ks = [f]
        for i in range(1, tab.num_stages):
            y_i = state_ops.combine(y, dt, tab.a[i], ks)
            if i == tab.num_stages - 1:
                y_new = y_i  # first same as last: the last stage sits at the solution
            ks.append(fn(t + tab.c[i] * dt, y_i))
        error_weights = [b - e for b, e in zip(tab.b, tab.b_error)]
        zeros = [tf.zeros_like(v) for v in y]
        error = state_ops.combine(zeros, dt, error_weights, ks)
        y_mid = None if tab.b_mid is None else state_ops.combine(y, dt, tab.b_mid, ks)
        return y_new, ks[-1], error, y_mid

    def _interpolate(self, y, y_new, f, f_new, y_mid, dt, theta):
        if y_mid is not None:
            return interpolation.quartic_through_midpoint(y, y_new, y_mid, f, f_new, dt, theta)
        return interpolation.hermite_cubic(y, y_new, f, f_new, dt, theta)

    def solve(self, fn, y0, times, *, rtol, atol, num_steps=None, max_num_steps=10_000,
              error_mask=None, first_step=None, f0=None):
        dtype = times.dtype
        num_times = tf.shape(times)[0]
        t0, t_end = times[0], times[-1]
        nfe = tf.constant(0, tf.int32)
        if f0 is None:
            f0 = fn(t0, y0)
            nfe += 1
        dt0, extra = resolve_first_step(
            first_step, fn, t0, y0, f0, self.tableau.order, rtol, atol, error_mask)
        nfe += extra
        eps = tf.constant(tf.experimental.numpy.finfo(dtype.as_numpy_dtype).eps, dtype)
        min_dt = 16.0 * eps * tf.maximum(tf.maximum(tf.abs(t0), tf.abs(t_end)), 1.0)
        exponent = -1.0 / (self.tableau.error_order + 1)
        new_evals = self.tableau.num_stages - 1

        outputs = [
            tf.TensorArray(y.dtype, size=num_times, element_shape=y.shape).write(0, y)
            for y in y0
        ]

        def write_outputs(out_index, outputs, accept, t, dt, t_new, y, y_new, f, f_new, y_mid):
            def cond(i, _):
                next_time = times[tf.minimum(i, num_times - 1)]
                return accept & (i < num_times) & (next_time <= t_new)

            def body(i, outs):
                theta = (times[i] - t) / dt
                values = self._interpolate(y, y_new, f, f_new, y_mid, dt, theta)
                values = [tf.where(theta >= 1.0, b, v) for b, v in zip(y_new, values)]
                return i + 1, [ta.write(i, v) for ta, v in zip(outs, values)]

            return tf.while_loop(cond, body, (out_index, outputs))

        def cond(t, dt, y, f, out_index, outputs, nfe, accepted, rejected, status):
            return tf.equal(status, base.RUNNING)

        def body(t, dt, y, f, out_index, outputs, nfe, accepted, rejected, status):
            dt = tf.minimum(dt, t_end - t)
            dt = tf.stop_gradient(dt)
            y_new, f_new, error, y_mid = self._stages(fn, t, dt, y, f)
            nfe += new_evals
            ratio = tf.stop_gradient(
                tf.cast(state_ops.error_ratio(error, y, y_new, rtol, atol, error_mask), dtype))
            finite = tf.math.is_finite(ratio)
            accept = finite & (ratio <= 1.0)
            factor = self.safety * tf.pow(tf.maximum(ratio, 1e-10), exponent)
            factor = tf.clip_by_value(factor, self.min_factor, self.max_factor)
            factor = tf.where(finite, factor, tf.constant(self.min_factor, dtype))
            reached_end = accept & (t + dt >= t_end)
            t_new = tf.where(reached_end, t_end, t + dt)
            out_index, outputs = write_outputs(
                out_index, outputs, accept, t, dt, t_new, y, y_new, f, f_new, y_mid)
            y = [tf.where(accept, b, a) for a, b in zip(y, y_new)]
            f = [tf.where(accept, b, a) for a, b in zip(f, f_new)]
            t = tf.where(accept, t_new, t)
            accepted += tf.cast(accept, tf.int32)
            rejected += 1 - tf.cast(accept, tf.int32)
            dt_next = dt * factor
            status = tf.where(
                reached_end, base.SUCCESS,
                tf.where(
                    dt_next < min_dt,
                    tf.where(finite, base.STEP_SIZE_TOO_SMALL, base.NON_FINITE),
                    tf.where(accepted + rejected >= max_num_steps,
                             base.MAX_NUM_STEPS_REACHED, base.RUNNING),
                ),
            )
            return t, dt_next, y, f, out_index, outputs, nfe, accepted, rejected, status

        zero = tf.constant(0, tf.int32)
        f0_finite = state_ops.all_finite(f0) & state_ops.all_finite(y0)
        status0 = tf.where(f0_finite, base.RUNNING, base.NON_FINITE)
        loop = tf.while_loop(
            cond, body,
            (t0, tf.stop_gradient(dt0), list(y0), list(f0), tf.constant(1, tf.int32), outputs,
             nfe, zero, zero, status0),
            maximum_iterations=max_num_steps,
        )
        t, dt, y, _, out_index, outputs, nfe, accepted, rejected, status = loop
        # A solve stopped early still returns every output (NaN where not reached) so
        # the caller can raise a clear error or inspect the status.
        status = tf.where(tf.equal(status, base.RUNNING), base.MAX_NUM_STEPS_REACHED, status)
        outputs = fill_remaining(outputs, out_index, num_times, y)
        states = [ta.stack() for ta in outputs]
        for s, y_ in zip(states, y0):
            s.set_shape(tf.TensorShape([None]).concatenate(y_.shape))
        return states, base.SolveStats(nfe, accepted, rejected, status, t, dt)


def fill_remaining(outputs, out_index, num_times, like):
    """Writes NaN into the outputs a failed solve did not reach."""

    def body(i, outs):
        return i + 1, [ta.write(i, tf.fill(tf.shape(v), tf.constant(float("nan"), v.dtype)))
                       for ta, v in zip(outs, like)]

    _, outputs = tf.while_loop(lambda i, _: i < num_times, body, (out_index, outputs))
    return outputs
