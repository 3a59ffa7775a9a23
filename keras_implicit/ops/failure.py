"""One failure policy for every solve: ``on_failure="raise" | "warn" | "ignore"``.

A solve that ends with a status other than ``Status.SUCCESS`` is reported:

- ``"raise"``: ``tf.errors.InvalidArgumentError`` (eagerly, or when the graph
  runs; the message names the solve, its status, what it means, and where it
  stopped);
- ``"warn"``: eagerly a Python :class:`SolverWarning` (``ODEWarning`` or
  ``FixedPointWarning``); in a graph (``tf.function``, ``model.fit``) Python
  cannot warn at run time, so a line is printed to stderr each time;
- ``"ignore"``: nothing.

The status stays in the statistics in every case. Under XLA
(``jit_compile=True``) assertions and prints are not compiled: read the status.
"""

import sys

import tensorflow as tf

from keras_implicit import user_warnings
from keras_implicit import validation
from keras_implicit.solvers.status import Status, describe

ON_FAILURE = ("raise", "warn", "ignore")


class SolverWarning(RuntimeWarning):
    """A solve (ODE or fixed point, forward or backward) did not succeed."""


class ODEWarning(SolverWarning):
    """An ODE solve did not succeed (``on_failure="warn"``)."""


class FixedPointWarning(SolverWarning):
    """A fixed-point solve stopped without reaching its tolerance."""


_WARNINGS = {"ode": ODEWarning, "fixed_point": FixedPointWarning}


def check_on_failure(value):
    return validation.one_of("on_failure", value, ON_FAILURE)


def _legend(family):
    return "; ".join(f"{int(status)} = {describe(status, family)}" for status in sorted(Status)
                     if status > Status.SUCCESS)


def report(status, on_failure, family, header, details, outputs):
    """Reports a solve that did not succeed, according to ``on_failure``.

    Args:
        status: scalar int32 status tensor.
        on_failure: ``"raise"``, ``"warn"`` or ``"ignore"``.
        family: ``"ode"`` or ``"fixed_point"`` (which hints, warning class and layout).
        header: the message's start, e.g. ``"odeint: the forward solve with
            solver 'dopri5' failed"``.
        details: a list of strings and scalar tensors: for ODEs what follows
            the status (``["at time", t]``), for fixed points what follows it
            in parentheses.
        outputs: a list of tensors to make depend on the check.

    Returns:
        ``outputs``, after the check.
    """
    if on_failure == "ignore":
        return outputs
    if tf.executing_eagerly():
        code = int(status)
        if code == Status.SUCCESS:
            return outputs
        text = " ".join(_show(part) for part in details)
        reason = describe(code, family)
        if family == "ode":
            message = f"{header} with status {code} {text}: {reason}."
        else:
            message = f"{header}: {reason} (status {code}{text})."
        if on_failure == "raise":
            raise tf.errors.InvalidArgumentError(None, None, message)
        user_warnings.warn(message, _WARNINGS[family])
        return outputs
    # In a graph the status is a run-time value: the message carries the legend of
    # every status (a gather of strings would not compile under XLA).
    ok = tf.equal(status, Status.SUCCESS)
    parts = [f"{header} with status", status, *details, f"(status codes: {_legend(family)})"]
    if on_failure == "raise":
        check = _assert(ok, parts)
    else:
        def warn():
            with tf.control_dependencies(
                    [tf.print("WARNING:", *parts, output_stream=sys.stderr)]):
                return tf.constant(False)

        check = tf.cond(ok, lambda: tf.constant(True), warn)
    with tf.control_dependencies([check]):
        return [tf.identity(x) for x in outputs]


def _assert(condition, parts):
    """One ``Assert`` op on ``parts`` (strings and scalar tensors of any dtype).

    ``tf.debugging.Assert`` guards data other than strings and int32 by an ``If``
    (to keep device tensors off the host unless the check fails), which cost about 5%
    of a small compiled solve run in a loop; formatting the numbers as strings first
    cost one op per number. The op itself formats its data only when the check fails,
    and runs on the host, where the solve's status and time already are (XLA drops
    it: read the status there)."""
    data = [tf.constant(part) if isinstance(part, str) else tf.convert_to_tensor(part)
            for part in parts]
    return tf.raw_ops.Assert(condition=condition, data=data, summarize=3)


def backward_overflow(dtype, finite, status, grads):
    """A backward solve's gradients and the status to report, with float16's overflow rule.

    Under ``"mixed_float16"`` Keras scales the loss by up to 2**15, so the
    cotangent entering a backward solve is that much larger than the
    gradient's, and a float16 vector-Jacobian product of a finite cotangent
    can overflow mid-solve. That is the loss scale's signal, not the solver's
    failure: for a float16 state, a backward solve that ends with
    ``Status.NON_FINITE`` gives NaN gradients and is not reported, so that a
    ``LossScaleOptimizer`` skips the step and lowers the scale (as it does for
    a non-finite cotangent, ``finite`` False, which is never solved). Other
    dtypes and other statuses are reported by ``on_failure``. The statistics
    keep the status either way.

    Args:
        dtype: the caller's state dtype (``None``: unknown, no overflow rule).
        finite: scalar bool tensor: the cotangent was finite (the solve ran).
        status: the backward solve's status.
        grads: the gradients (a list of tensors).

    Returns:
        ``(grads, status_to_report)``.
    """
    skipped = tf.logical_not(finite)
    if dtype is not None and tf.as_dtype(dtype) == tf.float16:
        overflowed = finite & tf.equal(status, Status.NON_FINITE)
        grads = [tf.where(overflowed, tf.constant(float("nan"), g.dtype), g) for g in grads]
        skipped = skipped | overflowed
    return grads, tf.where(skipped, tf.constant(Status.SUCCESS, status.dtype), status)


def _show(part):
    if tf.is_tensor(part):
        value = part.numpy()
        return f"{value.item():.6g}" if value.dtype.kind == "f" else str(value.item())
    return str(part)
