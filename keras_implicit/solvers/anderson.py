"""Anderson acceleration (type II / Anderson mixing) of a fixed-point iteration."""

import tensorflow as tf

from keras_implicit import validation
from keras_implicit.solvers import fixed_point_base as base
from keras_implicit.solvers import state as state_ops


@base.FIXED_POINT_SOLVERS.register("anderson")
class Anderson(base.FixedPointSolver):
    """Anderson acceleration with memory ``m``.

    Each new iterate mixes the last ``m`` iterates ``z_i`` and their images
    ``fn(z_i)`` with the weights ``alpha`` (summing to one) that minimise
    ``||sum_i alpha_i (fn(z_i) - z_i)||² + regularization * ||alpha||²_D``,
    per sample::

        z <- damping * sum_i alpha_i fn(z_i) + (1 - damping) * sum_i alpha_i z_i

    The least squares (Gram matrix, Cholesky solve) run in the control dtype:
    float32 for half-precision iterates. The regularisation is relative:
    ``D`` is the diagonal of the residuals' Gram matrix, so ``regularization``
    weighs each past residual against its own squared norm (as
    ``scipy.optimize.anderson``'s ``w0**2``) and the method is invariant to the
    scale of ``z``. With ``m = 1`` it reduces to the damped Picard iteration.

    Args:
        memory: the number ``m`` of past iterates mixed, >= 1 (default 5).
        regularization: ``lambda`` >= 0 (default 1e-4).
        damping: in (0, 1] (default 1).

    Example:
        >>> z, stats = Anderson(memory=5).solve(fn, z0, tol=1e-6, max_iter=50)

    Reference:
        Walker & Ni 2011, Anderson acceleration for fixed-point iterations;
        Bai, Kolter & Koltun 2019, Deep Equilibrium Models.
    """

    name = "anderson"

    def __init__(self, memory=5, regularization=1e-4, damping=1.0):
        self.memory = validation.positive_int("memory", memory)
        self.regularization = validation.nonnegative_float("regularization", regularization)
        self.damping = base.check_damping(damping)

    def solve(self, fn, z0, *, tol=1e-4, max_iter=50, stop_mode="rel"):
        tol, max_iter, stop_mode = base.check_solve_arguments(tol, max_iter, stop_mode)
        m, damping = self.memory, self.damping
        dtype = z0.dtype
        linear = state_ops.control_dtype(dtype)
        lam = tf.constant(self.regularization, linear)
        # Keeps the Gram matrix positive definite once every residual is exactly 0.
        floor = tf.constant(float(state_ops.finfo(linear).tiny) ** 0.5, linear)
        slots = tf.range(m)

        def step(state, z, fz):
            history_z, history_f, count = state
            slot = tf.equal(slots, count % m)[None, :, None]
            history_z = tf.where(slot, z[:, None, :], history_z)
            history_f = tf.where(slot, fz[:, None, :], history_f)
            count = count + 1
            valid = slots < count
            both = valid[:, None] & valid[None, :]
            residual = tf.cast(history_f - history_z, linear)
            gram = tf.where(both, tf.matmul(residual, residual, transpose_b=True), 0.0)
            diagonal = tf.linalg.diag_part(gram)
            diagonal = tf.where(valid, diagonal * (1.0 + lam) + floor, tf.ones_like(diagonal))
            gram = tf.linalg.set_diag(gram, diagonal)
            ones = tf.broadcast_to(tf.cast(valid, linear)[:, None], tf.shape(gram[..., :1]))
            weights = tf.linalg.cholesky_solve(tf.linalg.cholesky(gram), ones)[..., 0]
            alpha = tf.cast(weights / tf.reduce_sum(weights, axis=-1, keepdims=True), dtype)
            mixed_f = tf.einsum("bm,bmd->bd", alpha, history_f)
            if damping == 1.0:
                z_next = mixed_f
            else:
                z_next = damping * mixed_f + (1.0 - damping) * tf.einsum(
                    "bm,bmd->bd", alpha, history_z)
            return (history_z, history_f, count), z_next, fn(z_next)

        history = tf.zeros(tf.concat([tf.shape(z0)[:1], [m], tf.shape(z0)[1:]], 0), dtype)
        history = tf.ensure_shape(history, [z0.shape[0], m, z0.shape[1]])
        state0 = (history, history, tf.constant(0, tf.int32))
        return base.iterate(fn, z0, step, state0, tol=tol, max_iter=max_iter, stop_mode=stop_mode)

    def get_config(self):
        return {"memory": self.memory, "regularization": self.regularization,
                "damping": self.damping}
