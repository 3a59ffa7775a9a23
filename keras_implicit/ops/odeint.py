"""``odeint``: solve an ODE and differentiate the solution. Pure TensorFlow."""

import numpy as np
import tensorflow as tf

from keras_implicit.ops import closures
from keras_implicit.ops import failure
from keras_implicit.ops import jit as jit_lib
from keras_implicit.ops import ode_result
from keras_implicit.ops.ode_gradients import ODEProblem
from keras_implicit.ops.ode_options import ODEOptions
from keras_implicit.solvers import state as state_ops


@tf.autograph.experimental.do_not_convert
def odeint(fn, y0, times, *, solver="dopri5", rtol=1e-3, atol=1e-3, num_steps=None,
           gradient="adjoint", params=None, max_num_steps=10_000, first_step=None,
           step_control=None, event_fn=None, dense=False, on_failure="raise", on_backward=None,
           jit_dynamics="auto"):
    """Integrates ``dy/dt = fn(t, y)`` and returns the state at ``times``.

    Args:
        fn: ``fn(t, y) -> dy/dt`` with ``y`` in the structure of ``y0``, or
            ``fn(t, y, params)`` when ``params`` is given. ``t`` is a scalar
            tensor (float32 for half-precision states).
        y0: the initial state at ``times[0]``: a floating tensor or a nested
            structure (tuple, list, dict) of floating tensors of one dtype.
            Half-precision states (float16, bfloat16) are integrated in
            float32, with ``fn`` evaluated in their own dtype.
        times: 1-D, strictly increasing or strictly decreasing (integration
            backwards in time), at least two entries. The first is the initial time.
        solver: a name (``"dopri5"``, ``"bosh3"``, ``"rk4"``, ``"midpoint"``,
            ``"euler"``, ``"bdf"``, ``"tfp_dopri5"``), a config dict or an ``ODESolver``.
        rtol, atol: relative and absolute tolerances of adaptive solvers.
        num_steps: fixed-grid solvers only: the total number of steps over
            ``[times[0], times[-1]]`` (not per unit time), at most
            ``max_num_steps``. Each interval between output times gets its
            share, rounded up.
        gradient: ``"adjoint"`` (continuous adjoint, memory independent of the
            number of steps), ``"backprop"`` (through the solver's operations),
            ``"checkpointed"`` (the same gradient as ``"backprop"``, keeping
            the state at each step and replaying the steps) or an
            ``ops.Adjoint(...)`` / ``ops.Backprop()`` / ``ops.Checkpointed(...)``
            instance.
        params: optional nested structure of tensors that ``fn`` receives as
            its third argument; the gradient reaches them. Tensors that ``fn``
            merely closes over receive no gradient under ``"adjoint"`` (as with
            TFP); variables that ``fn`` reads always do.
        max_num_steps: bound on accepted + rejected steps of one solve.
        first_step: first step of adaptive solvers, a positive number (or a
            scalar tensor, chosen automatically where it is <= 0 at run time);
            ``None`` chooses it automatically (Hairer–Wanner).
        step_control: the step-size controller of adaptive solvers:
            ``None`` (``ki.solvers.IController()``), ``"pid"``, a config dict or a
            ``StepController`` (``min_step``, ``max_step``, ``jump_times``).
        event_fn: terminal events: ``event_fn(t, y) -> (batch,)``; each sample
            stops where it changes sign (see ``ki.solvers.events``). ``t`` may be
            a ``(batch,)`` tensor: broadcast it against the state.
        dense: keep every step's interpolant, for ``ODEResult.evaluate(t)``
            (memory: one polynomial per step).
        on_failure: ``"raise"`` (default), ``"warn"`` or ``"ignore"``: what a
            failed solve (forward or adjoint) does; the status is in ``stats``.
        on_backward: called with the ``ODEStats`` once the backward (adjoint)
            solve has run, e.g. to record its NFE into variables.
        jit_dynamics: ``"auto"`` (default), ``True`` or ``False``: how much of
            the solve XLA compiles (``ki.ops.jit.plan_ode`` states the rule).
            ``"auto"`` decides when the call is traced (``tf.function``,
            ``fit``; eager calls run uncompiled): convolutional dynamics are
            compiled alone (the solver loop stays in TensorFlow's graph), or
            not at all if they compile their other parts themselves (the
            ODE-Net's blocks), other dynamics under the adjoint get the whole
            solve compiled, and dynamics XLA cannot compile fall back with
            one warning.
            ``True`` compiles the dynamics (and the adjoint's vector-Jacobian
            product) and fails loudly; ``False`` compiles nothing.
            ``stats.compiled`` says which path ran. A compilation costs about
            a second per input shape.

    Returns:
        An ``ODEResult``: ``states`` (structure of ``y0``, leading time axis of
        length ``len(times)``), ``stats``, the events and ``evaluate``.

    Raises:
        ValueError / TypeError: on bad arguments, naming the argument and value.
        tf.errors.InvalidArgumentError: with ``on_failure="raise"``, when a
            solve fails (``max_num_steps`` exceeded, NaN/Inf state, step size
            underflow), eagerly or when the graph runs. Under
            ``jit_compile=True`` the failure is reported in ``stats.status`` and
            the outputs past the failure are NaN instead.

    Example:
        >>> A = tf.constant([[0.0, 1.0], [-1.0, 0.0]])
        >>> result = odeint(lambda t, y: tf.linalg.matvec(A, y), tf.constant([1.0, 0.0]),
        ...                 tf.linspace(0.0, 3.0, 4))
        >>> result.states.shape
        TensorShape([4, 2])
    """
    options = ODEOptions(solver, rtol, atol, num_steps, gradient, max_num_steps, step_control,
                         jit_dynamics, on_failure)
    if not callable(fn):
        raise TypeError(f"`fn` must be callable as fn(t, y). Received: fn={fn!r}")
    options.check_features(event_fn, dense, first_step)

    flat_y0 = [_as_state_tensor(y) for y in tf.nest.flatten(y0)]
    if not flat_y0:
        raise ValueError(f"`y0` must contain at least one tensor. Received: y0={y0!r}")
    dtype = flat_y0[0].dtype
    mixed = sorted({y.dtype.name for y in flat_y0})
    if len(mixed) > 1:
        raise TypeError(f"All tensors of `y0` must share one dtype. Received dtypes: {mixed}")
    # The solver runs in the control dtype (float32 for half precision); fn in the state's.
    solve_dtype = state_ops.control_dtype(dtype)
    times, direction = _prepare_times(times, solve_dtype)
    if not options.solver.adaptive:
        _check_grid(times, options.num_steps, solve_dtype)
    jumps = _jump_times(options.step_control, times, solve_dtype)
    flat_params = ([tf.convert_to_tensor(p) for p in tf.nest.flatten(params)]
                   if params is not None else [])

    checked_fn = _structured_fn(fn, y0, flat_y0, params)
    static_sign = not tf.is_tensor(direction)
    sign = direction if static_sign else tf.cast(direction, solve_dtype)

    def oriented(sign):
        forward = not tf.is_tensor(sign) and sign == 1

        def flat_fn(s, y, p):
            t = s if forward else sign * s
            f = checked_fn(t, [tf.cast(v, dtype) for v in y], p)
            f = [tf.cast(v, solve_dtype) for v in f]
            return f if forward else [tf.cast(sign, v.dtype) * v for v in f]

        return flat_fn

    flat_fn = oriented(sign)

    def flat_event_fn(s, y):
        return event_fn(sign * s, tf.nest.pack_sequence_as(y0, [tf.cast(v, dtype) for v in y]))

    solve_y0 = [tf.cast(y, solve_dtype) for y in flat_y0]
    # The probe lowers the dynamics outside this graph: a direction known only at run
    # time (a tensor of it) cannot be captured there, and does not change what compiles.
    planned = flat_fn if static_sign else oriented(1.0)
    plan_args = (tf.zeros([], solve_dtype), solve_y0, flat_params)
    plan = jit_lib.plan_ode(options.jit_dynamics, options.solver, options.gradient, planned,
                            *plan_args, dense=dense, static_times=times.shape[0] is not None)
    if getattr(options.gradient, "name", None) in ("adjoint", "checkpointed"):
        closures.warn_watched_closures(  # the plan's own trace of the dynamics, if it has one
            plan.dynamics_wrapper(planned) if plan.kind == "none" else planned, plan_args,
            "`fn`",
            "Pass them as `params` (fn(t, y, params)), read the variables inside fn, or "
            "use gradient='backprop'.")
    problem = ODEProblem(
        fn=flat_fn, y0=solve_y0, params=flat_params,
        times=times * sign if not (static_sign and sign == 1) else times,
        solver=options.solver,
        solver_options=options.solver_options(options.resolvable_rtol(dtype)),
        first_step=first_step, event_fn=None if event_fn is None else flat_event_fn, dense=dense,
        jump_times=None if jumps is None else jumps * sign,
        dynamics_wrapper=plan.dynamics_wrapper, step_fn_wrapper=plan.step_fn_wrapper,
        solve_wrapper=plan.solve_wrapper, on_backward=on_backward,
        on_failure=options.on_failure, compiled=plan.kind, time_sign=sign, state_dtype=dtype)
    result, stats = options.gradient.integrate(problem)
    forward_in_time = static_sign and sign == 1
    if not forward_in_time:
        stats.final_time = sign * stats.final_time
    flat_states = failure.report(
        stats.status, options.on_failure, "ode",
        f"odeint: the forward solve with solver {options.solver.name!r} failed",
        ["at time", stats.final_time], list(result.states))
    states = tf.nest.pack_sequence_as(y0, [tf.cast(s, dtype) for s in flat_states])
    events = None
    if result.events is not None:
        events = result.events._replace(
            times=sign * result.events.times,
            states=tf.nest.pack_sequence_as(y0, [tf.cast(s, dtype)
                                                 for s in result.events.states]))
    evaluate = None
    if result.dense is not None:
        evaluate = _evaluator(result, y0, dtype, sign)
    return ode_result.ODEResult(states, times, stats, events, evaluate)


