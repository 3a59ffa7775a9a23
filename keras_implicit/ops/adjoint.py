"""The continuous adjoint method (Chen et al. 2018, eqs. 4–5) as a gradient strategy.

Forward: the solver runs without a tape; only the states at the requested
times are kept. Backward: from the last requested time to the first, the
augmented system

    dy/dt = f(t, y),   da/dt = -a^T df/dy,   da_theta/dt = -a^T df/dtheta

is integrated by the same solver, one interval between output times at a
time; at each output time the incoming gradient is added to ``a`` and ``y`` is
reset to the stored forward state. ``theta`` is every tensor in ``params`` and
every trainable variable the dynamics read. The memory is that of one solver
step, whatever the number of steps. Each interval starts from the previous
one's last full step size (the first from the forward solve's).

Events (terminal, per sample): a sample that stopped at ``t*`` with state
``y*`` is frozen after it, so its adjoint is constant there. At ``t*`` the
implicit function theorem turns the cotangent ``a`` of ``y*`` (with ``w`` that
of ``t*``) into ``a - ((a . f* + w) / (dg/dt)) dg/dy`` before the backward
solve carries it on, and ``-((a . f* + w) / (dg/dt)) dg/dtheta`` reaches the
event function's own variables. The backward solve lands exactly on every
event time (they are its jump times).

A non-finite cotangent (e.g. an overflowed loss scale under mixed precision)
gives non-finite gradients without solving, so that a loss-scale optimizer
skips the step, and so does a float16 backward solve that overflows mid-way
(``failure.backward_overflow``); other failed backward solves are reported
(``on_failure``).
"""

import tensorflow as tf

from keras_implicit import validation
from keras_implicit.ops import adjoint_events
from keras_implicit.ops import failure
from keras_implicit.ops import ode_gradients
from keras_implicit.ops.ode_gradients import ODE_GRADIENTS, ODEGradient
from keras_implicit.ops.stats import ODEStats
from keras_implicit.solvers import base as solver_base
from keras_implicit.solvers import events as events_lib
from keras_implicit.solvers import initial_step
from keras_implicit.solvers import state as state_ops
from keras_implicit.solvers.status import Status


@ODE_GRADIENTS.register("adjoint")
class Adjoint(ODEGradient):
    """Continuous adjoint sensitivities.

    Args:
        rtol, atol: tolerances of the backward solve; ``None`` uses the forward ones.
        seminorm: leave the parameter adjoints out of the backward solve's
            error norm (Kidger, Chen & Lyons 2021, "Hey, that's not an ODE").
            They are integrals of the other components, so controlling their
            error only costs steps; solvers without error masks (the TFP
            adapters) ignore this.
        solver: solver of the backward solve (name, config or ``ODESolver``);
            ``None`` uses the forward solver.
        max_num_steps: bound of the backward solve; ``None`` uses the forward one.
        normalize: solve for the cotangent divided by its RMS (the adjoint
            equations are linear), so that ``rtol``/``atol`` bound its error
            relative to its size. Without it the error control depends on the
            loss's scale: a mean over a large batch gives cotangents far below
            ``atol``, which then control nothing (as in torchdiffeq). Off by
            default: on the MNIST ODE block it cuts the gradient's error from
            5.7% to 1.7% but takes 3-7x more backward evaluations, and training
            the ODE-Net did not improve (README, "Gradients").

    Example:
        >>> ki.ops.odeint(fn, y0, t, gradient=ki.ops.Adjoint(rtol=1e-5, atol=1e-5))
    """

    name = "adjoint"

    def __init__(self, rtol=None, atol=None, seminorm=True, solver=None, max_num_steps=None,
                 normalize=False):
        self.rtol = validation.optional(validation.positive_float, "rtol", rtol)
        self.atol = validation.optional(validation.positive_float, "atol", atol)
        self.seminorm = validation.check_bool("seminorm", seminorm)
        self.solver = None if solver is None else solver_base.get(solver, "Adjoint(solver)")
        self.max_num_steps = validation.optional(validation.positive_int, "max_num_steps",
                                                 max_num_steps)
        self.normalize = validation.check_bool("normalize", normalize)

    def check(self, solver):
        if self.solver is not None and solver.adaptive != self.solver.adaptive:
            raise ValueError(
                f"The adjoint's solver must discretise like the forward solver (both adaptive "
                f"or both fixed-grid). Received: solver={solver.name!r}, "
                f"Adjoint(solver={self.solver.name!r})")

    def get_config(self):
        return {"rtol": self.rtol, "atol": self.atol, "seminorm": self.seminorm,
                "solver": None if self.solver is None else solver_base.ODE_SOLVERS.serialize(
                    self.solver),
                "max_num_steps": self.max_num_steps, "normalize": self.normalize}

    def integrate(self, problem):
        return _solve_with_adjoint(problem, self)


