"""TensorFlow Probability's ODE solvers behind the ``ODESolver`` interface.

The only module that imports ``tfp.math.ode``. ``"bdf"`` (TFP's variable-order
BDF, for stiff problems) and ``"tfp_dopri5"`` (TFP's Dormand–Prince) solve the
forward problem here; gradients never use TFP's own adjoint: ``ops.odeint``
runs its continuous adjoint through these same solvers, and TFP's solvers
cannot be backpropagated through (``gradient="backprop"`` is refused).

Compared with calling TFP directly: the first step is chosen automatically
(TFP's default is a fixed 1e-3), ``max_num_steps`` always bounds the solve, and
non-finite dynamics at the initial time are reported instead of looping.
"""

import tensorflow as tf
import tensorflow_probability as tfp

from keras_implicit.solvers import base
from keras_implicit.solvers import state as state_ops
from keras_implicit.solvers.initial_step import resolve_first_step

_METHODS = {
    "dormand_prince": (tfp.math.ode.DormandPrince, 5),
    "bdf": (tfp.math.ode.BDF, 1),
}


class TFPSolver(base.ODESolver):
    """Adapter for ``tfp.math.ode.DormandPrince`` and ``tfp.math.ode.BDF``.

    Args:
        method: ``"dormand_prince"`` or ``"bdf"``.
        **options: passed to the TFP solver's constructor (for example
            ``safety_factor`` or ``max_order`` for BDF); ``rtol``, ``atol``,
            ``first_step_size`` and ``max_num_steps`` come from ``odeint``.

    Example:
        >>> ki.ops.odeint(fn, y0, times, solver={"name": "bdf", "max_order": 3})
    """

    adaptive = True
    differentiable = False
    supports_error_mask = False

    def __init__(self, method="dormand_prince", **options):
        if method not in _METHODS:
            raise ValueError(
                f"`method` must be one of {sorted(_METHODS)}. Received: method={method!r}")
        reserved = {"rtol", "atol", "first_step_size", "max_num_steps"} & set(options)
        if reserved:
            raise ValueError(
                f"Pass {sorted(reserved)} to odeint, not to the solver. Received: "
                f"{ {k: options[k] for k in reserved} }"
            )
        self.method = method
        self.name = "bdf" if method == "bdf" else "tfp_dopri5"
        self.options = dict(options)
        self._order = _METHODS[method][1]

    def get_config(self):
        return {"name": self.name, **self.options}

    def solve(self, fn, y0, times, *, rtol, atol, num_steps=None, max_num_steps=10_000,
              error_mask=None, first_step=None, f0=None):
        t0 = times[0]
        nfe = tf.constant(0, tf.int32)
        if f0 is None:
            f0 = fn(t0, y0)
            nfe += 1
        first_step, extra = resolve_first_step(first_step, fn, t0, y0, f0, self._order, rtol, atol)
        nfe += extra
        finite = state_ops.all_finite(f0) & state_ops.all_finite(y0)

        def run():
            solver_cls = _METHODS[self.method][0]
            solver = solver_cls(rtol=rtol, atol=atol, first_step_size=first_step,
                                max_num_steps=max_num_steps, **self.options)
            results = solver.solve(lambda t, y: fn(t, list(y)), t0, list(y0),
                                   solution_times=times)
            diag = results.diagnostics
            status = tf.where(diag.status >= 0, base.SUCCESS, base.FAILED)
            return (list(results.states), tf.cast(diag.num_ode_fn_evaluations, tf.int32),
                    status)

        def fail():
            # TFP's own loop does not stop on NaN at t0; answer without entering it.
            nan_states = [
                tf.fill(tf.concat([tf.shape(times), tf.shape(y)], 0),
                        tf.constant(float("nan"), y.dtype)) for y in y0
            ]
            return nan_states, tf.constant(0, tf.int32), tf.constant(base.NON_FINITE, tf.int32)

        states, tfp_nfe, status = tf.cond(finite, run, fail)
        for s, y in zip(states, y0):
            s.set_shape(tf.TensorShape([None]).concatenate(y.shape))
        nfe += tfp_nfe
        unknown = tf.constant(0, tf.int32)  # TFP does not report step counts.
        return states, base.SolveStats(nfe, unknown, unknown, status, times[-1],
                                       tf.zeros([], times.dtype))