def _evaluator(result, y0, dtype, sign):
    dense, events = result.dense, result.events

    def evaluate(t):
        s = sign * tf.cast(t, dense.starts.dtype)
        values = dense.evaluate(s)
        if events is not None:
            values = ode_result.held_at_events(values, s, events.times, events.states,
                                               events.fired)
        return tf.nest.pack_sequence_as(y0, [tf.cast(v, dtype) for v in values])

    return evaluate


def _check_grid(times, num_steps, dtype):
    """Refuses a fixed grid whose steps cannot move ``t`` in the time dtype (static times)."""
    static = tf.get_static_value(times)
    if static is None or num_steps is None:
        return
    static = np.asarray(static, np.float64)
    lengths = np.abs(np.diff(static))
    counts = np.maximum(np.ceil(lengths / lengths.sum() * num_steps - 1e-4), 1)
    sizes = lengths / counts
    numpy_dtype = tf.as_dtype(dtype).as_numpy_dtype
    start = np.maximum(np.abs(static[:-1]), np.abs(static[1:])).astype(numpy_dtype)
    if np.any(start + sizes.astype(numpy_dtype) <= start):
        raise ValueError(
            f"`num_steps`={num_steps} gives steps of {sizes.min():.3g}, too small to advance "
            f"the time in {tf.as_dtype(dtype).name} (times of this solve: {static.tolist()}). "
            f"Use fewer steps or a float64 state. Received: num_steps={num_steps}")


