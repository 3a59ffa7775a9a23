"""The continuous adjoint method (Chen et al. 2018, eqs. 4–5) as a custom gradient.

Forward: the solver runs without a tape; only the states at the requested
times are kept. Backward: from the last requested time to the first, the
augmented system

    dy/dt = f(t, y),   da/dt = -a^T df/dy,   da_theta/dt = -a^T df/dtheta

is integrated by the same solver, one interval between output times at a
time; at each output time the incoming gradient is added to ``a`` and ``y`` is
reset to the stored forward state. ``theta`` is every tensor in ``params`` and
every trainable variable the dynamics read. The memory is that of one
solver step, whatever the number of steps.
"""

import tensorflow as tf

from keras_implicit.ops import ode_result
from keras_implicit.ops.jit import maybe_jit
from keras_implicit.solvers import base
from keras_implicit.solvers import state as state_ops
from keras_implicit.solvers.fixed_grid import steps_per_interval


def solve_with_adjoint(flat_fn, y0, times, params, solver, options, adjoint, stats_box,
                       on_backward=None, first_step=None, jit_dynamics=False):
    """Solves forward with ``solver`` and defines the gradient by the adjoint.

    Args:
        flat_fn: ``flat_fn(t, y, params) -> dy/dt``, flat lists of tensors.
        y0: flat list of the initial state tensors.
        times: strictly increasing 1-D tensor.
        params: flat list of tensors the gradient must reach.
        solver: an ``ODESolver``.
        options: dict of ``rtol``, ``atol``, ``num_steps``, ``max_num_steps``.
        adjoint: an ``Adjoint`` strategy.
        stats_box: a one-element list; receives the ``ODEStats`` of the solve,
            whose backward fields are set when the gradient is computed.
        on_backward: called with the ``ODEStats`` after the backward solve.
        first_step: first step of the forward solve (None: automatic).
        jit_dynamics: compile the dynamics of the forward solve and the augmented
            dynamics of the backward solve with XLA.

    Returns:
        The flat list of states at ``times``.
    """
    num_y = len(y0)
    backward_solver = solver if adjoint.solver is None else _get_solver(adjoint.solver)
    backward_options = dict(options)
    for key in ("rtol", "atol", "max_num_steps"):
        if getattr(adjoint, key) is not None:
            backward_options[key] = getattr(adjoint, key)

    @tf.custom_gradient
    def forward(*inputs):
        ys, ps = list(inputs[:num_y]), list(inputs[num_y:])
        states, stats = solver.solve(maybe_jit(lambda t, y: flat_fn(t, y, ps), jit_dynamics),
                                     ys, times, first_step=first_step, **options)
        states = ode_result.assert_success(stats, solver.name, "forward", states)
        stats_box[0] = ode_result.ODEStats(stats)

        def grad_fn(*grad_states, variables=None):
            variables = list(variables or [])
            # The forward solve's last step size starts the backward solve (the adjoint
            # runs on the same time scales), saving the VJP that choosing it would cost.
            warm_start = stats.next_step_size if backward_solver is solver else None
            grads_y, grads_p, grads_v, backward_stats = _backward(
                flat_fn, states, grad_states, times, ps, variables, backward_solver,
                backward_options, adjoint.seminorm, num_y, warm_start, adjoint.normalize,
                jit_dynamics)
            grads = ode_result.assert_success(
                backward_stats, backward_solver.name, "backward (adjoint)",
                grads_y + grads_p + grads_v)
            stats_box[0].set_backward(backward_stats)
            if on_backward is not None:
                on_backward(stats_box[0])
            input_grads = grads[: num_y + len(ps)]
            if variables:
                return input_grads, grads[num_y + len(ps):]
            return input_grads

        return states, grad_fn

    return forward(*y0, *params)


def _get_solver(identifier):
    from keras_implicit.solvers import registry

    return registry.get(identifier, argument="Adjoint(solver)")


