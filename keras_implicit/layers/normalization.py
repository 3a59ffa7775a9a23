"""``keras.layers.GroupNormalization``'s function, computed fast on CPU (TensorFlow backend).

Keras reduces a ``(batch, ..., groups, channels / groups)`` view over
non-adjacent axes, which TensorFlow's CPU kernels do slowly. ``group_norm``
computes the same function from the layer's own weights (``gamma``, ``beta``,
``epsilon``; statistics in float32 for half-precision inputs): each channel is
summed over the spatial axes first and the channels of a group are added
afterwards, two passes (the variance of the centred values), as in Keras.

With ``compiled=True`` the normalisation (and the ReLU that follows it, if
asked) is one XLA function and its gradient another, while the convolutions
around it stay with TensorFlow's oneDNN kernels. On the ODE-Net's block
(6x6x64, batch 64, 2 CPU cores) XLA's convolutions cost more than oneDNN's
(one 3x3 convolution's gradient 1.05 ms against 0.36 ms), and Keras'
GroupNormalization in the graph more than both: one evaluation of the dynamics
with its gradient took 6.2 ms with Keras' layers, 5.0 ms compiled whole by
XLA, 3.7 ms with this reduction in the graph and 3.3 ms with it compiled
(measured 2026-12-01).

The compiled gradient is the closed form from the input and each group's mean
and 1/std, which the forward program returns beside its output. A gradient
through a solver's loop stores, at every call, what the gradient reads: these
instead of the 11-12 intermediates TensorFlow would export from the forward
program, each one more accumulator in the loop's gradient (on the ODE block
with backprop, 305 accumulators became 257). One forward and one gradient
program serve the norm with and without its ReLU (a boolean argument), each
compiled once per input signature. Both cut the first call of the block's
training step (CHANGELOG, README "Speed"); its steps took the same time within
the noise (measured 2026-12-02).
"""

import keras
import tensorflow as tf

from keras_implicit.ops import jit


def group_norm(norm, x, relu=False, compiled=False):
    """``norm(x)`` (then ``relu`` if asked) for a channels-last ``GroupNormalization``.

    Args:
        norm: a ``keras.layers.GroupNormalization`` (built on ``x`` if it is
            not yet); another axis than the last falls back to calling the layer.
        x: its input, channels last.
        relu: apply ``max(0, .)`` to the result (fused when compiled).
        compiled: compute it as one XLA function (see the module docstring);
            inside a function XLA compiles anyway, it is traced plainly into it.

    Example (a dynamics layer's ``call``, the layers built in ``build``):
        >>> out = ki.layers.group_norm(self.norm, self.conv(x), relu=True, compiled=True)
    """
    if not isinstance(norm, keras.layers.GroupNormalization):
        raise TypeError(f"`norm` must be a keras.layers.GroupNormalization. "
                        f"Received: norm={norm!r}")
    x = tf.convert_to_tensor(x)
    if not norm.built:
        norm.build(x.shape)
    if norm.axis not in (-1, len(x.shape) - 1):
        out = norm(x)
        return keras.ops.relu(out) if relu else out
    compute = _compute_dtype(x.dtype)
    gamma = tf.cast(norm.gamma, compute) if norm.scale else None
    beta = tf.cast(norm.beta, compute) if norm.center else None
    function = _compiled if compiled and not jit.inside_xla() else _normalize
    return function(x, gamma, beta, groups=norm.groups, epsilon=float(norm.epsilon), relu=relu)


class _Groups:
    """Per-group means and their broadcast back to channels, for a channels-last ``x``."""

    def __init__(self, x, groups):
        self.groups, self.channels = groups, x.shape[-1]
        self.size = self.channels // groups
        self.axes = list(range(1, len(x.shape) - 1))
        self.count = tf.cast(tf.reduce_prod(tf.shape(x)[1:-1]) * self.size, x.dtype)

    def mean(self, v):  # (batch, ..., channels) -> (batch, groups): each group's mean
        return self.mean_of_sums(tf.reduce_sum(v, self.axes))

    def mean_of_sums(self, sums):  # (batch, channels) of spatial sums -> (batch, groups)
        return tf.reduce_sum(tf.reshape(sums, [-1, self.groups, self.size]), -1) / self.count

    def per_channel(self, v):  # (batch, groups) -> (batch, 1, ..., 1, channels)
        return tf.reshape(tf.repeat(v, self.size, axis=-1),
                          [-1] + [1] * len(self.axes) + [self.channels])


def _compute_dtype(dtype):
    return tf.float64 if dtype == tf.float64 else tf.float32


