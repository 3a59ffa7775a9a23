"""Hutchinson estimate of the squared Frobenius norm of a map's Jacobian (Bai et al. 2021)."""

import tensorflow as tf


def jacobian_frobenius_penalty(fn, z, num_samples=1, seed=None):
    """Estimates ``mean_b ||d fn / d z (z_b)||_F^2 / dim(z_b)`` by Hutchinson's trick.

    For Gaussian ``eps``, ``E ||eps^T J||^2 = ||J||_F^2``; each probe costs one
    vector–Jacobian product. The estimate is differentiable (with respect to
    ``z`` and everything ``fn`` reads), so it can be added to a loss to keep a
    DEQ's cell contractive and its solves short.

    Args:
        fn: ``fn(z) -> same shape``, the map (one sample per row of the
            leading axis; samples must not interact).
        z: ``(batch, ...)``, where the Jacobian is taken (usually ``z*``).
        num_samples: the number of Gaussian probes, >= 1.
        seed: optional int seed of the probes (stateless); ``None`` draws
            them from TensorFlow's global generator.

    Returns:
        A scalar of ``z``'s dtype: the sum over probes and samples of
        ``||eps^T J||^2``, divided by ``num_samples * size(z)``.

    Reference:
        Bai, Koltun & Kolter 2021, Stabilizing Equilibrium Models by Jacobian
        Regularization.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(
            f"`num_samples` must be an int >= 1. Received: num_samples={num_samples!r}")
    with tf.GradientTape(persistent=num_samples > 1) as tape:
        tape.watch(z)
        fz = fn(z)
    total = tf.zeros([], z.dtype)
    for i in range(num_samples):
        if seed is None:
            probe = tf.random.normal(tf.shape(fz), dtype=fz.dtype)
        else:
            probe = tf.random.stateless_normal(tf.shape(fz), seed=[seed, i], dtype=fz.dtype)
        vjp = tape.gradient(fz, z, output_gradients=probe)
        total += tf.reduce_sum(tf.square(vjp))
    size = tf.cast(tf.maximum(tf.size(z), 1), z.dtype)  # an empty batch: 0, not NaN
    return total / (num_samples * size)