def _solve_with_adjoint(problem, adjoint):
    num_y, num_p = len(problem.y0), len(problem.params)
    backward_solver = adjoint.solver or problem.solver
    options = problem.solver_options
    backward_options = options._replace(
        rtol=adjoint.rtol or options.rtol, atol=adjoint.atol or options.atol,
        max_num_steps=adjoint.max_num_steps or options.max_num_steps)
    box = {}

    @tf.custom_gradient
    def forward(*inputs):
        ys, ps = list(inputs[:num_y]), list(inputs[num_y:])
        result = problem.solve(problem.dynamics(ps), y0=ys)
        stats = ODEStats.from_solve(result.stats, compiled=problem.compiled)
        box.update(result=result, stats=stats)
        outputs = ode_gradients.differentiable_outputs(result)

        @state_ops.floating_variables_only
        def grad_fn(*upstream, variables=None):
            variables = list(variables or [])
            grads = _backward(problem, adjoint, result, ps, variables, list(upstream),
                              backward_solver, backward_options, stats)
            inputs_grads = grads[: num_y + num_p]
            return (inputs_grads, grads[num_y + num_p:]) if variables else inputs_grads

        return outputs, grad_fn

    outputs = forward(*problem.y0, *problem.params)
    return ode_gradients.with_differentiable_outputs(box["result"], outputs), box["stats"]


def _cotangent_scale(a):
    """The largest RMS of the adjoint's tensors, or 1 where that is 0 or not finite."""
    scale = tf.reduce_max(tf.stack([state_ops.rms(tf.cast(x, tf.float64)) for x in a]))
    return tf.where((scale > 0) & tf.math.is_finite(scale), scale, tf.ones_like(scale))


def _backward(problem, adjoint, result, params, variables, upstream, solver, options, stats):
    """The gradients of ``y0``, ``params`` and ``variables`` (a flat list)."""
    grad_states, grad_event_times, grad_event_states, grad_dense = (
        ode_gradients.split_cotangents(result, upstream))
    grad_states = ode_gradients.zeros_where_none(grad_states, result.states)
    checks = []
    dense_cotangents = [g for g in grad_dense or [] if g is not None]
    if dense_cotangents:
        nonzero = tf.reduce_any(tf.stack([tf.reduce_any(tf.not_equal(g, 0))
                                          for g in dense_cotangents]))
        checks.append(_refuse_dense_gradient(nonzero))
    wrt = list(problem.y0) + list(params) + variables
    given = grad_states + [g for g in [grad_event_times] + list(grad_event_states or [])
                           if g is not None]
    finite = state_ops.all_finite(given)
    dtype = problem.times.dtype

    def solve():
        return _solve_backward(problem, adjoint, result, params, variables, grad_states,
                               grad_event_times, grad_event_states, solver, options)

    def skip():
        # A non-finite cotangent (an overflowed loss scale): non-finite gradients, no solve.
        zero = tf.constant(0, tf.int32)
        return ([tf.fill(tf.shape(x), tf.constant(float("nan"), x.dtype)) for x in wrt],
                (zero, zero, zero, tf.constant(Status.NON_FINITE), problem.times[0]))

    with tf.control_dependencies(checks):
        grads, (nfe, accepted, rejected, status, failed_at) = tf.cond(finite, solve, skip)
    for g, x in zip(grads, wrt):
        g.set_shape(x.shape)
    grads, reported = failure.backward_overflow(problem.state_dtype, finite, status, grads)
    grads = failure.report(
        reported, problem.on_failure, "ode",
        f"odeint: the backward (adjoint) solve with solver {solver.name!r} failed",
        ["at time", problem.time_sign * failed_at], grads)
    if problem.compiled in ("solve", "step"):
        # A tape through the compiled backward solve cannot leave XLA (TensorFlow failed
        # with "TensorList crossing the XLA/TF boundary"): say so where it is asked for.
        grads = [tf.raw_ops.PreventGradient(input=g, message=_SECOND_ORDER) for g in grads]
    stats.set_backward_solve(solver_base.SolveStats(nfe, accepted, rejected, status, failed_at,
                                                    tf.zeros([], dtype)))
    if problem.on_backward is not None:
        problem.on_backward(stats)
    return grads


