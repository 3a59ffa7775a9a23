"""What every ODE solver shares: the interface, the result of a solve and its statistics.

A solver integrates ``dy/dt = fn(t, y)`` where ``y`` is a flat list of tensors
and ``times`` is a strictly increasing 1-D tensor of the *control dtype*
(``state.control_dtype``: float32 for float16/bfloat16 states, else the
state's dtype).
``ops.odeint`` flattens nested states and turns backward-in-time problems into
forward ones before it calls a solver. ``integrate`` returns a
:class:`SolveResult`: the states at every entry of ``times`` (each with a
leading time axis) and a :class:`SolveStats`, and optionally the dense output
and the events.
"""

import collections

import tensorflow as tf

from keras_implicit import validation
from keras_implicit.solvers.registry import Configured, Registry
from keras_implicit.solvers.status import Status


class SolveStats(
    collections.namedtuple(
        "SolveStats",
        ["num_fn_evals", "num_accepted_steps", "num_rejected_steps", "status", "final_time",
         "next_step_size", "num_event_steps"],
        defaults=[None],
    )
):
    """Statistics of one solve, all scalar tensors.

    Attributes:
        num_fn_evals: int32, evaluations of the dynamics (NFE).
        num_accepted_steps: int32.
        num_rejected_steps: int32 (always 0 for fixed-grid solvers).
        status: int32, a :class:`Status` value.
        final_time: the time the solve reached (where it failed, if it did).
        next_step_size: the step size the solver would try next: the last
            *full* step's proposal, never a step shortened to land on an end
            time (the adjoint warm-starts the next interval with it); 0 for
            fixed grids.
        num_event_steps: int32, accepted steps in which an event was located
            (``None`` for solves without events).
    """

    __slots__ = ()


class SolveResult(
        collections.namedtuple("SolveResult", ["states", "stats", "dense", "events"])):
    """What ``ODESolver.integrate`` returns.

    Attributes:
        states: list of ``[len(times), ...]`` tensors.
        stats: a :class:`SolveStats`.
        dense: with ``dense=True``, a ``DenseSolution`` (the per-step
            interpolants); else ``None``.
        events: with an ``event_fn``, an ``EventResult``; else ``None``.
    """

    __slots__ = ()


class SolverOptions(
        collections.namedtuple(
            "SolverOptions", ["rtol", "atol", "num_steps", "max_num_steps", "step_control"])):
    """The numeric options of one solve (validated by ``ops``; ``_replace`` to vary them).

    Attributes:
        rtol, atol: tolerances of adaptive solvers (floats).
        num_steps: total steps of fixed-grid solvers over ``[times[0], times[-1]]``
            (an int, or an int32 tensor for one interval of an adjoint solve).
        max_num_steps: bound on accepted + rejected steps (int).
        step_control: a ``StepController`` (adaptive solvers) or ``None`` (the default one).
    """

    __slots__ = ()

    @classmethod
    def make(cls, rtol=1e-3, atol=1e-3, num_steps=None, max_num_steps=10_000,
             step_control=None):
        return cls(rtol, atol, num_steps, max_num_steps, step_control)


