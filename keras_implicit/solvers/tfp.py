"""TensorFlow Probability's ODE solvers behind the ``ODESolver`` interface.

The only module that imports ``tfp.math.ode``. ``"bdf"`` (TFP's variable-order
BDF, for stiff problems) and ``"tfp_dopri5"`` (TFP's Dormand–Prince) solve the
forward problem here; gradients never use TFP's own adjoint: ``ops.odeint``
runs its continuous adjoint through these same solvers, and TFP's solvers
cannot be backpropagated through (``gradient="backprop"`` is refused).

Compared with calling TFP directly: the first step is chosen automatically
(TFP's default is a fixed 1e-3), ``max_num_steps`` always bounds the solve,
options are checked when the solver is built, and a solve stops soon after
the dynamics turn NaN or Inf. TFP's loops do not stop on a non-finite state
(they shrink the step until ``max_num_steps``), so the dynamics are guarded:
where they (or their Jacobian) are not finite they return 0, which freezes
the state, and a *failure clock* appended to the state integrates the rate 1
meanwhile. The clock is error-controlled like the state: a trial step that
straddles the onset has a large clock error and is rejected, so TFP's step
control locates the onset within a few steps (a trial step that only
overshoots into a region where the dynamics fail is rejected too, as with
our solvers); once the state is frozen the clock grows exactly and the steps
grow to the end. A clock above 0 at the end reports ``NON_FINITE`` at
``t1 - clock``. While nothing fails the clock has zero error;
Dormand–Prince's RMS norm then counts one more element.
"""

import tensorflow as tf

from keras_implicit import validation
from keras_implicit.solvers import base
from keras_implicit.solvers import state as state_ops
from keras_implicit.solvers.initial_step import resolve_first_step
from keras_implicit.solvers.status import Status

# (class name in ``tfp.math.ode``, order). TFP is imported when a solve is traced, not
# with keras_implicit: it costs about 2 s of a process's start.
_METHODS = {
    "dormand_prince": ("DormandPrince", 5),
    "bdf": ("BDF", 1),
}


def _unit(name, value):
    return validation.check_float(name, value, 0.0, 1.0, exclusive_minimum=True)


def _coefficients(name, value):
    try:
        values = [validation.check_float(f"{name}[{i}]", v) for i, v in enumerate(value)]
    except TypeError:
        raise validation.ArgumentTypeError(
            f"`{name}` must be a list of 5 numbers. Received: {name}={value!r}") from None
    if len(values) != 5:
        raise ValueError(f"`{name}` must be a list of 5 numbers. Received: {name}={value!r}")
    return tuple(values)


_COMMON_OPTIONS = {
    "safety_factor": _unit,
    "min_step_size_factor": lambda n, v: validation.check_float(
        n, v, 0.0, 1.0, exclusive_minimum=True, exclusive_maximum=True),
    "max_step_size_factor": lambda n, v: validation.check_float(n, v, 1.0, exclusive_minimum=True),
    "validate_args": validation.check_bool,
}
_OPTIONS = {
    "dormand_prince": dict(_COMMON_OPTIONS),
    "bdf": {
        **_COMMON_OPTIONS,
        "max_order": lambda n, v: validation.check_int(n, v, 1, 5),
        "max_num_newton_iters": validation.positive_int,
        "newton_tol_factor": validation.positive_float,
        "newton_step_size_factor": _unit,
        "bdf_coefficients": _coefficients,
        "evaluate_jacobian_lazily": validation.check_bool,
    },
}
_RESERVED = ("rtol", "atol", "first_step_size", "max_num_steps")


