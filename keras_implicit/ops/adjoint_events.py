"""The adjoint's jump at each sample's terminal event (``ops.adjoint``).

At the event time ``t*`` of a sample, the implicit function theorem turns the
cotangent ``a`` of ``y*`` (with ``w`` that of ``t*``) into
``a - ((a . f* + w) / (dg/dt)) dg/dy`` before the backward solve carries it on, and
``-((a . f* + w) / (dg/dt)) dg/dtheta`` reaches the event function's own variables;
after ``t*`` the sample is frozen (``mask``).
"""

import tensorflow as tf


def _per_sample(mask, like):
    """A (batch,) or (T, batch) mask shaped to broadcast against ``like``."""
    extra = tf.rank(like) - tf.rank(mask)
    return tf.reshape(mask, tf.concat([tf.shape(mask), tf.ones([extra], tf.int32)], 0))


def _sum_per_sample(x):
    """Sums a batch-first tensor over all but its first axis."""
    return tf.reduce_sum(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1)


def event_cotangents(problem, result, variables, grad_states, grad_event_times,
                     grad_event_states):
    """The implicit-function-theorem correction at each sample's event.

    Returns ``(grad_states, a_star, variable_grads, mask, jumps)``: the output
    cotangents with those of held outputs removed (frozen samples carry them
    in ``a_star``), per state tensor the cotangent each sample enters the
    backward solve with (beyond ``grad_states[-1]``), the event function's
    contribution to the variables' gradients, the backward solve's freezing
    mask ``mask(t)`` and its jump times (the event times).
    """
    events = result.events
    fired = events.fired
    t_star = tf.stop_gradient(events.times)
    held = fired[None, :] & (t_star[None, :] <= problem.times[:, None])  # (T, batch)
    a_star = []
    for g, v in zip(grad_states, grad_event_states):
        collected = tf.reduce_sum(tf.where(_per_sample(held, g), g, tf.zeros_like(g)), axis=0)
        a_star.append(collected if v is None else collected + tf.convert_to_tensor(v))
    grad_states = [tf.where(_per_sample(held, g), tf.zeros_like(g), g) for g in grad_states]
    w = tf.zeros_like(t_star) if grad_event_times is None else grad_event_times
    y_star = [tf.stop_gradient(s) for s in events.states]
    with tf.GradientTape(persistent=True) as tape:
        times = tf.identity(t_star)
        tape.watch([times] + y_star)
        g = tf.cast(problem.event_fn(times, y_star), t_star.dtype)
    zero = tf.UnconnectedGradients.ZERO
    dg_dt = tape.gradient(g, times, unconnected_gradients=zero)
    dg_dy = tape.gradient(g, y_star, unconnected_gradients=zero)
    g_dot = dg_dt + tf.add_n([tf.cast(_sum_per_sample(d * f), g.dtype)
                              for d, f in zip(dg_dy, events.slopes)])
    a_dot_f = tf.add_n([tf.cast(_sum_per_sample(a * f), g.dtype)
                        for a, f in zip(a_star, events.slopes)])
    safe = tf.where(tf.equal(g_dot, 0.0), tf.ones_like(g_dot), g_dot)
    c = tf.where(fired, (a_dot_f + w) / safe, tf.zeros_like(safe))
    a_star = [a - tf.cast(_per_sample(c, a), a.dtype) * d for a, d in zip(a_star, dg_dy)]
    variable_grads = tape.gradient(g, variables, output_gradients=-c,
                                   unconnected_gradients=zero) if variables else []
    del tape
    mask = _time_mask(t_star, fired)
    # Samples without an event jump at the end time, which is no jump (a static shape).
    jumps = tf.where(fired, t_star, tf.fill(tf.shape(t_star), problem.times[-1]))
    return grad_states, a_star, [tf.convert_to_tensor(x) for x in variable_grads], mask, jumps


def _time_mask(event_times, fired):
    """``mask(t)``: the samples frozen at time ``t`` (their event is at or before ``t``)."""
    if event_times is None:
        return None
    return lambda t: fired & (event_times <= t)
