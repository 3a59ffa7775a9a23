"""Limited-memory Broyden's method on ``g(z) = fn(z) - z``."""

import tensorflow as tf

from keras_implicit import validation
from keras_implicit.solvers import fixed_point_base as base
from keras_implicit.solvers import state as state_ops


@base.FIXED_POINT_SOLVERS.register("broyden")
class Broyden(base.FixedPointSolver):
    """Broyden's ("good") quasi-Newton method for the root of ``g(z) = fn(z) - z``.

    Keeps, per sample, a low-rank approximation of the inverse Jacobian of
    ``g``: ``B = -I + sum_i u_i v_i^T`` (``-I`` is exact when ``fn`` is
    constant) and steps ``z <- z - B g(z)``. After each step the rank-one
    Sherman–Morrison update makes ``B`` map the last change of ``g`` to the
    last change of ``z``. Only the last ``memory`` updates are kept (the
    oldest is overwritten). No line search: on a map that is far from
    contractive the iterates may diverge, which stops the solve with status
    ``NON_FINITE`` or at ``max_iter``. The same happens with a ``tol`` below
    the dtype's precision (e.g. 1e-8 in float32): once the residual is
    rounding noise, the updates fit the noise. The best iterate is returned
    in every case.

    Args:
        memory: the number of rank-one updates kept, >= 1 (default 10).

    Example:
        >>> z, stats = Broyden(memory=10).solve(fn, z0, tol=1e-6, max_iter=50)

    Reference:
        Broyden 1965, A class of methods for solving nonlinear simultaneous
        equations; Bai, Kolter & Koltun 2019, Deep Equilibrium Models.
    """

    name = "broyden"

    def __init__(self, memory=10):
        self.memory = validation.positive_int("memory", memory)

    def bounded(self, max_iter):
        # A solve makes at most max_iter - 1 rank-one updates: more slots would stay empty.
        return self if self.memory <= max_iter else Broyden(max_iter)

    def init_state(self, z0):
        """``(us, vts)``, the rank-one updates ``(batch, m, dim)``; the number of iterations
        so far; the last residual ``g`` and step ``dz`` (the next update needs both)."""
        history = tf.zeros(tf.concat([tf.shape(z0)[:1], [self.memory], tf.shape(z0)[1:]], 0),
                           z0.dtype)
        history = tf.ensure_shape(history, [z0.shape[0], self.memory, z0.shape[1]])
        zeros = tf.zeros_like(z0)
        return (history, history, tf.constant(0, tf.int32), zeros, zeros)

    def update(self, state, z, fz):
        us, vts, count, g_last, dz_last = state
        m = self.memory
        finfo = state_ops.finfo(z.dtype)
        g = fz - z
        # The rank-one update from the last step (none before the first): B maps the last
        # change of g to the last change of z.
        dg = g - g_last
        vt = _rmatvec(us, vts, dz_last)
        denominator = tf.reduce_sum(vt * dg, axis=-1, keepdims=True)
        # Skip the update where the step no longer changes g measurably (at the
        # precision floor): a rounding-noise update would blow B up.
        scale = tf.norm(vt, axis=-1, keepdims=True) * tf.norm(dg, axis=-1, keepdims=True)
        usable = (tf.abs(denominator) > tf.maximum(tf.constant(float(finfo.eps), z.dtype) * scale,
                                                   tf.constant(float(finfo.tiny), z.dtype)))
        u = tf.where(usable, (dz_last - _matvec(us, vts, dg))
                     / tf.where(usable, denominator, tf.ones_like(denominator)), 0.0)
        vt = tf.where(usable, vt, 0.0)
        slot = (tf.equal(tf.range(m), (count - 1) % m) & (count > 0))[None, :, None]
        us = tf.where(slot, u[:, None, :], us)
        vts = tf.where(slot, vt[:, None, :], vts)
        # The step -B g: with B = -I (no update yet) this is a Picard step.
        dz = -_matvec(us, vts, g)
        return (us, vts, count + 1, g, dz), z + dz

    def get_config(self):
        return {"memory": self.memory}


def _matvec(us, vts, x):
    """``B x`` for ``B = -I + sum_i u_i v_i^T``, batched."""
    return -x + tf.einsum("bmd,bm->bd", us, tf.einsum("bmd,bd->bm", vts, x))


def _rmatvec(us, vts, x):
    """``x^T B``, batched."""
    return -x + tf.einsum("bmd,bm->bd", vts, tf.einsum("bmd,bd->bm", us, x))
