"""How ``odeint`` differentiates a solve: gradient strategies as small objects that do the work.

``odeint`` prepares an :class:`ODEProblem` (flat state, solve-coordinate
times, the solver and its options) and hands it to the strategy's
``integrate``, which runs the forward solve and defines its gradient:

- :class:`Backprop` (``"backprop"``): differentiate through the solver's own
  operations: the exact gradient of the discretisation; memory grows with the
  number of steps.
- ``Adjoint`` (``"adjoint"``, in ``ops.adjoint``): the continuous adjoint,
  solved backwards in time with memory independent of the number of steps.
- ``Checkpointed`` (``"checkpointed"``, in ``ops.checkpointed``): the exact
  gradient of the discretisation, as ``Backprop``, keeping only the loop's state
  at each step (or at ``checkpoints``) and replaying the steps, for one extra
  forward pass.

A strategy is registered by name in ``ODE_GRADIENTS`` (and so with Keras,
through ``keras_implicit.serialization``): a new one subclasses
:class:`ODEGradient` and implements ``integrate``.
"""

import collections

import tensorflow as tf

from keras_implicit.ops.stats import ODEStats
from keras_implicit.solvers import dense as dense_lib
from keras_implicit.solvers.registry import Configured, Registry


class ODEProblem(collections.namedtuple("ODEProblem", [
        "fn", "y0", "params", "times", "solver", "solver_options", "first_step", "event_fn",
        "dense", "jump_times", "dynamics_wrapper", "step_fn_wrapper", "solve_wrapper",
        "on_backward", "on_failure", "compiled", "time_sign", "state_dtype"],
        defaults=(None,))):
    """A prepared solve, as ``odeint`` hands it to a gradient strategy.

    Attributes:
        fn: ``fn(t, y, params) -> dy/dt`` on flat lists, in the solve's time
            coordinate (times increase).
        y0, params: flat lists of tensors; the gradient must reach both (and
            every trainable variable ``fn`` reads).
        times: strictly increasing 1-D tensor of output times.
        solver: an ``ODESolver``; solver_options: its ``SolverOptions``.
        first_step: first step size or ``None`` (automatic).
        event_fn: ``event_fn(t, y) -> (batch,)`` on flat states, or ``None``.
        dense: whether to keep the dense solution.
        jump_times: 1-D tensor of jump times (solve coordinate) or ``None``.
        dynamics_wrapper, step_fn_wrapper, solve_wrapper: compile the
            dynamics / the solver's trial step / a whole solve (``ops.jit``), or ``None``.
        on_backward: called with the ``ODEStats`` after a backward solve.
        on_failure: ``"raise"``, ``"warn"`` or ``"ignore"`` (backward solves).
        compiled: the name of the compiled path, for the statistics.
        time_sign: +1, -1 or a scalar tensor: the caller's time is
            ``time_sign * t`` (for messages).
        state_dtype: the caller's state dtype (``y0`` is in the solve's,
            float32 for half precision), or ``None``: a float16 backward solve
            that overflows gives NaN gradients (``failure.backward_overflow``).
    """

    __slots__ = ()

    def dynamics(self, params):
        """``fn`` wrapped as the compile policy says, with ``params`` bound."""
        fn = self.fn if self.dynamics_wrapper is None else self.dynamics_wrapper(self.fn)

        def bound(t, y):
            return fn(t, y, params)

        return bound

    def solve(self, fn, y0=None, times=None, **overrides):
        """Runs the problem's solver on ``fn`` (a ``SolveResult``); keywords override options."""
        arguments = dict(first_step=self.first_step, dense=self.dense, event_fn=self.event_fn,
                         jump_times=self.jump_times)
        options = overrides.pop("solver_options", self.solver_options)
        arguments.update(overrides)
        return self.integrate(fn, list(self.y0 if y0 is None else y0),
                              self.times if times is None else times, options, **arguments)

    def integrate(self, fn, y0, times, options, **arguments):
        """``solver.integrate`` with the plan's step compilation, or compiled whole."""
        def run(y0, times):
            return self.solver.integrate(fn, list(y0), times, options,
                                         step_fn_wrapper=self.step_fn_wrapper, **arguments)

        if self.solve_wrapper is None:
            return run(list(y0), times)
        static_times = tf.get_static_value(times)
        if static_times is None:
            return self.solve_wrapper(run)(list(y0), times)
        # Known times become constants of the compiled program, which XLA folds into the
        # loop: a small dense solve (14 evaluations) inside a loop took 0.080 ms instead of
        # 0.113 ms with the times passed in.
        return self.solve_wrapper(
            lambda y0: run(y0, tf.constant(static_times, times.dtype)))(list(y0))