def _jump_times(step_control, times, dtype):
    """The controller's jump times as a tensor, checked against a static span."""
    if step_control is None or step_control.jump_times is None:
        return None
    jumps = np.asarray(step_control.jump_times, np.float64)
    static = tf.get_static_value(times)
    if static is not None:
        low, high = min(static[0], static[-1]), max(static[0], static[-1])
        outside = jumps[(jumps < low) | (jumps > high)]
        if outside.size:
            raise ValueError(
                f"`step_control.jump_times` must lie within the solve's span [{low:g}, "
                f"{high:g}]. Received: jump_times={list(step_control.jump_times)}")
    return tf.constant(jumps, dtype)


def _as_state_tensor(y):
    y = tf.convert_to_tensor(y)
    if not y.dtype.is_floating:
        raise TypeError(
            f"`y0` must be floating point (float16/bfloat16/32/64); cast integer data first. "
            f"Received: y0 with dtype={y.dtype.name}")
    return y


def _prepare_times(times, dtype):
    """Returns ``(times tensor, direction)``; direction is +1, -1 or a scalar tensor."""
    static = tf.get_static_value(times) if tf.is_tensor(times) else times
    if static is not None:
        try:
            static = np.asarray(static, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"`times` must be numbers. Received: times={times!r}") from None
        if static.ndim != 1 or static.shape[0] < 2:
            raise ValueError(
                f"`times` must be 1-D with at least two entries (the initial time first). "
                f"Received: times={static.tolist()}")
        if not np.all(np.isfinite(static)):
            raise ValueError(f"`times` must be finite. Received: times={static.tolist()}")
        steps = np.diff(static)
        if static[0] == static[-1]:
            raise ValueError(
                f"`times` must not start and end at the same time (t0 == t1). "
                f"Received: times={static.tolist()}")
        if not (np.all(steps > 0) or np.all(steps < 0)):
            raise ValueError(
                f"`times` must be strictly increasing or strictly decreasing. "
                f"Received: times={static.tolist()}")
        rounded = static.astype(tf.as_dtype(dtype).as_numpy_dtype)
        # TensorFlow's CPU kernels flush subnormal numbers to 0, times and their
        # differences alike: 5.9e-39 is float32's 0 there.
        tiny = np.finfo(rounded.dtype).tiny
        rounded = np.where(np.abs(rounded) < tiny, 0, rounded)
        gaps = np.diff(rounded) * np.sign(steps[0])
        if not np.all(np.where(np.abs(gaps) < tiny, 0, gaps) > 0):
            raise ValueError(
                f"`times` must stay strictly ordered in the solver's time dtype "
                f"{tf.as_dtype(dtype).name}; some are too close to tell apart. "
                f"Received: times={static.tolist()}")
        return tf.constant(static, dtype), (1 if steps[0] > 0 else -1)
    times = tf.cast(times, dtype)
    if times.shape.rank not in (None, 1) or (times.shape.rank == 1 and times.shape[0] is not None
                                             and times.shape[0] < 2):
        raise ValueError(f"`times` must be 1-D with at least two entries (the initial time "
                         f"first). Received: times with shape {times.shape}")
    with tf.control_dependencies([tf.debugging.assert_greater_equal(
            tf.size(times), 2, message="odeint: `times` must have at least two entries")]):
        times = tf.identity(times)
    direction = tf.sign(times[-1] - times[0])
    steps = (times[1:] - times[:-1]) * direction
    checks = [
        tf.debugging.assert_positive(
            steps, message="odeint: `times` must be strictly increasing or strictly decreasing"),
        tf.debugging.assert_all_finite(times, message="odeint: `times` must be finite"),
    ]
    with tf.control_dependencies(checks):
        times = tf.identity(times)
    return times, direction