_SECOND_ORDER = (
    "second derivatives through the adjoint are not supported when jit_dynamics compiled "
    "its backward solve (the paths 'solve' and 'step'); pass jit_dynamics=False for them")


def _refuse_dense_gradient(nonzero):
    message = ("odeint: the dense solution of an Adjoint solve is not differentiable (the "
               "adjoint keeps no steps); differentiate it with gradient=Backprop() or "
               "Checkpointed().")
    if tf.executing_eagerly():
        if bool(nonzero):
            raise tf.errors.InvalidArgumentError(None, None, message)
        return tf.no_op()
    return tf.debugging.Assert(tf.logical_not(nonzero), [message])


def _solve_backward(problem, adjoint, result, params, variables, grad_states, grad_event_times,
                    grad_event_states, solver, options):
    """Runs the backward solve; returns ``(grads, (nfe, accepted, rejected, status, time))``."""
    num_y, num_p = len(problem.y0), len(params)
    times, states = problem.times, result.states
    mask = None
    jumps = [] if problem.jump_times is None else [tf.reshape(problem.jump_times, [-1])]
    a_start = [g[-1] for g in grad_states]
    event_variable_grads = [tf.zeros(v.shape, v.dtype) for v in variables]
    if result.events is not None:
        grad_states, a_star, event_variable_grads, mask, event_jumps = (
            adjoint_events.event_cotangents(problem, result, variables, grad_states,
                                            grad_event_times, grad_event_states))
        a_start = [a + g[-1] for a, g in zip(a_star, grad_states)]
        jumps.append(event_jumps)
    # The backward solve runs in tau = -t: its jump times are the negated ones.
    backward_jumps = -tf.concat(jumps, 0) if jumps else None

    def augmented(tau, aug):
        y, a = aug[:num_y], aug[num_y: 2 * num_y]
        t = -tau
        with tf.GradientTape() as tape:
            tape.watch(y)
            local_params = [tf.identity(p) for p in params]
            tape.watch(local_params)
            f = problem.fn(t, y, local_params)
            if mask is not None:
                frozen = mask(t)
                f = [events_lib.batch_where(frozen, tf.zeros_like(v), v) for v in f]
        sources = y + local_params + variables
        vjps = tape.gradient(f, sources, output_gradients=a,
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)
        # Some gradients lose the static shape (a tf.py_function's has none); the loop
        # needs it back.
        vjps = [tf.ensure_shape(tf.convert_to_tensor(v), x.shape) for v, x in zip(vjps, sources)]
        f = [tf.ensure_shape(f_i, y_i.shape) for f_i, y_i in zip(f, y)]
        return [-f_i for f_i in f] + vjps[:num_y] + theta.pack(vjps[num_y:])

    dynamics = augmented if problem.dynamics_wrapper is None else problem.dynamics_wrapper(
        augmented)
    theta = _ParameterAdjoints(list(params) + list(variables), adjoint, solver)
    error_mask = None
    if solver.supports_error_mask:
        error_mask = [True] * (2 * num_y) + [not adjoint.seminorm] * theta.num_tensors
    first_step0, warm_start = _warm_start(result, solver, problem)
    num_times = tf.shape(times)[0]
    normalize = adjoint.normalize

    def interval(i, adj, first_step, nfe, accepted, rejected, status, failed_at):
        # Integrates from times[i] back to times[i - 1]. The adjoint equations are
        # linear in (a, a_theta): with `normalize` the solve runs on a / scale, so that
        # the tolerances act relative to the cotangent's size, whatever the loss's scale.
        y_i = [s[i] for s in states]
        a, totals = adj[:num_y], adj[num_y:]
        # An interval a failed forward solve did not reach (NaN states) that no loss
        # depends on (a zero cotangent) adds nothing: skipped, or its NaN would reach
        # the gradients of the outputs that were reached.
        unreached = tf.logical_not(state_ops.all_finite(y_i)) & tf.reduce_all(
            [tf.reduce_all(tf.equal(x, 0)) for x in a])
        return tf.cond(unreached, lambda: (i - 1, [x + g[i - 1] for x, g in zip(
            a, grad_states)] + totals, first_step, nfe, accepted, rejected, status, failed_at),
            lambda: integrate(i, y_i, a, totals, first_step, nfe, accepted, rejected, status,
                              failed_at))

    def integrate(i, y_i, a, totals, first_step, nfe, accepted, rejected, status, failed_at):
        scale = _cotangent_scale(a) if normalize else None
        aug0 = y_i + ([x / tf.cast(scale, x.dtype) for x in a] if normalize else a)
        aug0 += [tf.zeros_like(x) for x in totals] if normalize else totals
        local = options._replace(num_steps=solver.backward_num_steps(options.num_steps, times,
                                                                     i - 1))
        tau = tf.stack([-times[i], -times[i - 1]])
        out = problem._replace(solver=solver).integrate(
            dynamics, aug0, tau, local, error_mask=error_mask,
            first_step=warm_start(first_step) if solver.adaptive else None,
            jump_times=backward_jumps)
        st = out.stats
        final = [x[-1] for x in out.states]
        if normalize:
            final = final[:num_y] + [tf.cast(scale, x.dtype) * x for x in final[num_y:]]
            final = final[:2 * num_y] + [t + x for t, x in zip(totals, final[2 * num_y:])]
        a = [x + g[i - 1] for x, g in zip(final[num_y: 2 * num_y], grad_states)]
        ok = tf.equal(status, Status.SUCCESS)
        return (i - 1, a + final[2 * num_y:], st.next_step_size, nfe + st.num_fn_evals,
                accepted + st.num_accepted_steps, rejected + st.num_rejected_steps,
                tf.where(ok, st.status, status), tf.where(ok, -st.final_time, failed_at))

    adj0 = a_start + theta.zeros()
    zero = tf.constant(0, tf.int32)
    _, adj, _, nfe, accepted, rejected, status, failed_at = tf.while_loop(
        lambda i, *_: i > 0, interval,
        (num_times - 1, adj0, first_step0, zero, zero, zero, tf.constant(Status.SUCCESS),
         times[0]))
    theta_grads = theta.unpack(adj[num_y:])
    grads = adj[:num_y] + theta_grads[:num_p] + [
        g + e for g, e in zip(theta_grads[num_p:], event_variable_grads)]
    return grads, (nfe, accepted, rejected, status, failed_at)


