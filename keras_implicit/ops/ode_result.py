"""What ``odeint`` returns, and the check that turns a failed solve into an error."""

import tensorflow as tf

from keras_implicit.solvers import base


class ODEStats:
    """Statistics of a solve (scalar int32 tensors).

    Attributes:
        forward_nfe: evaluations of the dynamics in the forward solve.
        accepted_steps, rejected_steps: steps of the forward solve (the TFP
            adapters report 0: TFP does not count them).
        status: 0 on success (a failed solve raises unless ``check=False``).
        backward_nfe, backward_accepted_steps, backward_rejected_steps,
            backward_status: the adjoint solve's, filled in when a gradient is
            taken with ``gradient="adjoint"`` (``None`` before; with
            ``"backprop"`` they stay ``None``: no ODE is solved backwards).
    """

    def __init__(self, forward):
        self.forward_nfe = forward.num_fn_evals
        self.accepted_steps = forward.num_accepted_steps
        self.rejected_steps = forward.num_rejected_steps
        self.status = forward.status
        self.backward_nfe = None
        self.backward_accepted_steps = None
        self.backward_rejected_steps = None
        self.backward_status = None

    def set_backward(self, backward):
        self.backward_nfe = backward.num_fn_evals
        self.backward_accepted_steps = backward.num_accepted_steps
        self.backward_rejected_steps = backward.num_rejected_steps
        self.backward_status = backward.status

    def as_dict(self):
        names = ["forward_nfe", "accepted_steps", "rejected_steps", "status", "backward_nfe",
                 "backward_accepted_steps", "backward_rejected_steps", "backward_status"]
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def __repr__(self):
        def show(v):
            return v.numpy().item() if hasattr(v, "numpy") else v

        return "ODEStats(" + ", ".join(f"{k}={show(v)}" for k, v in self.as_dict().items()) + ")"


class ODEResult:
    """The result of ``odeint``.

    Attributes:
        states: the state at every requested time, in the structure of ``y0``
            with a leading time axis.
        times: the requested times.
        stats: an :class:`ODEStats`.
    """

    def __init__(self, states, times, stats):
        self.states = states
        self.times = times
        self.stats = stats

    def __repr__(self):
        return f"ODEResult(times={self.times!r}, stats={self.stats!r})"


_STATUS_LEGEND = "; ".join(
    f"{code} = {message}" for code, message in sorted(base.STATUS_MESSAGES.items()) if code)


def assert_success(stats, solver_name, phase, outputs):
    """Makes ``outputs`` depend on an assertion that the solve succeeded.

    Raises ``tf.errors.InvalidArgumentError`` (eagerly, or when the graph runs)
    with a message naming the solver, the phase, the status and its meaning,
    and the time reached. Under XLA (``jit_compile=True``) assertions are not
    compiled: the status stays available in the statistics and the outputs
    the solve did not reach are NaN.
    """
    prefix = f"odeint: the {phase} solve with solver {solver_name!r} failed"
    if tf.executing_eagerly():
        status = int(stats.status)
        if status != base.SUCCESS:
            reason = base.STATUS_MESSAGES.get(status, "unknown status")
            raise tf.errors.InvalidArgumentError(
                None, None,
                f"{prefix} with status {status} at time {float(stats.final_time):.6g}: {reason}.")
        return outputs
    check = tf.debugging.Assert(
        tf.equal(stats.status, base.SUCCESS),
        [f"{prefix} with status", stats.status, "at time", stats.final_time,
         f"(status codes: {_STATUS_LEGEND})"],
        summarize=3,
    )
    with tf.control_dependencies([check]):
        return [tf.identity(x) for x in outputs]