def _cotangent_scale(a):
    """The largest RMS of the adjoint's tensors, or 1 where that is 0 or not finite."""
    scale = tf.reduce_max(tf.stack([state_ops.rms(tf.cast(x, tf.float64)) for x in a]))
    return tf.where((scale > 0) & tf.math.is_finite(scale), scale, tf.ones_like(scale))


def _backward(flat_fn, states, grad_states, times, params, variables, solver, options,
              seminorm, num_y, first_step=None, normalize=False, jit=False):
    grad_states = [tf.zeros_like(s) if g is None else tf.convert_to_tensor(g)
                   for g, s in zip(grad_states, states)]
    num_p = len(params)
    wrt_count = num_y + num_p + len(variables)

    def augmented(tau, aug):
        # Time runs backwards: tau = -t, so every right-hand side changes sign.
        y, a = aug[:num_y], aug[num_y: 2 * num_y]
        with tf.GradientTape() as tape:
            tape.watch(y)
            local_params = [tf.identity(p) for p in params]
            tape.watch(local_params)
            f = flat_fn(-tau, y, local_params)
        vjps = tape.gradient(f, y + local_params + variables, output_gradients=a,
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)
        vjps = [tf.convert_to_tensor(v) for v in vjps]
        return [-f_i for f_i in f] + vjps

    error_mask = [True] * (2 * num_y) + [not seminorm] * (num_p + len(variables))
    if not solver.supports_error_mask:
        error_mask = None
    counts = None if solver.adaptive else steps_per_interval(times, options["num_steps"])
    dtype = times.dtype
    num_times = tf.shape(times)[0]

    def interval(i, adj, first_step, nfe, accepted, rejected, status):
        # Integrates from times[i] back to times[i - 1]. The adjoint equations are
        # linear in (a, a_theta): the solve runs on a / scale, so that the tolerances
        # act relative to the cotangent's size, whatever the loss's scale.
        y_i = [s[i] for s in states]
        a, totals = adj[:num_y], adj[num_y:]
        scale = _cotangent_scale(a) if normalize else None
        aug0 = y_i + ([x / tf.cast(scale, x.dtype) for x in a] if normalize else a)
        aug0 += [tf.zeros_like(x) for x in totals] if normalize else totals
        local = dict(options)
        if counts is not None:
            local["num_steps"] = counts[i - 1]
        tau = tf.stack([-times[i], -times[i - 1]])
        out, st = solver.solve(maybe_jit(augmented, jit), aug0, tau, error_mask=error_mask,
                               first_step=first_step if solver.adaptive else None, **local)
        final = [x[-1] for x in out]
        if normalize:
            final = final[:num_y] + [tf.cast(scale, x.dtype) * x for x in final[num_y:]]
            final = final[:2 * num_y] + [t + x for t, x in zip(totals, final[2 * num_y:])]
        a = [x + g[i - 1] for x, g in zip(final[num_y: 2 * num_y], grad_states)]
        adj = a + final[2 * num_y:]
        status = tf.where(tf.equal(status, base.SUCCESS), st.status, status)
        return (i - 1, adj, st.next_step_size, nfe + st.num_fn_evals,
                accepted + st.num_accepted_steps, rejected + st.num_rejected_steps, status)

    adj0 = [g[-1] for g in grad_states]
    adj0 += [tf.zeros_like(p) for p in params]
    adj0 += [tf.zeros(v.shape, v.dtype) for v in variables]
    zero = tf.constant(0, tf.int32)
    _, adj, _, nfe, accepted, rejected, status = tf.while_loop(
        lambda i, *_: i > 0,
        interval,
        (num_times - 1, adj0, tf.zeros([], dtype) if first_step is None else first_step,
         zero, zero, zero,
         tf.constant(base.SUCCESS, tf.int32)),
    )
    stats = base.SolveStats(nfe, accepted, rejected, status, times[0], tf.zeros([], dtype))
    assert len(adj) == wrt_count
    return adj[:num_y], adj[num_y: num_y + num_p], adj[num_y + num_p:], stats
