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

    def bounded(self, max_iter):
        # A solve updates at most max_iter times: more slots would stay empty.
        if self.memory <= max_iter:
            return self
        return Anderson(max_iter, self.regularization, self.damping)

    def init_state(self, z0):
        """The last ``m`` images ``f_i`` and residuals ``g_i = f_i - z_i``, their residuals'
        Gram matrix ``(batch, m, m)`` in the control dtype, and the number of updates.

        In TensorFlow's graph the histories are tuples of ``m`` ``(batch, dim)`` tensors,
        oldest first: a new one shifts the tuples, which copies nothing. Under XLA a
        while loop's state must stay in place, so a shift copies all ``2 m`` tensors at
        every iteration and holds the history twice; there they are ``(batch, m, dim)``
        rings instead, written one slot per iteration (slot ``updates % m``). Batch-major,
        so that the Gram row and the mixing are batched products XLA runs without
        transposing the ring: ``(m, batch, dim)`` rings cost a ring-sized temporary per
        iteration (a compiled solve with memory 20 peaked at 32.3 MiB, now 12.3 MiB; the
        graph's tuples: 16.2 MiB; width 1024, batch 64)."""
        linear = state_ops.control_dtype(z0.dtype)
        gram = tf.zeros(tf.concat([tf.shape(z0)[:1], [self.memory, self.memory]], 0), linear)
        if state_ops.in_xla():
            ring = tf.zeros(tf.concat([tf.shape(z0)[:1], [self.memory], tf.shape(z0)[1:]], 0),
                            z0.dtype)
            return (ring, ring, gram, tf.constant(0, tf.int32))
        zeros = tf.zeros_like(z0)
        return ((zeros,) * self.memory, (zeros,) * self.memory, gram, tf.constant(0, tf.int32))

    def update(self, state, z, fz):
        images, residuals, gram, updates = state
        m = self.memory
        g = fz - z
        g_linear = tf.cast(g, gram.dtype)
        if isinstance(images, tuple):
            images, residuals = images[1:] + (fz,), residuals[1:] + (g,)
            # Only the new row of the Gram matrix is computed; the rest shifts with the
            # history.
            row = tf.stack([tf.reduce_sum(tf.cast(r, gram.dtype) * g_linear, axis=-1)
                            for r in residuals[:-1]]
                           + [tf.reduce_sum(tf.square(g_linear), axis=-1)], axis=-1)
            # (expand_dims, not row[:, :-1, None]: Grappler's arithmetic optimizer rewrote
            # that slice of a stack of two, memory=2, into a tensor of the wrong rank.)
            gram = tf.concat([tf.concat([gram[:, 1:, 1:], tf.expand_dims(row[:, :-1], 2)],
                                        axis=2), tf.expand_dims(row, 1)], axis=1)
            filled = tf.range(m) >= m - tf.minimum(updates + 1, m)
        else:
            slot = updates % m
            new = tf.equal(tf.range(m), slot)
            images = tf.where(new[:, None], fz[:, None], images)
            residuals = tf.where(new[:, None], g[:, None], residuals)
            row = tf.einsum("bmd,bd->bm", tf.cast(residuals, gram.dtype), g_linear)
            gram = tf.where(new[:, None], row[:, None, :],
                            tf.where(new[None, :], row[:, :, None], gram))
            filled = tf.range(m) < tf.minimum(updates + 1, m)
        alpha = self._weights(gram, filled, z.dtype)
        z_next = _combine(alpha, images)
        if self.damping != 1.0:
            # sum_i alpha_i (damping f_i + (1 - damping) z_i), with z_i = f_i - g_i
            z_next = z_next - (1.0 - self.damping) * _combine(alpha, residuals)
        return (images, residuals, gram, updates + 1), z_next

    def _weights(self, gram, filled, dtype):
        """The mixing weights ``alpha`` ``(batch, m)``, summing to one over the filled slots
        (0 elsewhere): the regularised least squares on the Gram matrix."""
        linear = gram.dtype
        both = filled[:, None] & filled[None, :]
        lam = tf.constant(self.regularization, linear)
        system = tf.where(both, gram, tf.zeros_like(gram))
        diagonal = tf.linalg.diag_part(system)
        # Keeps the system positive definite: a few machine epsilons of its largest
        # diagonal entry (residuals that are linearly dependent, as more than dim of them
        # always are, made the Cholesky factor NaN at regularization=0), and a tiny
        # constant once every residual is exactly 0.
        finfo = state_ops.finfo(linear)
        floor = (4.0 * float(finfo.eps) * tf.reduce_max(diagonal, axis=-1, keepdims=True)
                 + float(finfo.tiny) ** 0.5)
        diagonal = tf.where(filled, diagonal * (1.0 + lam) + floor, tf.ones_like(diagonal))
        system = tf.linalg.set_diag(system, diagonal)
        ones = tf.broadcast_to(tf.cast(filled, linear), tf.shape(system[..., 0]))
        weights = _spd_solve(system, ones)
        return tf.cast(weights / tf.reduce_sum(weights, axis=-1, keepdims=True), dtype)

    def get_config(self):
        return {"memory": self.memory, "regularization": self.regularization,
                "damping": self.damping}