class _ParameterAdjoints:
    """How the backward solve carries the adjoints of ``theta`` (``params`` and variables):
    as one flat vector where that changes no number, else one tensor each. It changes
    none where the solver is ``elementwise`` (our Runge-Kutta: the same arithmetic on each
    element) and no norm sees the parameters: a fixed grid, or adaptive steps under the
    seminorm (the norm is the maximum of each state tensor's RMS, so one vector would
    weigh the parameters differently without it). Each state tensor costs the adaptive step's
    graph about 110 ops (every stage's combination, the error estimate, the
    accept/reject choice); the ODE-Net block has ten parameter tensors, and one vector
    cut its backward loop's body from 1458 to 486 ops."""

    def __init__(self, tensors, adjoint, solver):
        self.tensors = tensors
        unmeasured = not solver.adaptive or (solver.supports_error_mask and adjoint.seminorm)
        self.flat = (solver.elementwise and unmeasured and len(tensors) > 1
                     and len({x.dtype for x in tensors}) == 1
                     and all(x.shape.is_fully_defined() for x in tensors))
        self.num_tensors = 1 if self.flat else len(tensors)

    def pack(self, tensors):
        """The state tensors for ``tensors`` (one per parameter)."""
        if not self.flat:
            return list(tensors)
        return [tf.concat([tf.reshape(x, [-1]) for x in tensors], 0)]

    def unpack(self, state):
        """One tensor per parameter from the state tensors."""
        if not self.flat:
            return list(state)
        parts = tf.split(state[0], [x.shape.num_elements() for x in self.tensors])
        return [tf.reshape(part, x.shape) for part, x in zip(parts, self.tensors)]

    def zeros(self):
        if self.flat:
            size = sum(x.shape.num_elements() for x in self.tensors)
            return [tf.zeros([size], self.tensors[0].dtype)]
        return [tf.zeros(x.shape, x.dtype) if x.shape.is_fully_defined() else tf.zeros_like(x)
                for x in self.tensors]


def _warm_start(result, solver, problem):
    """``(step, wrap)``: the backward solve's first step, and how each interval passes its
    start step to the solver. The same solver running backwards starts from the forward's
    last full step (the same time scales); if it reports its proposals
    (``ODESolver.reports_next_step``) they go as an ``initial_step.WarmStart``, which needs
    no automatic selection and so no conditional. Another solver starts from 0 (automatic)."""
    if solver is not problem.solver:
        return tf.zeros([], problem.times.dtype), (lambda step: step)
    wrap = initial_step.WarmStart if solver.reports_next_step else (lambda step: step)
    return tf.stop_gradient(result.stats.next_step_size), wrap
