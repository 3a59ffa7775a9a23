"""Statistics of a solve as the ops return them: one base, one type per family.

Both families report a forward solve and, once a gradient is taken through an
implicit backward solve (the adjoint, the implicit function theorem), that
solve's statistics too. Values are scalar tensors; ``None`` where a quantity
does not apply (no backward solve yet, or none at all).
"""

import tensorflow as tf

from keras_implicit.solvers.status import Status


class SolveStatistics:
    """Base: named statistics of a forward solve and, later, of its backward solve.

    Subclasses list their forward and backward field names in ``FORWARD`` and
    ``BACKWARD`` and build themselves from a solver's own statistics.
    """

    FORWARD = ()
    BACKWARD = ()

    def __init__(self, **forward):
        for name in self.FORWARD:
            setattr(self, name, forward.get(name))
        for name in self.BACKWARD:
            setattr(self, name, None)
        #: Which compiled path ran (``ops.jit``): set by the op, a Python string.
        self.compiled = forward.get("compiled")

    def set_backward(self, **backward):
        for name in self.BACKWARD:
            if name in backward:
                setattr(self, name, backward[name])

    @property
    def succeeded(self):
        """Whether the forward solve succeeded (a bool tensor)."""
        return tf.equal(self.status, Status.SUCCESS)

    def as_dict(self):
        names = self.FORWARD + self.BACKWARD
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def __repr__(self):
        def show(v):
            return v.numpy().item() if hasattr(v, "numpy") else v

        body = ", ".join(f"{k}={show(v)}" for k, v in self.as_dict().items())
        return f"{type(self).__name__}({body})"


class ODEStats(SolveStatistics):
    """Statistics of an ODE solve (scalar tensors).

    Attributes:
        forward_nfe: evaluations of the dynamics in the forward solve.
        accepted_steps, rejected_steps: steps of the forward solve (the TFP
            adapters report 0: TFP does not count them).
        status: a ``ki.ops.Status`` value (0 = success).
        final_time: the time the forward solve reached.
        event_steps: with events, the number of steps in which an event was
            located (``None`` without).
        backward_nfe, backward_accepted_steps, backward_rejected_steps,
            backward_status: the adjoint solve's, filled in when a gradient is
            taken with ``Adjoint`` (``None`` before; with ``Backprop`` or
            ``Checkpointed`` they stay ``None``: no ODE is solved backwards).
        compiled: which path ``jit`` chose (``"none"``, ``"dynamics"``,
            ``"step"`` or ``"solve"``).
    """

    FORWARD = ("forward_nfe", "accepted_steps", "rejected_steps", "status", "final_time",
               "event_steps")
    BACKWARD = ("backward_nfe", "backward_accepted_steps", "backward_rejected_steps",
                "backward_status")

    @classmethod
    def from_solve(cls, stats, compiled=None):
        """From a solver's ``SolveStats`` (``odeint`` maps ``final_time`` to the caller's
        time coordinate)."""
        return cls(forward_nfe=stats.num_fn_evals, accepted_steps=stats.num_accepted_steps,
                   rejected_steps=stats.num_rejected_steps, status=stats.status,
                   final_time=stats.final_time, event_steps=stats.num_event_steps,
                   compiled=compiled)

    def set_backward_solve(self, stats):
        self.set_backward(backward_nfe=stats.num_fn_evals,
                          backward_accepted_steps=stats.num_accepted_steps,
                          backward_rejected_steps=stats.num_rejected_steps,
                          backward_status=stats.status)


class FixedPointStats(SolveStatistics):
    """Statistics of a fixed-point solve (scalar tensors).

    Attributes:
        forward_iterations: int32, evaluations of ``fn`` by the forward solver.
        abs_residual, rel_residual: the forward solve's final residuals
            ``||fn(z) - z||`` and ``||fn(z) - z|| / ||fn(z)||``, for the
            batch's worst sample (in the stopping norm).
        status: a ``ki.ops.Status`` value: 0 converged, 1 ``max_iter``
            reached, 2 non-finite residual.
        converged: bool, ``status == 0``.
        backward_iterations, backward_abs_residual, backward_rel_residual,
            backward_status: filled in when a gradient is taken with
            ``Implicit`` (the linear solve of the implicit function theorem).
            With ``Phantom``, ``backward_iterations`` is the number of unrolled
            steps and ``backward_status`` is 0; with ``Unrolled`` they stay ``None``.
    """

    FORWARD = ("forward_iterations", "abs_residual", "rel_residual", "status", "converged")
    BACKWARD = ("backward_iterations", "backward_abs_residual", "backward_rel_residual",
                "backward_status")

    @classmethod
    def from_solve(cls, stats, compiled=None):
        return cls(forward_iterations=stats.iterations, abs_residual=stats.abs_residual,
                   rel_residual=stats.rel_residual, status=stats.status,
                   converged=stats.converged, compiled=compiled)

    def set_backward_solve(self, stats):
        self.set_backward(backward_iterations=stats.iterations,
                          backward_abs_residual=stats.abs_residual,
                          backward_rel_residual=stats.rel_residual,
                          backward_status=stats.status)
