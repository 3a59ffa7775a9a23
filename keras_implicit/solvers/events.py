"""Terminal events, per sample: stop a sample where ``event_fn(t, y)`` changes sign.

``EventTracker`` runs inside an adaptive solver's loop. After each accepted
step it evaluates ``g = event_fn(t_new, y_new)`` (shape ``(batch,)``); where
``g`` changed sign (or reached 0) since the last accepted step, the root is
located on the step's interpolating polynomial in ``theta`` (false position,
safeguarded by bisection) to the time dtype's epsilon, not by shortening
steps. A sample whose event fired is frozen at its event state (its dynamics
are masked to 0); the solve ends when every sample has fired, or at the end
time. ``event_fn`` is called with ``t`` of shape ``(batch,)`` during root
finding, so it must broadcast ``t`` against the state (``t - y[:, 0]`` does;
a scalar ``t`` is passed otherwise).

Gradients through the event time under backpropagation (the implicit function
theorem, ``dt*/dθ = -(dg/dθ at fixed t) / (dg/dt)``) come from a zero-valued
correction ``-(G - stop_gradient(G)) / stop_gradient(dg/dt)`` added to the
located time, with ``G = event_fn(t*, y(t*))`` differentiable through the
step's polynomial; the event state gets ``f* · (that correction)``. The
adjoint computes the same from the stored event quantities (``ops.adjoint``).
"""

import collections

import tensorflow as tf

from keras_implicit.solvers import interpolation
from keras_implicit.solvers import state as state_ops


class EventResult(
        collections.namedtuple("EventResult", ["times", "states", "fired", "slopes"])):
    """Per sample: ``times`` (batch,), ``states`` (flat list, batch-first), ``fired`` (bool)
    and ``slopes``, ``dy/dt`` at the event (flat list, constant; for the adjoint).

    Samples whose event did not fire report the end time and the final state.
    """

    __slots__ = ()


def batch_where(mask, a, b):
    """``a`` where the per-sample ``mask`` (batch,) holds, else ``b`` (batch-first tensors)."""
    mask = tf.reshape(mask, tf.concat([tf.shape(mask), tf.ones([tf.rank(a) - 1], tf.int32)], 0))
    return tf.where(mask, a, b)


def _per_sample(theta, like):
    """``theta`` (batch,) shaped to broadcast against a batch-first tensor."""
    return tf.reshape(tf.cast(theta, like.dtype),
                      tf.concat([tf.shape(theta), tf.ones([tf.rank(like) - 1], tf.int32)], 0))


def _polynomials_at(coefficients, theta):
    """Each tensor's step polynomial at a per-sample ``theta`` (batch,)."""
    return [interpolation.evaluate([c], _per_sample(theta, c[0]))[0] for c in coefficients]