def differentiable_outputs(result):
    """The tensors of a ``SolveResult`` a custom gradient differentiates, as a flat list:
    the states, then the event times and states, then the dense coefficients."""
    outputs = list(result.states)
    if result.events is not None:
        outputs += [result.events.times] + list(result.events.states)
    if result.dense is not None:
        outputs += list(result.dense.coefficients)
    return outputs


def split_cotangents(result, upstream):
    """The upstream gradients of ``differentiable_outputs(result)``, split as it joined
    them: ``(states, event_times, event_states, dense)``. ``event_times`` /
    ``event_states`` are ``None`` without events and ``dense`` without the dense
    solution; each gradient is ``None`` where none arrived."""
    num_y = len(result.states)
    states, rest = list(upstream[:num_y]), list(upstream[num_y:])
    event_times = event_states = None
    if result.events is not None:
        event_times, event_states, rest = rest[0], rest[1:1 + num_y], rest[1 + num_y:]
    dense = rest[:num_y] if result.dense is not None else None
    return states, event_times, event_states, dense


def zeros_where_none(grads, values):
    """``grads`` as tensors, with zeros like the matching ``values`` where one is ``None``."""
    return [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
            for g, v in zip(grads, values)]


def with_differentiable_outputs(result, outputs):
    """``result`` with its differentiable tensors taken from ``outputs`` (the custom
    gradient's outputs, in ``differentiable_outputs``' order); the rest of the event and
    dense records carries no gradient."""
    num_y = len(result.states)
    states, rest = list(outputs[:num_y]), list(outputs[num_y:])
    events = result.events
    if events is not None:
        events = events._replace(times=rest[0], states=rest[1:1 + num_y],
                                 fired=tf.stop_gradient(events.fired),
                                 slopes=[tf.stop_gradient(s) for s in events.slopes])
        rest = rest[1 + num_y:]
    dense = result.dense
    if dense is not None:
        dense = dense_lib.DenseSolution(tf.stop_gradient(dense.starts),
                                        tf.stop_gradient(dense.sizes), rest[:num_y],
                                        tf.stop_gradient(dense.end), dense.complete)
    return result._replace(states=states, events=events, dense=dense)


class ODEGradient(Configured):
    """Base class of the gradient strategies of ``odeint``.

    Subclasses implement ``integrate(problem) -> (SolveResult, ODEStats)``
    (flat states, solve-coordinate times) and ``get_config``.
    """

    name = None

    def check(self, solver):
        """Raises ``ValueError`` if this strategy cannot work with ``solver``."""

    def compiles_whole(self, solver):
        """Whether a solve with ``solver`` differentiated this way compiles inside one XLA
        program (a training step under ``jit_compile=True``)."""
        return solver.differentiable

    def integrate(self, problem):
        raise NotImplementedError


ODE_GRADIENTS = Registry("ODE gradient strategy", ODEGradient, "gradient")


def require_differentiable(strategy, solver):
    if not solver.differentiable:
        raise ValueError(
            f"The solver {solver.name!r} cannot be differentiated through its operations (TFP "
            f"solvers differentiate only by an adjoint). Use gradient='adjoint' or a solver "
            f"among 'dopri5', 'bosh3', 'rk4', 'midpoint', 'euler'. Received: "
            f"gradient={strategy.name!r}, solver={solver.name!r}")


@ODE_GRADIENTS.register("backprop")
class Backprop(ODEGradient):
    """Backpropagation through the solver's operations (needs a differentiable solver).

    The exact gradient of the discretisation (step sizes are constants);
    memory grows with the number of steps.

    Example:
        >>> ki.ops.odeint(fn, y0, t, gradient=ki.ops.Backprop())
    """

    name = "backprop"

    def check(self, solver):
        require_differentiable(self, solver)

    def compiles_whole(self, solver):
        # An adaptive loop has no static bound XLA could size its tape with.
        return solver.differentiable and not solver.adaptive

    def integrate(self, problem):
        result = problem.solve(problem.dynamics(problem.params))
        return result, ODEStats.from_solve(result.stats, compiled=problem.compiled)


def get(identifier, argument="gradient"):
    """An ``ODEGradient`` from ``"adjoint"``, ``"backprop"``, ``"checkpointed"``, a config
    dict or an instance."""
    return ODE_GRADIENTS.get(identifier, argument)
