"""What every ODE solver shares: the interface, its statistics and status codes.

A solver integrates ``dy/dt = fn(t, y)`` where ``y`` is a flat list of tensors
and ``times`` is a strictly increasing 1-D tensor (``ops.odeint`` flattens
nested states and turns backward-in-time problems into forward ones before it
calls a solver). It returns the states at every entry of ``times`` (each with
a leading time axis) and a :class:`SolveStats`.
"""

import collections

import tensorflow as tf

RUNNING = -1
SUCCESS = 0
MAX_NUM_STEPS_REACHED = 1
NON_FINITE = 2
STEP_SIZE_TOO_SMALL = 3
FAILED = 4

STATUS_MESSAGES = {
    SUCCESS: "success",
    MAX_NUM_STEPS_REACHED: "the solver took max_num_steps steps before reaching the end time; "
    "the dynamics may be stiff (try solver='bdf') or diverging, or max_num_steps is too small",
    NON_FINITE: "the state or its derivative became NaN or Inf",
    STEP_SIZE_TOO_SMALL: "the step size underflowed (the dynamics are too stiff or singular "
    "for the tolerances)",
    FAILED: "the solver reported a failure",
}


class SolveStats(
    collections.namedtuple(
        "SolveStats",
        ["num_fn_evals", "num_accepted_steps", "num_rejected_steps", "status", "final_time",
         "next_step_size"],
    )
):
    """Statistics of one solve, all scalar tensors.

    Attributes:
        num_fn_evals: int32, evaluations of the dynamics (NFE).
        num_accepted_steps: int32.
        num_rejected_steps: int32 (always 0 for fixed-grid solvers).
        status: int32, one of ``SUCCESS``, ``MAX_NUM_STEPS_REACHED``,
            ``NON_FINITE``, ``STEP_SIZE_TOO_SMALL``, ``FAILED``.
        final_time: the time the solve reached.
        next_step_size: the step size the solver would try next (used to warm
            start the next interval of an adjoint solve); 0 for fixed grids.
    """

    __slots__ = ()


def add_stats(a, b):
    """Sums the counters of two solves; keeps ``b``'s status if ``a`` succeeded."""
    status = tf.where(tf.equal(a.status, SUCCESS), b.status, a.status)
    return SolveStats(
        a.num_fn_evals + b.num_fn_evals,
        a.num_accepted_steps + b.num_accepted_steps,
        a.num_rejected_steps + b.num_rejected_steps,
        status,
        b.final_time,
        b.next_step_size,
    )


class ODESolver:
    """Base class of the ODE solvers. Subclasses set the class attributes.

    Attributes:
        name: registry name (``"dopri5"``...).
        adaptive: whether the solver chooses its own steps from ``rtol``/``atol``.
        differentiable: whether backpropagating through ``solve`` gives the
            gradient of the discretisation (``gradient="backprop"`` needs it).
        supports_error_mask: whether step control can leave components out of
            the error norm (the adjoint seminorm of Kidger et al. 2021).
    """

    name = None
    adaptive = False
    differentiable = True
    supports_error_mask = False

    def solve(self, fn, y0, times, *, rtol, atol, num_steps=None, max_num_steps=10_000,
              error_mask=None, first_step=None, f0=None):
        """Integrates ``fn`` from ``times[0]`` through ``times[-1]``.

        Args:
            fn: ``fn(t, y) -> dy/dt``, ``y`` a flat list of tensors.
            y0: flat list of floating tensors, the state at ``times[0]``.
            times: strictly increasing 1-D tensor of output times.
            rtol, atol: tolerances (adaptive solvers).
            num_steps: number of steps over ``[times[0], times[-1]]``
                (fixed-grid solvers).
            max_num_steps: bound on accepted + rejected steps.
            error_mask: list of bools, one per state tensor: which tensors
                count in the error norm. ``None`` means all.
            first_step: initial step size; ``None`` selects it automatically.
            f0: ``fn(times[0], y0)`` if the caller already has it.

        Returns:
            ``(states, stats)``: a list of tensors of shape ``[len(times), ...]``
            and a :class:`SolveStats`.
        """
        raise NotImplementedError

    def get_config(self):
        """The solver as a dict that ``solvers.get`` turns back into it."""
        return {"name": self.name}

    def __repr__(self):
        options = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({options})"