class EventTracker:
    """Loop-side event detection for one solve.

    Args:
        event_fn: ``event_fn(t, y) -> (batch,)`` with ``y`` a flat list of
            batch-first tensors.
        dtype: the control dtype (of times).
    """

    def __init__(self, event_fn, dtype):
        self.event_fn = event_fn
        self.dtype = dtype

    def evaluate(self, t, y):
        g = self.event_fn(t, y)
        if g is None:
            raise ValueError("`event_fn` must return one floating value per sample, shape "
                             "(batch,). Received: None")
        g = tf.convert_to_tensor(g)
        if not g.dtype.is_floating:
            raise TypeError(f"`event_fn` must return floating values of shape (batch,). "
                            f"Received: dtype {g.dtype.name}")
        if g.shape.rank is not None and g.shape.rank != 1:
            raise ValueError(f"`event_fn` must return one value per sample, shape (batch,). "
                             f"Received: shape {g.shape} for a state of shape {y[0].shape}")
        batch = y[0].shape[:1]
        if not g.shape.is_compatible_with(batch):
            raise ValueError(f"`event_fn` must return one value per sample, shape (batch,). "
                             f"Received: shape {g.shape} for a state of shape {y[0].shape}")
        return tf.cast(g, self.dtype)

    def initial_state(self, t0, y0):
        g0 = self.evaluate(t0, y0)
        batch = tf.shape(g0)[0]
        return {"g": g0, "fired": tf.zeros([batch], tf.bool),
                "times": tf.zeros([batch], self.dtype), "states": [tf.zeros_like(y) for y in y0],
                "slopes": [tf.zeros_like(y) for y in y0], "steps": tf.constant(0, tf.int32)}

    def mask(self, fn, state):
        """``fn`` with the derivative of every fired sample set to 0 (it stays at its event)."""
        fired = state["fired"]

        def masked(t, y):
            return [batch_where(fired, tf.zeros_like(f), f) for f in fn(t, y)]

        return masked

    def hold(self, state, time, values):
        """``values`` at ``time``, fired samples held at their event state from their event on."""
        held = state["fired"] & (state["times"] <= time)
        return [batch_where(held, s, v) for s, v in zip(state["states"], values)]

    def all_fired(self, state):
        return tf.reduce_all(state["fired"]) & (tf.size(state["fired"]) > 0)

    def failed(self, state):
        """Whether ``event_fn`` gave NaN at an accepted state of a sample whose event has not
        fired (no sign change can be read from it)."""
        return tf.reduce_any(~state["fired"] & tf.math.is_nan(state["g"]))

    def update(self, state, accept, t, h, t_new, y_new, coefficients):
        """After a trial step: locates the events of the accepted step.

        Returns ``(state, y_new)`` with newly fired samples of ``y_new`` set to
        their event state.
        """

        def located():
            g_new = self.evaluate(t_new, y_new)
            # A NaN at the step's end may follow a root inside the step (g = log(y) past
            # y = 1 and y = 0): it is bisected as the other side, and fires only if the
            # bracket closes on a sign change, not on NaN. An Inf has a sign.
            crossing = (~state["fired"] & ~tf.math.is_nan(state["g"])
                        & tf.not_equal(state["g"], 0.0)
                        & (tf.equal(g_new, 0.0) | (tf.sign(g_new) != tf.sign(state["g"]))))
            return g_new, crossing

        g_new, fired_here = tf.cond(
            accept, located,
            lambda: (state["g"], tf.zeros_like(state["fired"])))

        def fire():
            theta, closed_on_nan = self._bisect(state["g"], t, h, coefficients, fired_here)
            crossing = fired_here & ~closed_on_nan  # a NaN of g_new: ``failed`` reports it
            times, states, slopes = self._differentiable_event(theta, t, h, coefficients)
            new = {
                "g": g_new, "fired": state["fired"] | crossing,
                "times": tf.where(crossing, times, state["times"]),
                "states": [batch_where(crossing, s, old)
                           for s, old in zip(states, state["states"])],
                "slopes": [batch_where(crossing, s, old)
                           for s, old in zip(slopes, state["slopes"])],
                "steps": state["steps"] + 1,
            }
            return new, [batch_where(crossing, s, y) for s, y in zip(states, y_new)]

        def keep():
            return {**state, "g": tf.where(accept, g_new, state["g"])}, list(y_new)

        return tf.cond(tf.reduce_any(fired_here), fire, keep)

    def _g_at(self, theta, t, h, coefficients):
        return self.evaluate(t + theta * h, _polynomials_at(coefficients, theta))

    def _bisect(self, g_start, t, h, coefficients, crossing):
        """``theta`` in (0, 1] of each crossing sample's sign change, to ``eps`` in theta.

        The Illinois variant of false position (superlinear on a smooth ``g``:
        about 6-10 evaluations of the step polynomial instead of bisection's 54
        in float64), with every third iteration a bisection, so that the bracket
        at least halves every three iterations whatever ``g`` does. Stops per
        sample when the bracket is narrower than ``eps`` or ``g`` is exactly 0.
        Returns ``(theta, closed_on_nan)``: the bracket's upper end, where the
        sign has changed, and per sample whether it closed on a NaN of ``g``
        instead (a NaN counts as the other side: no sign change was found).
        """
        eps = tf.constant(float(state_ops.finfo(self.dtype).eps), self.dtype)
        lower = tf.zeros_like(g_start)
        upper = tf.ones_like(g_start)
        g_upper = tf.stop_gradient(self._g_at(upper, t, h, coefficients))
        last_side = tf.zeros_like(g_start)  # +1: the upper end moved last, -1: the lower

        def done(lower, upper):
            return ~crossing | (upper - lower <= eps)

        def body(k, lower, upper, g_lower, g_upper, last_side):
            finished = done(lower, upper)
            denominator = g_upper - g_lower
            secant = upper - g_upper * (upper - lower) / tf.where(
                tf.equal(denominator, 0.0), tf.ones_like(denominator), denominator)
            middle = 0.5 * (lower + upper)
            inside = (secant > lower) & (secant < upper) & tf.math.is_finite(secant)
            trial = tf.where(inside & tf.not_equal(k % 3, 2), secant, middle)
            g_trial = tf.stop_gradient(self._g_at(trial, t, h, coefficients))
            zero = tf.equal(g_trial, 0.0)
            # The root lies between trial and upper when g(trial) has g(lower)'s sign.
            same = ~zero & (tf.sign(g_trial) == tf.sign(g_lower))
            new_lower = tf.where(same | zero, trial, lower)
            new_upper = tf.where(same, upper, trial)
            new_g_lower = tf.where(same, g_trial, g_lower)
            new_g_upper = tf.where(same, g_upper, g_trial)
            # Illinois: an end kept twice in a row has its g halved, so the next secant
            # moves it too.
            side = tf.where(same, -tf.ones_like(last_side), tf.ones_like(last_side))
            new_g_upper = tf.where(same & (last_side < 0), 0.5 * new_g_upper, new_g_upper)
            new_g_lower = tf.where(~same & (last_side > 0), 0.5 * new_g_lower, new_g_lower)
            return (k + 1,) + tuple(tf.where(finished, old, new) for old, new in (
                (lower, new_lower), (upper, new_upper), (g_lower, new_g_lower),
                (g_upper, new_g_upper), (last_side, side)))

        limit = 3 * (int(state_ops.finfo(self.dtype).nmant) + 2)
        _, _, upper, _, g_upper, _ = tf.while_loop(
            lambda k, lower, upper, *_: (k < limit) & ~tf.reduce_all(done(lower, upper)), body,
            (tf.constant(0), lower, upper, g_start, g_upper, last_side),
            maximum_iterations=limit)
        theta = tf.stop_gradient(tf.where(crossing, upper, tf.ones_like(upper)))
        return theta, crossing & tf.math.is_nan(g_upper)

    def _differentiable_event(self, theta, t, h, coefficients):
        """Event times and states with the implicit-function-theorem gradient attached."""
        t_star = tf.stop_gradient(t + theta * h)
        states = _polynomials_at(coefficients, theta)
        g_star = self.evaluate(t_star, states)
        constant = [[tf.stop_gradient(x) for x in c] for c in coefficients]
        with tf.GradientTape() as tape:
            times = tf.identity(t_star)
            tape.watch(times)
            g_moved = self.evaluate(times, _polynomials_at(constant, (times - t) / h))
        # dg/dt along the solution: one value per sample (samples do not interact).
        g_dot = tf.stop_gradient(tape.gradient(g_moved, times))
        safe = tf.where(tf.equal(g_dot, 0.0), tf.ones_like(g_dot), g_dot)
        shift = -(g_star - tf.stop_gradient(g_star)) / safe
        slopes = [interpolation.derivative([c], _per_sample(theta, c[0]), h)[0] for c in constant]
        states = [s + f * _per_sample(shift, s) for s, f in zip(states, slopes)]
        return t_star + shift, states, slopes

    def finish(self, state, t_end, y_final):
        fired = state["fired"]
        times = tf.where(fired, state["times"], tf.fill(tf.shape(fired), t_end))
        states = [batch_where(fired, s, y) for s, y in zip(state["states"], y_final)]
        return EventResult(times, states, fired, state["slopes"])