def _normalize_with_statistics(x, gamma, beta, groups, epsilon, relu):
    """``(out, mean, rstd)``: the normalised ``x`` and each group's mean and 1/std."""
    dtype = x.dtype
    x = tf.cast(x, _compute_dtype(dtype))
    by = _Groups(x, groups)
    mean = by.mean(x)
    centered = x - by.per_channel(mean)
    rstd = tf.math.rsqrt(by.mean(tf.square(centered)) + epsilon)
    out = _scale_and_shift(centered, by.per_channel(rstd), gamma, beta)
    if isinstance(relu, bool):
        out = tf.nn.relu(out) if relu else out
    else:  # a boolean tensor (the compiled norm: one program with and without the ReLU)
        out = tf.where(relu, tf.nn.relu(out), out)
    return tf.cast(out, dtype), mean, rstd


def _scale_and_shift(centered, rstd, gamma, beta):
    """``centered * rstd * gamma + beta`` (either weight ``None`` when absent), in one order
    for the forward and for the gradient's ReLU mask."""
    scale = rstd if gamma is None else rstd * gamma
    out = centered * scale
    return out if beta is None else out + beta


def _normalize(x, gamma, beta, groups, epsilon, relu):
    return _normalize_with_statistics(x, gamma, beta, groups, epsilon, relu)[0]


def _normalize_gradient(x, gamma, beta, mean, rstd, upstream, groups, relu):
    """The gradients for ``x`` and the given ones of ``gamma``, ``beta``, from the
    forward's statistics: with ``g`` the upstream gradient times ``gamma``, the usual
    closed form ``rstd * (g - mean(g) - xhat * mean(g * xhat))`` per group. Both means,
    and the weights' gradients, come from two per-channel spatial sums (one pass over
    the state), then one more pass gives the input's gradient."""
    dtype = x.dtype
    x = tf.cast(x, _compute_dtype(dtype))
    by = _Groups(x, groups)
    centered, rstd = x - by.per_channel(mean), by.per_channel(rstd)
    xhat = centered * rstd
    upstream = tf.cast(upstream, x.dtype)
    # Where the forward's ReLU (``relu``, a boolean tensor) passed its input, computed as
    # there.
    passed = (_scale_and_shift(centered, rstd, gamma, beta) > 0) | tf.logical_not(relu)
    upstream = tf.where(passed, upstream, tf.zeros_like(upstream))
    sums = tf.reduce_sum(upstream, by.axes)  # (batch, channels)
    sums_xhat = tf.reduce_sum(upstream * xhat, by.axes)
    gradients = []
    if gamma is not None:
        gradients.append(tf.reduce_sum(sums_xhat, 0))
    if beta is not None:
        gradients.append(tf.reduce_sum(sums, 0))
    g = upstream
    if gamma is not None:
        g, sums, sums_xhat = upstream * gamma, sums * gamma, sums_xhat * gamma
    dx = rstd * (g - by.per_channel(by.mean_of_sums(sums))
                 - xhat * by.per_channel(by.mean_of_sums(sums_xhat)))
    return [tf.cast(dx, dtype)] + gradients


# Each traced once per input signature and (groups, epsilon); ``relu`` is a tensor.
_forward = tf.function(_normalize_with_statistics, jit_compile=True, autograph=False,
                       reduce_retracing=False)
_backward = tf.function(_normalize_gradient, jit_compile=True, autograph=False,
                        reduce_retracing=False)


def _compiled(x, gamma, beta, groups, epsilon, relu):
    """``_normalize`` as one XLA program, its gradient as another that reads the input
    and each group's two statistics only (the module docstring says why)."""
    present = [v is not None for v in (gamma, beta)]

    @tf.custom_gradient
    def normalize(x, *weights):
        given = iter(weights)
        gamma_, beta_ = [next(given) if p else None for p in present]
        # ``relu`` as a tensor: one forward and one gradient program per input signature,
        # with and without the ReLU (a compilation costs 0.13-0.19 s of the first call).
        # Each side makes its own constant: one the gradient captured would be exported
        # by every call, and stored at every step of a loop's gradient.
        out, mean, rstd = _forward(x, gamma_, beta_, groups=groups, epsilon=epsilon,
                                   relu=tf.constant(relu))

        def gradient(upstream):
            return _backward(x, gamma_, beta_, mean, rstd, upstream, groups=groups,
                             relu=tf.constant(relu))

        return out, gradient

    return normalize(x, *[v for v in (gamma, beta) if v is not None])
