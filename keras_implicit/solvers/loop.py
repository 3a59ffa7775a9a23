"""A solver's loop as an object: initial state, one iteration, the end, and what it emits.

The differentiable solvers (``AdaptiveRungeKutta``, ``FixedGridRungeKutta``)
express a solve as a ``SolverLoop``: ``initial_core(y0)``, ``body(state)``
(one trial step), ``cond(state)`` and ``finish(state) -> SolveResult``. The
state is a dict of tensors (the *core*: time, step size, state, derivative,
counters, controller and event state) plus the ``tf.TensorArray``\\ s into
which iterations emit outputs (``ARRAYS``: the states at output times, the
dense solution). ``run`` drives the loop in one ``tf.while_loop``; gradient
strategies that replay parts of a solve (``ops.checkpointed``) use ``core`` /
``with_arrays`` to checkpoint the core and re-create the arrays.
"""

import tensorflow as tf

from keras_implicit.solvers.status import Status


class SolverLoop:
    """Base class of solver loops; subclasses implement the four methods.

    Attributes:
        max_iterations: a static bound on ``body`` calls (``max_num_steps``).
        differentiable_keys: keys of the core whose values carry gradients
            (the others are step sizes, counters and flags).
    """

    max_iterations = None
    differentiable_keys = ("y", "f")
    #: Keys of the state holding TensorArrays (or nested structures of them).
    ARRAYS = ("outputs",)

    def initial_core(self, y0):
        """The core state at the start of the solve (no arrays)."""
        raise NotImplementedError

    def initial_state(self, y0):
        """The loop's first state: the core, fresh arrays, and ``y0`` as the first output."""
        state = self.with_arrays(self.initial_core(y0))
        state["outputs"] = [ta.write(0, y) for ta, y in zip(state["outputs"], y0)]
        return state

    def body(self, state):
        raise NotImplementedError

    def cond(self, state):
        return tf.equal(state["status"], Status.RUNNING)

    def finish(self, state):
        raise NotImplementedError

    def fresh_arrays(self, state):
        """New, empty arrays for a replay that starts at ``state``'s core."""
        raise NotImplementedError

    def emitted(self, start, end):
        """The outputs a replay from core ``start`` to final state ``end`` wrote (a list)."""
        raise NotImplementedError

    @classmethod
    def core(cls, state):
        return {k: v for k, v in state.items() if k not in cls.ARRAYS}

    def with_arrays(self, core):
        return {**core, **self.fresh_arrays(core)}

    def run(self, state, max_iterations=None):
        """Runs ``body`` while ``cond`` holds (at most ``max_iterations`` times)."""
        (state,) = tf.while_loop(
            lambda s: self.cond(s), lambda s: (self.body(s),), (state,),
            maximum_iterations=self.max_iterations if max_iterations is None else max_iterations)
        return state