def _structured_fn(fn, y0, flat_y0, params):
    """Wraps ``fn`` to take and return flat lists, checking what it returns."""
    shapes = [y.shape for y in flat_y0]
    dtype = flat_y0[0].dtype

    def flat_fn(t, flat_y, flat_params):
        y = tf.nest.pack_sequence_as(y0, flat_y)
        if params is None:
            out = fn(t, y)
        else:
            out = fn(t, y, tf.nest.pack_sequence_as(params, flat_params))
        if any(leaf is None for leaf in tf.nest.flatten(out)):
            raise ValueError(f"`fn` must return d(state)/dt, a tensor for each state tensor. "
                             f"Received: {out!r}")
        try:
            tf.nest.assert_same_structure(y0, out)
        except (ValueError, TypeError):
            def sketch(value):  # the structure, each tensor as "tensor"
                return tf.nest.map_structure(lambda _: "tensor", value) if tf.nest.is_nested(
                    value) else "a single tensor"
            raise ValueError(
                f"`fn` must return d(state)/dt in the structure of the state. Received: "
                f"{sketch(out)} for a state that is {sketch(y0)}") from None
        flat_out = [tf.convert_to_tensor(f) for f in tf.nest.flatten(out)]
        for f, shape in zip(flat_out, shapes):
            if not f.shape.is_compatible_with(shape):
                raise ValueError(
                    f"`fn` must return d(state)/dt with the shape of the state. "
                    f"Received: shape {f.shape} for a state of shape {shape}")
            if f.dtype != dtype:
                raise TypeError(
                    f"`fn` must return d(state)/dt with the dtype of the state. "
                    f"Received: dtype {f.dtype.name} for a state of dtype {dtype.name}")
        return [tf.ensure_shape(f, s) if not f.shape.is_fully_defined() else f
                for f, s in zip(flat_out, shapes)]

    return flat_fn