class TFPSolver(base.ODESolver):
    """Adapter for ``tfp.math.ode.DormandPrince`` and ``tfp.math.ode.BDF``.

    Args:
        method: ``"dormand_prince"`` or ``"bdf"``.
        **options: options of the TFP solver's constructor, checked here:
            ``safety_factor``, ``min_step_size_factor``,
            ``max_step_size_factor``, ``validate_args``; for BDF also
            ``max_order`` (1-5), ``max_num_newton_iters``,
            ``newton_tol_factor``, ``newton_step_size_factor``,
            ``bdf_coefficients``, ``evaluate_jacobian_lazily``. ``rtol``,
            ``atol``, ``first_step_size`` and ``max_num_steps`` come from ``odeint``.

    Example:
        >>> ki.ops.odeint(fn, y0, times, solver={"name": "bdf", "max_order": 3})
    """

    adaptive = True
    differentiable = False

    def __init__(self, method="dormand_prince", **options):
        if method not in _METHODS:
            raise ValueError(
                f"`method` must be one of {sorted(_METHODS)}. Received: method={method!r}")
        reserved = sorted(set(_RESERVED) & set(options))
        if reserved:
            raise ValueError(
                f"Pass {reserved} to odeint, not to the solver. Received: "
                f"{ {k: options[k] for k in reserved} }")
        known = _OPTIONS[method]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"Unknown options of TFP's {method!r} solver: {unknown}. Valid: "
                             f"{sorted(known)}. Received: { {k: options[k] for k in unknown} }")
        self.method = method
        self.name = "bdf" if method == "bdf" else "tfp_dopri5"
        self.options = {k: known[k](k, v) for k, v in options.items()}
        self.order = _METHODS[method][1]

    def get_config(self):
        options = {k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()}
        return {"method": self.method, **options}

    def integrate(self, fn, y0, times, options, *, error_mask=None, first_step=None, f0=None,
                  dense=False, event_fn=None, step_fn_wrapper=None, jump_times=None):
        rtol, atol = options.rtol, options.atol
        dtype = times.dtype
        t0, t_end = times[0], times[-1]
        nfe = tf.constant(0, tf.int32)
        if f0 is None:
            f0 = fn(t0, y0)
            nfe += 1
        first_step, extra = resolve_first_step(first_step, fn, t0, y0, f0, self.order, rtol,
                                               atol)
        nfe += extra
        finite = state_ops.all_finite(f0) & state_ops.all_finite(y0)
        num_y = len(y0)

        if self.method == "bdf":
            unknown = [y.shape for y in y0 if not y.shape.is_fully_defined()]
            if unknown:
                # TFP's Newton iteration squeezes a vector of unknown length to an
                # unknown rank, and its while loop then rejects the changed shape.
                raise ValueError(
                    "TFP's 'bdf' solver needs a state of static shape, so a model using "
                    "it cannot be traced for an unknown batch size (as SavedModel export "
                    "does); use 'dopri5' or 'tfp_dopri5' there. Received: state shape "
                    f"{unknown[0]}")
            guard = _guarded_dynamics
        else:
            # Dormand-Prince never differentiates the dynamics inside its loop, and a
            # custom gradient there breaks loading an exported SavedModel.
            guard = _masked_dynamics

        def guarded(t, state):
            return guard(fn, t, list(state[:num_y]))

        def run():
            import tensorflow_probability as tfp

            solver_cls = getattr(tfp.math.ode, _METHODS[self.method][0])
            solver = solver_cls(rtol=rtol, atol=atol, first_step_size=first_step,
                                max_num_steps=options.max_num_steps, **self.options)
            clock = tf.zeros([], y0[0].dtype)
            results = solver.solve(guarded, t0, list(y0) + [clock], solution_times=times)
            diag = results.diagnostics
            states = list(results.states)
            failed_for = tf.cast(states[-1][-1], dtype)
            status = tf.where(diag.status < 0, Status.FAILED,
                              tf.where(failed_for > 0, Status.NON_FINITE, Status.SUCCESS))
            reached = tf.where(failed_for > 0, t_end - failed_for, t_end)
            nfe = tf.cast(diag.num_ode_fn_evaluations, tf.int32)
            return states[:num_y], nfe, status, reached

        def fail():
            # Non-finite at t0: answer without entering TFP's loop.
            nan_states = [
                tf.fill(tf.concat([tf.shape(times), tf.shape(y)], 0),
                        tf.constant(float("nan"), y.dtype)) for y in y0
            ]
            return nan_states, tf.constant(0, tf.int32), tf.constant(Status.NON_FINITE), t0

        states, tfp_nfe, status, reached = tf.cond(finite, run, fail)
        for s, y in zip(states, y0):
            s.set_shape(tf.TensorShape([None]).concatenate(y.shape))
        # A failed solve's outputs are NaN (as with our solvers), not the frozen state.
        states = [tf.where(tf.equal(status, Status.SUCCESS), s,
                           tf.fill(tf.shape(s), tf.constant(float("nan"), s.dtype)))
                  for s in states]
        unknown = tf.constant(0, tf.int32)  # TFP does not report step counts.
        stats = base.SolveStats(nfe + tfp_nfe, unknown, unknown, status, reached,
                                tf.zeros([], dtype))
        return base.SolveResult(states, stats, None, None)


def _mask(f, y):
    """``(f and the failure clock's rate, 0 and 1 where not finite; ok)``."""
    ok = state_ops.all_finite(f) & state_ops.all_finite(y)
    out = [tf.where(ok, v, tf.zeros_like(v)) for v in f]
    return out + [tf.where(ok, tf.zeros([], y[0].dtype), tf.ones([], y[0].dtype))], ok


def _masked_dynamics(fn, t, y):
    """``fn(t, y)`` and the failure clock's rate; 0 (and 1) where not finite."""
    return _mask([tf.convert_to_tensor(v) for v in fn(t, list(y))], y)[0]


def _guarded_dynamics(fn, t, y):
    """``_masked_dynamics`` whose vector-Jacobian product is guarded the same way, so
    BDF's Newton iterations see a finite (zero) Jacobian where the dynamics fail."""

    @tf.custom_gradient
    def guarded(*y):
        with tf.GradientTape() as tape:
            tape.watch(y)
            f = [tf.convert_to_tensor(v) for v in fn(t, list(y))]
        out, ok = _mask(f, y)

        def grad(*upstream, variables=None):
            # TFP differentiates the dynamics only for BDF's Jacobian, with respect to
            # the state; the parameters' gradients come from our adjoint, not from here.
            vjps = tape.gradient(f, y, output_gradients=list(upstream[: len(f)]),
                                 unconnected_gradients=tf.UnconnectedGradients.ZERO)
            vjps = [tf.where(ok & tf.math.is_finite(v), v, tf.zeros_like(v)) for v in vjps]
            if variables:
                return vjps, [tf.zeros(v.shape, v.dtype) for v in variables]
            return vjps

        return out, grad

    return guarded(*y)


def _tfp_solver(method):
    def make(**options):
        return TFPSolver(method, **options)

    return make


base.ODE_SOLVERS.add("tfp_dopri5", _tfp_solver("dormand_prince"), TFPSolver)
base.ODE_SOLVERS.add("bdf", _tfp_solver("bdf"), TFPSolver)
