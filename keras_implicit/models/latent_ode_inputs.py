"""Checking ``LatentODE``'s irregular inputs: clear errors naming the argument and value.

Shapes are checked when the model is called; values (empty samples, times
before ``t0`` or not increasing) eagerly with NumPy, or by assertions inside
a traced function (``fit``, ``predict``, an exported SavedModel).
"""

import numpy as np
import tensorflow as tf

INPUT_KEYS = ("observations", "times", "mask")


def unpack(inputs):
    """``{"observations", "times", "mask"}`` or a 3-sequence -> the three values."""
    if isinstance(inputs, dict):
        missing = [k for k in INPUT_KEYS if k not in inputs]
        extra = sorted(set(inputs) - set(INPUT_KEYS))
        if missing or extra:
            raise ValueError(
                f"LatentODE `inputs` must be a dict with exactly the keys {list(INPUT_KEYS)}. "
                f"Received: inputs with keys {sorted(inputs)}")
        return tuple(inputs[k] for k in INPUT_KEYS)
    if isinstance(inputs, (list, tuple)) and len(inputs) == 3:
        return tuple(inputs)
    raise ValueError(
        f"LatentODE `inputs` must be a dict with keys {list(INPUT_KEYS)} or a tuple "
        f"(observations, times, mask). Received: inputs of type {type(inputs).__name__}")


def _shape(x):
    return tuple(x.shape)


def check_shapes(observations, times, mask, obs_dim):
    """Static checks of ranks and matching dimensions (None dimensions pass)."""
    obs_shape, times_shape, mask_shape = _shape(observations), _shape(times), _shape(mask)
    if len(obs_shape) != 3 or obs_shape[-1] not in (None, obs_dim):
        raise ValueError(
            f"`observations` must have shape (batch, T, obs_dim={obs_dim}). "
            f"Received: observations.shape={obs_shape}")
    if obs_shape[1] == 0:
        raise ValueError(
            f"`observations` is an empty sequence: every sample needs at least one observed "
            f"time. Received: observations.shape={obs_shape}")
    for label, shape in (("times", times_shape), ("mask", mask_shape)):
        compatible = len(shape) == 2 and all(
            a is None or b is None or a == b for a, b in zip(shape, obs_shape[:2]))
        if not compatible:
            raise ValueError(
                f"`{label}` must have shape (batch, T) matching observations.shape[:2]="
                f"{obs_shape[:2]}. Received: {label}.shape={shape}")


def check_query_times(times):
    """``sample_trajectories``' times: 1-D ``(T,)`` or per sample ``(batch, T)``."""
    if len(_shape(times)) not in (1, 2) or _shape(times)[-1] == 0:
        raise ValueError(
            f"`times` must have shape (T,) or (batch, T) with T >= 1. "
            f"Received: times.shape={_shape(times)}")


def check_values(times, observed, t0, ordered=True):
    """Returns ``times`` with value checks attached (eager: raises ValueError now).

    Every entry of ``times`` must be finite and ``>= t0``; with ``ordered``,
    every sample needs an observed entry and its observed times must strictly
    increase.
    """
    if tf.executing_eagerly():
        _check_values_eagerly(np.asarray(times), np.asarray(observed), t0, ordered)
        return times
    before = tf.logical_not(times >= t0)  # also catches NaN
    checks = [tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(before)),
        [f"`times` must be finite and >= t0={t0}. Received (sample, position) pairs:",
         tf.where(before)], summarize=10)]
    if ordered:
        empty = tf.where(tf.logical_not(tf.reduce_any(observed, axis=1)))[:, 0]
        order_bad = _not_increasing(times, observed)
        checks += [
            tf.debugging.Assert(
                tf.equal(tf.size(empty), 0),
                ["`mask`: every sample needs at least one observed entry (mask == 1). "
                 "Samples without any:", empty], summarize=10),
            tf.debugging.Assert(
                tf.logical_not(tf.reduce_any(order_bad)),
                ["`times` must be strictly increasing over each sample's observed entries "
                 "(mask == 1). Offending samples:",
                 tf.where(tf.reduce_any(order_bad, axis=1))[:, 0]], summarize=10),
        ]
    with tf.control_dependencies(checks):
        return tf.identity(times)


def _not_increasing(times, observed):
    """(batch, T - 1): an observed time at or before the previous observed time of its sample."""
    order = tf.argsort(tf.cast(tf.logical_not(observed), tf.int32), axis=1, stable=True)
    times = tf.gather(times, order, batch_dims=1)
    observed = tf.gather(observed, order, batch_dims=1)  # now a prefix of each row
    return observed[:, 1:] & (times[:, 1:] <= times[:, :-1])


def _check_values_eagerly(times, observed, t0, ordered):
    observed = observed.astype(bool)
    for b in range(times.shape[0] if ordered else 0):
        if not observed[b].any():
            raise ValueError(
                f"`mask`: every sample needs at least one observed entry (mask == 1); "
                f"sample {b} has none. Received: mask[{b}]={observed[b].astype(int).tolist()}")
    bad = ~(times >= t0)
    if bad.any():
        b, i = np.argwhere(bad)[0]
        raise ValueError(
            f"`times` must be finite and >= t0={t0} (padding included: pad with t0 or a "
            f"sample's last time). Received: times[{b}, {i}]={times[b, i]}")
    for b in range(times.shape[0] if ordered else 0):
        seen = times[b][observed[b]]
        if np.any(np.diff(seen) <= 0):
            raise ValueError(
                f"`times` must be strictly increasing over each sample's observed entries "
                f"(mask == 1). Received: times[{b}][mask[{b}] == 1]={seen.tolist()}")
