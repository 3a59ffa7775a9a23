"""What ``odeint`` returns: the states, the statistics, the events and the dense solution."""

import numpy as np
import tensorflow as tf

from keras_implicit.solvers import events as events_lib


class ODEResult:
    """The result of ``odeint``.

    Attributes:
        states: the state at every requested time, in the structure of ``y0``
            with a leading time axis.
        times: the requested times.
        stats: an ``ODEStats``.
        event_times: with ``event_fn``, ``(batch,)``: each sample's event
            time, ``times[-1]`` where its event did not fire; else ``None``.
        event_states: the states at the event times (structure of ``y0``,
            batch-first), the final state where the event did not fire.
        event_fired: ``(batch,)`` bool.
    """

    def __init__(self, states, times, stats, events=None, evaluate_fn=None):
        self.states = states
        self.times = times
        self.stats = stats
        self.event_times = None if events is None else events.times
        self.event_states = None if events is None else events.states
        self.event_fired = None if events is None else events.fired
        self._evaluate = evaluate_fn

    @property
    def dense(self):
        """Whether ``evaluate`` is available (``odeint(..., dense=True)``)."""
        return self._evaluate is not None

    def evaluate(self, t):
        """The state at any time(s) ``t`` within the solved span, from the dense solution.

        Args:
            t: a scalar or a 1-D tensor of times (the results then get a
                leading axis of its length). Times outside the span are clipped to it;
                past the time a failed solve reached, the state is NaN.

        Returns:
            The state in the structure of ``y0``. Differentiable with
            ``Backprop`` and ``Checkpointed``; with events, samples are held at
            their event state after their event time.

        Raises:
            ValueError: if the solve was not run with ``dense=True``.
        """
        if self._evaluate is None:
            raise ValueError("`evaluate` needs the dense solution: call odeint(..., dense=True). "
                             "Received: dense=False")
        shape = tf.TensorShape(t.shape if hasattr(t, "shape") else np.shape(t))
        if shape.rank is not None and shape.rank > 1:  # it was flattened, silently
            raise ValueError(f"`t` must be a scalar or a 1-D tensor of times. Received: t of "
                             f"shape {shape}")
        return self._evaluate(t)

    def __repr__(self):
        return f"ODEResult(times={self.times!r}, stats={self.stats!r})"


def held_at_events(values, t, event_times, event_states, fired):
    """``values`` at time(s) ``t`` with each fired sample held at its event state after it.

    ``values`` and ``event_states`` are flat lists; ``t`` is a scalar or has a
    leading axis (then ``values`` do too); times are in the solve's coordinate.
    """
    if event_times is None:
        return values
    t = tf.convert_to_tensor(t, event_times.dtype)
    if t.shape.rank == 0:
        held = fired & (event_times <= t)
        return [events_lib.batch_where(held, s, v) for s, v in zip(event_states, values)]
    held = fired[None, :] & (event_times[None, :] <= t[:, None])  # (T, batch)
    out = []
    for s, v in zip(event_states, values):
        mask = tf.reshape(held, tf.concat([tf.shape(held), tf.ones([tf.rank(v) - 2], tf.int32)],
                                          0))
        out.append(tf.where(mask, tf.broadcast_to(s[None], tf.shape(v)), v))
    return out
