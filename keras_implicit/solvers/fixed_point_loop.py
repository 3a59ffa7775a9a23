"""The fixed-point iteration driver every built-in solver shares.

One iteration evaluates the map at the current iterate ``z``, measures each
sample's residual, keeps each sample's best iterate, decides the status, and
lets the solver propose the next iterate from ``(z, fn(z))`` (its
``update``, which does not call the map). The loop is a ``tf.while_loop``
whose body is one iteration. Two optional wrappers (``ops.jit`` passes XLA
compilation) say which part of it is compiled:

- ``step_wrapper`` wraps everything but the map (the residual norms, the
  best-iterate bookkeeping, the status and the solver's update), which then
  runs as one function next to the map;
- ``iteration_wrapper`` wraps the whole iteration, map included (the "fused
  iteration"): only the loop is left to TensorFlow.

Compiled or not, the iterates are the same up to rounding (XLA may fuse and
reorder floating-point operations).
"""

import collections

import tensorflow as tf

from keras_implicit.solvers import state as state_ops
from keras_implicit.solvers.status import Status

# Added to ||fn(z)|| in the relative residual (as in torchdeq), so that z* = 0 is reachable.
_REL_EPSILON = 1e-9


class FixedPointSolveStats(
    collections.namedtuple(
        "FixedPointSolveStats", ["iterations", "abs_residual", "rel_residual", "status"])
):
    """Statistics of one fixed-point solve, all scalar tensors.

    Attributes:
        iterations: int32, evaluations of the map.
        abs_residual: the largest over the batch of each sample's best
            ``||fn(z) - z||`` (control dtype).
        rel_residual: the same samples' ``||fn(z) - z|| / ||fn(z)||``.
        status: int32, a ``Status`` value.
    """

    __slots__ = ()

    @property
    def converged(self):
        return tf.equal(self.status, Status.SUCCESS)


def row_norms(v):
    """Euclidean norm of each row of ``(batch, dim)``, without overflow of the squares
    (float32 iterates of a diverging map reach 1e20 long before they overflow)."""
    v = tf.cast(v, state_ops.control_dtype(v.dtype))
    scale = tf.reduce_max(tf.abs(v), axis=-1)
    safe = tf.where(scale > 0, scale, tf.ones_like(scale))
    return tf.sqrt(tf.reduce_sum(tf.square(v / tf.expand_dims(safe, -1)), axis=-1)) * scale


def residuals(z, fz):
    """Per-sample absolute and relative residuals of ``(batch, dim)`` tensors."""
    abs_residual = row_norms(fz - z)
    rel_residual = abs_residual / (row_norms(fz) + _REL_EPSILON)
    return abs_residual, rel_residual


def batch_where(mask, a, b):
    """Rows of ``a`` where the per-sample ``mask`` (batch,) holds, else of ``b`` (batch, dim)."""
    return tf.where(tf.expand_dims(mask, -1), a, b)


def worst_of(values, *others):
    """The entries at the largest of ``values`` (batch,), a NaN being the largest; zeros
    for an empty batch."""
    padded = tf.concat([values, tf.zeros([1], values.dtype)], 0)
    # argmax passes over NaNs: a NaN sample would report another's residual, or 0.
    key = tf.where(tf.math.is_nan(padded), tf.constant(float("inf"), values.dtype), padded)
    worst = tf.argmax(key, output_type=tf.int32)
    return [tf.gather(padded, worst)] + [
        tf.gather(tf.concat([x, tf.zeros([1], x.dtype)], 0), worst) for x in others]


def iterate(fn, z0, solver, *, tol, max_iter, stop_mode, step_wrapper=None,
            iteration_wrapper=None):
    """Runs a fixed-point iteration, tracking each sample's best iterate.

    Args:
        fn: the map, ``(batch, dim) -> (batch, dim)``.
        z0: ``(batch, dim)`` initial guess.
        solver: a ``FixedPointSolver`` with ``init_state(z0)`` and
            ``update(state, z, fz) -> (state, z_next)``.
        tol, max_iter, stop_mode: validated options (``fixed_point_base``).
        step_wrapper, iteration_wrapper: compile an iteration without or with
            the map (see the module docstring), or ``None``.

    Returns:
        ``(z, stats)``: the image of each sample's best iterate and a
        :class:`FixedPointSolveStats`.
    """
    solver = solver.bounded(max_iter)
    control = state_ops.control_dtype(z0.dtype)
    use_rel = stop_mode == "rel"

    def advance(z, fz, k, best_z, best_abs, best_rel, state):
        """Everything of an iteration after the map: bookkeeping and the solver's update."""
        abs_k, rel_k = residuals(z, fz)
        better = tf.equal(k, 0) | ((rel_k < best_rel) if use_rel else (abs_k < best_abs))
        best_z = batch_where(better, fz, best_z)
        best_abs = tf.where(better, abs_k, best_abs)
        best_rel = tf.where(better, rel_k, best_rel)
        k = k + 1
        best = best_rel if use_rel else best_abs
        finite = tf.reduce_all(tf.math.is_finite(abs_k)) & tf.reduce_all(tf.math.is_finite(rel_k))
        done = tf.reduce_all(best <= tf.constant(tol, control))
        status = tf.where(~finite, Status.NON_FINITE,
                          tf.where(done, Status.SUCCESS,
                                   tf.where(k >= max_iter, Status.MAX_STEPS_REACHED,
                                            Status.RUNNING)))
        # The last iteration proposes no next iterate (it would not be evaluated).
        if state_ops.in_xla():
            state, z_next = solver.update(state, z, fz)
        else:
            state, z_next = tf.cond(tf.equal(status, Status.RUNNING),
                                    lambda: solver.update(state, z, fz), lambda: (state, z))
        return status, z_next, k, best_z, best_abs, best_rel, state

    def iteration(z, *carry):
        return advance(z, fn(z), *carry)

    if iteration_wrapper is not None:
        body = iteration_wrapper(iteration)
    elif step_wrapper is not None:
        compiled = step_wrapper(advance)
        body = lambda z, *carry: compiled(z, fn(z), *carry)  # noqa: E731
    else:
        body = iteration

    inf = tf.fill(tf.shape(z0)[:1], tf.constant(float("inf"), control))
    loop_vars = (tf.constant(Status.RUNNING, tf.int32), z0, tf.constant(0, tf.int32), z0, inf,
                 inf, solver.init_state(z0))
    status, _, k, best_z, best_abs, best_rel, _ = tf.while_loop(
        lambda status, *_: tf.equal(status, Status.RUNNING),
        lambda status, z, *carry: body(z, *carry),
        loop_vars, maximum_iterations=max_iter)
    if use_rel:
        rel_residual, abs_residual = worst_of(best_rel, best_abs)
    else:
        abs_residual, rel_residual = worst_of(best_abs, best_rel)
    stats = FixedPointSolveStats(iterations=k, abs_residual=abs_residual,
                                 rel_residual=rel_residual, status=status)
    return best_z, stats