def _combine(alpha, rows):
    """``sum_i alpha[:, i] * rows[i]`` for ``alpha`` ``(batch, m)`` and ``m`` rows ``(batch,
    dim)``: a tuple, or a ring ``(batch, m, dim)``."""
    if not isinstance(rows, tuple):
        return tf.einsum("bm,bmd->bd", alpha, rows)
    out = None
    for i, r in enumerate(rows):
        term = alpha[:, i:i + 1] * r
        out = term if out is None else out + term
    return out


#: The largest memory whose Cholesky solve is unrolled under XLA (``_spd_solve``).
_UNROLLED_MAX = 10


def _spd_solve(a, b):
    """``a^-1 b`` for symmetric positive definite ``a`` ``(batch, m, m)`` and ``b``
    ``(batch, m)``, by Cholesky. XLA's batched Cholesky on CPU takes 0.2 ms for 64 5x5
    matrices, 15x TensorFlow's kernel: under XLA (``state.in_xla``) the factorisation
    and substitutions are unrolled over the (static, small) ``m`` instead, which XLA
    fuses into a few kernels. That is about m³/6 operations to compile: up to
    ``_UNROLLED_MAX``. A compiled forward solve (width 64, batch 16) took 1.0 s to
    compile for m = 5, 2.3 s for m = 10 and 3.0 s for m = 12, then 11 s for m = 20 and
    63 s for a training step at m = 30; with XLA's own Cholesky 0.9-1.7 s for m = 5-20,
    but 2.2x slower per solve at m = 12 (2.2 against 1.0 ms)."""
    m = a.shape[-1]
    if not state_ops.in_xla() or m > _UNROLLED_MAX:
        return tf.linalg.cholesky_solve(tf.linalg.cholesky(a), b[..., None])[..., 0]
    lower = {}
    for j in range(m):
        s = a[:, j, j]
        for k in range(j):
            s = s - tf.square(lower[j, k])
        lower[j, j] = tf.sqrt(s)
        for i in range(j + 1, m):
            s = a[:, i, j]
            for k in range(j):
                s = s - lower[i, k] * lower[j, k]
            lower[i, j] = s / lower[j, j]
    y = []
    for i in range(m):
        s = b[:, i]
        for k in range(i):
            s = s - lower[i, k] * y[k]
        y.append(s / lower[i, i])
    x = [None] * m
    for i in reversed(range(m)):
        s = y[i]
        for k in range(i + 1, m):
            s = s - lower[k, i] * x[k]
        x[i] = s / lower[i, i]
    return tf.stack(x, axis=-1)