class ODESolver(Configured):
    """Base class of the ODE solvers.

    Subclasses set the class attributes and implement ``integrate``; to make
    a solver usable by name and saveable in ``.keras`` files, implement
    ``get_config`` (constructor arguments) and register the class with
    ``ki.solvers.register(name)``.

    Attributes:
        name: registry name (``"dopri5"``...).
        adaptive: whether the solver chooses its own steps from ``rtol``/``atol``.
        differentiable: whether backpropagating through a solve gives the
            gradient of the discretisation (``Backprop`` and ``Checkpointed``
            need it).
        supports_error_mask: whether step control can leave components out of
            the error norm (the adjoint seminorm of Kidger et al. 2021).
        elementwise: whether the solver's arithmetic on each state tensor is the
            same elementwise whatever the tensors' partition, apart from the error
            norm (its step control's; an error mask can leave tensors out of it).
            The adjoint then carries the parameter adjoints as one flat vector.
        reports_next_step: whether ``SolveStats.next_step_size`` is the solver's
            proposal for its next step (positive after a solve that did not
            fail). The adjoint's backward solve with the same solver then starts
            each interval with it, passed to ``integrate`` as an
            ``initial_step.WarmStart`` (``initial_step.resolve_first_step``
            resolves it).
        supports_events, supports_dense, supports_step_control: whether
            ``integrate`` takes ``event_fn``, ``dense=True`` and a
            ``step_control``.
    """

    name = None
    adaptive = False
    differentiable = True
    supports_error_mask = False
    elementwise = False
    reports_next_step = False
    supports_events = False
    supports_dense = False
    supports_step_control = False

    def integrate(self, fn, y0, times, options, *, error_mask=None, first_step=None, f0=None,
                  dense=False, event_fn=None, step_fn_wrapper=None):
        """Integrates ``fn`` from ``times[0]`` through ``times[-1]``.

        Args:
            fn: ``fn(t, y) -> dy/dt``, ``y`` a flat list of tensors.
            y0: flat list of floating tensors, the state at ``times[0]``.
            times: strictly increasing 1-D tensor of output times (control dtype).
            options: a :class:`SolverOptions`.
            error_mask: list of bools, one per state tensor: which tensors
                count in the error norm. ``None`` means all.
            first_step: initial step size; ``None`` (or a tensor <= 0 at run
                time) selects it automatically.
            f0: ``fn(times[0], y0)`` if the caller already has it.
            dense: keep every step's interpolant (adaptive solvers).
            event_fn: ``event_fn(t, y) -> (batch,)``: stop each sample where
                it changes sign (adaptive solvers).
            step_fn_wrapper: compiles the solver's step function (e.g. with
                XLA); ``None`` runs it as it is.

        Returns:
            A :class:`SolveResult`.
        """
        raise NotImplementedError

    def solve(self, fn, y0, times, *, rtol=1e-3, atol=1e-3, num_steps=None,
              max_num_steps=10_000, error_mask=None, first_step=None, f0=None,
              step_control=None):
        """``integrate`` with keyword options; returns ``(states, stats)``."""
        options = SolverOptions.make(rtol, atol, num_steps, max_num_steps, step_control)
        result = self.integrate(fn, list(y0), times, options, error_mask=error_mask,
                                first_step=first_step, f0=f0)
        return result.states, result.stats

    def check_options(self, num_steps, max_num_steps):
        """Raises ``ValueError`` on options this solver cannot use (called by ``ops``)."""

    def backward_num_steps(self, num_steps, times, interval):
        """``num_steps`` for the adjoint solve of ``[times[interval], times[interval + 1]]``.

        The adjoint solves one interval between output times at a time, and
        must discretise it as the forward solve did. Adaptive solvers ignore
        ``num_steps``.
        """
        return num_steps


ODE_SOLVERS = Registry("ODE solver", ODESolver, "solver")


def register(name=None):
    """Registers an ``ODESolver`` subclass under ``name`` (usable by name, saveable).

    Example:
        >>> @ki.solvers.register("my_solver")
        ... class MySolver(ki.solvers.ODESolver):
        ...     def integrate(self, fn, y0, times, options, **kwargs): ...
    """
    return ODE_SOLVERS.register(name)


def get(identifier, argument="solver"):
    """An ``ODESolver`` from a name, a config dict or an instance (see ``Registry.get``)."""
    return ODE_SOLVERS.get(identifier, argument)


def add_stats(a, b):
    """Sums the counters of two solves; keeps ``a``'s status and time if it failed."""
    failed = tf.not_equal(a.status, Status.SUCCESS)
    return SolveStats(
        a.num_fn_evals + b.num_fn_evals,
        a.num_accepted_steps + b.num_accepted_steps,
        a.num_rejected_steps + b.num_rejected_steps,
        tf.where(failed, a.status, b.status),
        tf.where(failed, a.final_time, b.final_time),
        b.next_step_size,
    )


def check_max_num_steps(max_num_steps):
    return validation.positive_int("max_num_steps", max_num_steps)
