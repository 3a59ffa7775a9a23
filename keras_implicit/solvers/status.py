"""One status for every solve, ODE or fixed point: an ``IntEnum`` with a message per value.

Solvers return the status as an int32 tensor; ``Status(int(tensor))`` names it.
"""

import enum


class Status(enum.IntEnum):
    """How a solve ended.

    ``RUNNING`` is the loop state of a solve in progress and never returned.
    ``MAX_STEPS_REACHED`` covers both bounds, ``max_num_steps`` (ODE) and
    ``max_iter`` (fixed point).
    """

    RUNNING = -1
    SUCCESS = 0
    MAX_STEPS_REACHED = 1
    NON_FINITE = 2
    STEP_SIZE_TOO_SMALL = 3
    FAILED = 4
    EVENT_NON_FINITE = 5

    @property
    def message(self):
        return _MESSAGES[self]


_MESSAGES = {
    Status.RUNNING: "the solve is still running",
    Status.SUCCESS: "success",
    Status.MAX_STEPS_REACHED: "the solver used its whole budget of steps (max_num_steps) or "
                              "iterations (max_iter) before finishing",
    Status.NON_FINITE: "the state, its derivative or the residual became NaN or Inf",
    Status.STEP_SIZE_TOO_SMALL: "the step size underflowed (the dynamics are too stiff or "
                                "singular for the tolerances, or first_step is too small)",
    Status.FAILED: "the solver reported a failure",
    Status.EVENT_NON_FINITE: "the event function (event_fn) gave NaN for a sample whose "
                             "event had not fired",
}

# Where a family can say more about why a solve stopped.
HINTS = {
    "ode": {Status.MAX_STEPS_REACHED: "the dynamics may be stiff (try solver='bdf') or "
                                      "diverging, or max_num_steps is too small"},
    "fixed_point": {Status.MAX_STEPS_REACHED: "max_iter evaluations did not bring every "
                                              "sample's residual below tol",
                    Status.NON_FINITE: "the map may be non-contractive or diverging"},
}


def describe(status, family):
    """The message of ``status`` (an int) with the family's hint, for error messages."""
    status = Status(int(status))
    hint = HINTS.get(family, {}).get(status)
    return status.message if hint is None else f"{status.message}: {hint}"
