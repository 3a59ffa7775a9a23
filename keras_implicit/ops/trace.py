"""Divergence estimators: the trace of the Jacobian of ``fn`` at ``z``. Pure TensorFlow.

For ``f = fn(z)`` with ``z`` of shape ``(batch, *event)`` and each example
mapped independently (no mixing across the batch), these return ``f``
together with, per example, ``tr(df/dz)`` (the divergence) and optionally the
squared Frobenius norm ``||df/dz||_F^2``, evaluating ``fn`` once:

- :func:`exact_trace`: the full Jacobian, ``D`` vector-Jacobian products
  vectorised in one batched backward pass; exact, cost ``O(D)`` times ``fn``.
- :func:`hutchinson_trace`: Hutchinson's unbiased estimator ``e^T (df/dz) e``
  with probes ``e`` of zero mean and identity covariance, one vector-Jacobian
  product per probe; cost independent of ``D`` (Grathwohl et al. 2019).

:func:`sample_noise` draws the probes (Rademacher or Gaussian), seeded.
"""

import numpy as np
import tensorflow as tf

from keras_implicit import validation

NOISE_KINDS = ("rademacher", "gaussian")


def check_noise_kind(kind, argument="noise"):
    """Returns ``kind`` if it is a known probe distribution, else raises ``ValueError``."""
    return validation.known_name("probe distribution", argument, kind, NOISE_KINDS)


