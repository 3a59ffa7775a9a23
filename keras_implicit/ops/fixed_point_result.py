"""What ``fixed_point`` returns, and how a solve that did not converge is reported."""

import sys
import warnings

import tensorflow as tf

from keras_implicit.solvers import fixed_point_base as base

ON_FAILURE = ("warn", "raise", "ignore")


class FixedPointWarning(RuntimeWarning):
    """A fixed-point solve (forward or backward) stopped without reaching its tolerance."""


class FixedPointStats:
    """Statistics of a fixed-point solve (scalar tensors).

    Attributes:
        forward_iterations: int32, evaluations of ``fn`` by the forward solver.
        abs_residual, rel_residual: the forward solve's final residuals
            ``||fn(z) - z||`` and ``||fn(z) - z|| / ||fn(z)||``, for the
            batch's worst sample (in the stopping norm).
        status: int32, 0 converged, 1 ``max_iter`` reached, 2 non-finite residual.
        converged: bool, ``status == 0``.
        backward_iterations, backward_abs_residual, backward_rel_residual,
            backward_status: filled in when a gradient is taken with
            ``gradient="implicit"`` (the linear solve of the implicit function
            theorem). With ``"phantom"``, ``backward_iterations`` is the number
            of unrolled steps and ``backward_status`` is 0; with
            ``"unrolled"`` they stay ``None``.
    """

    _NAMES = ("forward_iterations", "abs_residual", "rel_residual", "status", "converged",
              "backward_iterations", "backward_abs_residual", "backward_rel_residual",
              "backward_status")

    def __init__(self, forward):
        self.forward_iterations = forward.iterations
        self.abs_residual = forward.abs_residual
        self.rel_residual = forward.rel_residual
        self.status = forward.status
        self.converged = forward.converged
        self.backward_iterations = None
        self.backward_abs_residual = None
        self.backward_rel_residual = None
        self.backward_status = None

    def set_backward(self, backward):
        self.backward_iterations = backward.iterations
        self.backward_abs_residual = backward.abs_residual
        self.backward_rel_residual = backward.rel_residual
        self.backward_status = backward.status

    def as_dict(self):
        return {name: getattr(self, name) for name in self._NAMES
                if getattr(self, name) is not None}

    def __repr__(self):
        def show(v):
            return v.numpy().item() if hasattr(v, "numpy") else v

        return ("FixedPointStats("
                + ", ".join(f"{k}={show(v)}" for k, v in self.as_dict().items()) + ")")


class FixedPointResult:
    """The result of ``fixed_point``.

    Attributes:
        z: the fixed point, with the shape of ``z0``.
        stats: a :class:`FixedPointStats`.
        jacobian_penalty: with ``jacobian_penalty=True``, a scalar Hutchinson
            estimate of ``mean_b ||d fn / d z (z*_b)||_F^2 / dim(z_b)``,
            differentiable (add it to the loss); else ``None``.
    """

    def __init__(self, z, stats, jacobian_penalty=None):
        self.z = z
        self.stats = stats
        self.jacobian_penalty = jacobian_penalty

    def __repr__(self):
        return f"FixedPointResult(z={self.z!r}, stats={self.stats!r})"


_MESSAGES = [base.STATUS_MESSAGES[code] for code in sorted(base.STATUS_MESSAGES)]


def report(stats, solver_name, phase, tol, on_failure, outputs):
    """Reports a solve that did not converge, according to ``on_failure``.

    ``"raise"``: ``tf.errors.InvalidArgumentError`` (eagerly, or when the graph
    runs). ``"warn"``: eagerly, a Python :class:`FixedPointWarning`; in a graph
    (``tf.function``, ``model.fit``) Python cannot warn at run time, so a line
    is printed to stderr with ``tf.print`` each time a solve fails.
    ``"ignore"``: nothing; the status stays in the statistics either way.

    Returns ``outputs`` (a list of tensors), made to depend on the check.
    """
    if on_failure == "ignore":
        return outputs
    header = f"fixed_point: the {phase} solve with solver {solver_name!r} did not converge:"
    if on_failure == "warn" and tf.executing_eagerly():
        status = int(stats.status)
        if status != base.SUCCESS:
            warnings.warn(
                f"{header} {base.STATUS_MESSAGES.get(status, status)} (status {status}; "
                f"iterations: {int(stats.iterations)}; residual: abs "
                f"{float(stats.abs_residual):.3g}, rel {float(stats.rel_residual):.3g}; "
                f"tol: {tol:g}).",
                FixedPointWarning, stacklevel=4)
        return outputs
    ok = tf.equal(stats.status, base.SUCCESS)
    reason = tf.gather(tf.constant(_MESSAGES),
                       tf.clip_by_value(stats.status, 0, len(_MESSAGES) - 1))
    details = [header, reason, "; status:", stats.status, "; iterations:", stats.iterations,
               "; residual: abs", stats.abs_residual, "rel", stats.rel_residual, f"; tol: {tol:g}"]
    if on_failure == "raise":
        check = tf.debugging.Assert(ok, details, summarize=3)
    else:
        def warn():
            with tf.control_dependencies(
                    [tf.print("WARNING:", *details, output_stream=sys.stderr)]):
                return tf.constant(False)

        check = tf.cond(ok, lambda: tf.constant(True), warn)
    with tf.control_dependencies([check]):
        return [tf.identity(x) for x in outputs]