def stateless_seed(seed):
    """A shape-[2] int32 seed for ``tf.random.stateless_*`` from an int or tensor."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return tf.constant([int(seed) % (2**31 - 1), 0], tf.int32)
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer:
        raise TypeError(f"`seed` must be an int or an integer tensor of shape [2]. "
                        f"Received: seed with dtype={seed.dtype.name}")
    if seed.shape.rank == 0:
        seed = tf.stack([seed, tf.zeros_like(seed)])
    if seed.shape.rank != 1 or seed.shape[0] not in (None, 2):
        raise ValueError(f"`seed` must be an int or a tensor of shape [2]. "
                         f"Received: seed with shape {seed.shape}")
    # Keras seed generators hold uint32/int64 states; keep them in int32 range.
    return tf.cast(tf.math.floormod(tf.cast(seed, tf.int64), 2**31 - 1), tf.int32)


def sample_noise(shape, kind="rademacher", dtype=tf.float32, seed=None):
    """Draws Hutchinson probes: entries i.i.d. with mean 0 and variance 1.

    Args:
        shape: the shape of the probes, e.g. ``(num_probes, batch, *event)``.
        kind: ``"rademacher"`` (+-1 with equal probability; the smaller
            variance) or ``"gaussian"`` (standard normal).
        dtype: a floating dtype.
        seed: ``None`` (stateful, a new draw at every call), a Python int or
            an integer tensor of shape ``[2]`` (stateless: same seed, same draw).

    Returns:
        A tensor of ``shape`` and ``dtype``.
    """
    check_noise_kind(kind)
    dtype = tf.as_dtype(dtype)
    if not dtype.is_floating:
        raise TypeError(f"`dtype` must be floating point. Received: dtype={dtype.name}")
    if seed is None:
        if kind == "gaussian":
            return tf.random.normal(shape, dtype=dtype)
        bits = tf.random.uniform(shape, 0, 2, dtype=tf.int32)
    else:
        seed = stateless_seed(seed)
        if kind == "gaussian":
            return tf.random.stateless_normal(shape, seed=seed, dtype=dtype)
        bits = tf.random.stateless_uniform(shape, seed=seed, minval=0, maxval=2, dtype=tf.int32)
    return tf.cast(2 * bits - 1, dtype)


def _flat_size(z):
    size = 1
    for d in z.shape[1:]:
        if d is None:
            raise ValueError(f"`z` must have a static event shape. Received: z.shape={z.shape}")
        size *= d
    return size


def _check_z(z):
    z = tf.convert_to_tensor(z)
    if not z.dtype.is_floating:
        raise TypeError(f"`z` must be floating point. Received: z with dtype={z.dtype.name}")
    if z.shape.rank is None or z.shape.rank < 2:
        raise ValueError(
            f"`z` must have shape (batch, *event) with at least one event axis. "
            f"Received: z.shape={z.shape}")
    return z


def _evaluate(fn, x, z):
    """``fn(x)``, checked against ``z`` (``x`` is ``z`` or copies of it along the batch)."""
    f = tf.convert_to_tensor(fn(x))
    if not f.shape.is_compatible_with(x.shape):
        raise ValueError(
            f"`fn` must return a tensor of the shape of `z`. Received: an output of event "
            f"shape {tuple(f.shape[1:])} for z.shape={z.shape}")
    if f.dtype != z.dtype:
        raise TypeError(
            f"`fn` must return the dtype of `z`. Received: dtype {f.dtype.name} for z with "
            f"dtype={z.dtype.name}")
    return f


def exact_trace(fn, z, frobenius=False):
    """``f = fn(z)`` and the exact trace of ``df/dz`` per example.

    The ``D = prod(event)`` rows of each example's Jacobian come from one
    backward pass over ``D`` stacked copies of the batch (memory and time
    ``O(D)`` times those of ``fn``): meant for small ``D`` and for tests.

    Args:
        fn: maps ``(batch, *event) -> (batch, *event)``, examples independently.
        z: ``(batch, *event)``, floating point.
        frobenius: also return ``||df/dz||_F^2`` per example.

    Returns:
        ``(f, trace)`` or ``(f, trace, frobenius_sq)``; ``trace`` has shape ``(batch,)``.

    Example:
        >>> A = tf.constant([[1.0, 2.0], [3.0, 4.0]])
        >>> f, tr = exact_trace(lambda z: tf.linalg.matvec(A, z), tf.ones((5, 2)))
        >>> tr  # 5.0 for every example
    """
    z = _check_z(z)
    dim = _flat_size(z)
    batch = tf.shape(z)[0]
    event = z.shape[1:]
    tiled = tf.tile(z, [dim] + [1] * event.rank)  # copy k holds example b at k * batch + b
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(tiled)
        f_tiled = _evaluate(fn, tiled, z)
    # Row k of every example's Jacobian: the VJP of copy k with the k-th basis vector.
    basis = tf.reshape(tf.eye(dim, dtype=z.dtype), [dim, 1, dim])
    cotangent = tf.reshape(tf.broadcast_to(basis, [dim, batch, dim]), tf.shape(tiled))
    rows = tape.gradient(f_tiled, tiled, output_gradients=cotangent,
                         unconnected_gradients=tf.UnconnectedGradients.ZERO)
    jacobian = tf.transpose(tf.reshape(rows, [dim, batch, dim]), [1, 0, 2])  # (batch, D, D)
    f = f_tiled[:batch]
    trace = tf.linalg.trace(jacobian)
    if frobenius:
        return f, trace, tf.reduce_sum(tf.square(jacobian), axis=[1, 2])
    return f, trace


def hutchinson_trace(fn, z, noise, frobenius=False):
    """``f = fn(z)`` and Hutchinson's estimate of the trace of ``df/dz`` per example.

    Each probe ``e`` gives ``e^T (df/dz) e`` from one vector-Jacobian product;
    the estimate is the mean over probes. It is unbiased when the probes have
    zero mean and identity covariance (:func:`sample_noise`); for Rademacher
    probes its variance is ``2 (||S||_F^2 - sum_i S_ii^2)`` per probe, with
    ``S`` the symmetric part of the Jacobian, for Gaussian ones ``2 ||S||_F^2``.

    Args:
        fn: maps ``(batch, *event) -> (batch, *event)``, examples independently.
        z: ``(batch, *event)``, floating point.
        noise: probes, ``(batch, *event)`` (one probe) or
            ``(num_probes, batch, *event)``, of ``z``'s dtype.
        frobenius: also return the estimate ``mean ||e^T df/dz||^2`` of the
            squared Frobenius norm (the RNODE Jacobian regulariser).

    Returns:
        ``(f, trace)`` or ``(f, trace, frobenius_sq)``; ``trace`` has shape ``(batch,)``.
    """
    z = _check_z(z)
    noise = tf.convert_to_tensor(noise)
    if noise.dtype != z.dtype:
        raise TypeError(f"`noise` must have the dtype of `z` ({z.dtype.name}). "
                        f"Received: noise with dtype={noise.dtype.name}")
    given_shape = noise.shape
    if noise.shape.rank == z.shape.rank:
        noise = noise[tf.newaxis]
    if noise.shape.rank != z.shape.rank + 1 or not noise.shape[1:].is_compatible_with(z.shape):
        raise ValueError(
            f"`noise` must have shape (batch, *event) or (num_probes, batch, *event) matching "
            f"z.shape={z.shape}. Received: noise.shape={given_shape}")
    num_probes = noise.shape[0]
    if num_probes is None:
        raise ValueError(f"`noise` must have a static number of probes (its first axis). "
                         f"Received: noise.shape={noise.shape}")
    axes = list(range(1, z.shape.rank))
    with tf.GradientTape(persistent=num_probes > 1, watch_accessed_variables=False) as tape:
        tape.watch(z)
        f = _evaluate(fn, z, z)
    traces, norms = [], []
    for k in range(num_probes):
        vjp = tape.gradient(f, z, output_gradients=noise[k],
                            unconnected_gradients=tf.UnconnectedGradients.ZERO)
        traces.append(tf.reduce_sum(vjp * noise[k], axis=axes))
        if frobenius:
            norms.append(tf.reduce_sum(tf.square(vjp), axis=axes))
    del tape
    trace = tf.add_n(traces) / len(traces)
    if frobenius:
        return f, trace, tf.add_n(norms) / len(norms)
    return f, trace
