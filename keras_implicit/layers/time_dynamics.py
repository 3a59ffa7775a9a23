"""Dynamics building blocks: layers that take the ODE time ``t`` as an extra input.

``takes_time`` tells whether a dynamics layer's ``call`` accepts ``t``; the
``Concat*`` layers append ``t`` as a feature or a channel.
"""

import inspect

import keras
import numpy as np
from keras import ops

from keras_implicit import validation
from keras_implicit.solvers import state as state_ops


def takes_time(layer):
    """Whether a dynamics layer's ``call`` accepts the keyword ``t``."""
    parameters = inspect.signature(layer.call).parameters
    return "t" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def compute_dtype(layer):
    """The dtype ``layer`` evaluates in: its compute dtype, or for a Keras model
    (``Sequential``, functional) the narrowest compute dtype of its layers.

    A model's own policy need not be its layers' (``keras.Sequential([Dense(...,
    dtype="float64")])`` keeps the global policy): its layers cast their inputs
    themselves, so their dtypes are what the model computes in.
    """
    if isinstance(layer, keras.Model):
        dtypes = {sub.compute_dtype for sub in layer._flatten_layers(include_self=False)
                  if not isinstance(sub, keras.layers.InputLayer)}
        if dtypes:
            return max(sorted(dtypes), key=lambda d: float(state_ops.finfo(d).eps))
    return layer.compute_dtype


def call_dynamics(layer, state, t, time_dependent=None):
    """``layer(state, t=t)`` if it takes time, else ``layer(state)``, in the layer's compute dtype.

    ``state`` and ``t`` are cast to the layer's compute dtype (``compute_dtype``)
    and the output back to the state's dtype: under a mixed policy, float16 or
    bfloat16 dynamics of a float32 state (``solve_precision.check_compatible``
    refuses other pairs).
    """
    if time_dependent is None:
        time_dependent = takes_time(layer)
    dtype = keras.backend.standardize_dtype(state.dtype)
    compute = compute_dtype(layer)
    if compute != dtype:
        state = ops.cast(state, compute)
        if t is not None:
            t = ops.cast(t, compute)
    out = layer(state, t=t) if time_dependent else layer(state)
    # Same dtypes: the output is left as it is, for the callers' dtype checks.
    return out if compute == dtype else ops.cast(out, dtype)


def _scalar_time(t, dtype):
    """``t`` as a scalar tensor of ``dtype``; one time for the whole batch, as every
    solver passes it (a ``(batch,)`` time would broadcast against the wrong axis)."""
    # convert_to_tensor with a dtype keeps Python floats at full precision in float64.
    t = ops.convert_to_tensor(t, dtype=dtype)
    if t.shape.rank not in (None, 0):
        raise ValueError(f"`t` must be a scalar: the ODE's time, one value for the whole "
                         f"batch. Received: t with shape {tuple(t.shape)}")
    return t


def _time_column(inputs, t):
    """``t`` broadcast to ``inputs``' shape with one feature/channel."""
    like = inputs[..., :1]
    if t is None:
        return ops.zeros_like(like)
    return ops.ones_like(like) * _scalar_time(t, inputs.dtype)


@keras.saving.register_keras_serializable(package="keras_implicit")
class ConcatDense(keras.layers.Layer):
    """A dense layer whose input is ``[x, t]``: time-dependent dynamics.

    Args:
        units: output size. For an ODE's dynamics it equals the input size.
        activation, use_bias, kernel_initializer, bias_initializer,
        kernel_regularizer, bias_regularizer: as in ``keras.layers.Dense``.

    Call arguments:
        inputs: ``(batch, ..., features)``.
        t: scalar time (keyword only); ``None`` means 0.

    Returns:
        ``(batch, ..., units)``.

    Example:
        >>> layer = ki.layers.ConcatDense(8, activation="tanh")
        >>> layer(keras.ops.ones((2, 8)), t=0.5).shape
        (2, 8)
    """

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.units = validation.positive_int("units", units)
        self.dense = keras.layers.Dense(
            units, activation=activation, use_bias=use_bias,
            kernel_initializer=kernel_initializer, bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer,
            dtype=self.dtype_policy, name="dense",
        )

    def build(self, input_shape):
        self.dense.build(tuple(input_shape[:-1]) + (input_shape[-1] + 1,))

    def call(self, inputs, t=None):
        dense = self.dense
        if dense.quantization_mode is not None:  # a quantized Dense computes its own product
            return dense(ops.concatenate([inputs, _time_column(inputs, t)], axis=-1))
        # dense([x, t]) computed as x K_x + (t K_t + b), with K_x and K_t the kernel's rows
        # for the features and for t (the weights stay one kernel, LoRA included): no
        # concatenation, and a product over the state's own width.
        kernel = dense.kernel
        features = kernel.shape[0] - 1
        out = ops.matmul(inputs, kernel[:features])
        time_share = None if t is None else kernel[features] * _scalar_time(t, inputs.dtype)
        out = _add_shift(out, time_share, dense.bias if dense.use_bias else None)
        return out if dense.activation is None else dense.activation(out)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        dense = self.dense.get_config()
        return {
            **super().get_config(),
            "units": self.units,
            "activation": dense["activation"],
            "use_bias": dense["use_bias"],
            "kernel_initializer": dense["kernel_initializer"],
            "bias_initializer": dense["bias_initializer"],
            "kernel_regularizer": dense["kernel_regularizer"],
            "bias_regularizer": dense["bias_regularizer"],
        }


@keras.saving.register_keras_serializable(package="keras_implicit")
class ConcatConv2D(keras.layers.Layer):
    """A 2-D convolution whose input has ``t`` as an extra channel (the ODE-Net's block).

    Args:
        filters, kernel_size, strides, padding, dilation_rate, activation,
        use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
        bias_regularizer: as in ``keras.layers.Conv2D`` (``padding`` defaults
            to ``"same"`` so that the dynamics keep the state's shape).

    Call arguments:
        inputs: ``(batch, height, width, channels)``.
        t: scalar time (keyword only); ``None`` means 0.

    Returns:
        ``(batch, new_height, new_width, filters)``.

    Example:
        >>> conv = ki.layers.ConcatConv2D(64, 3)
        >>> conv(keras.ops.ones((2, 6, 6, 64)), t=0.1).shape
        (2, 6, 6, 64)

    Reference:
        Chen et al. 2018, Neural Ordinary Differential Equations (ODE-Net).
    """

    def __init__(self, filters, kernel_size, strides=1, padding="same", dilation_rate=1,
                 activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.filters = validation.positive_int("filters", filters)
        self.conv = keras.layers.Conv2D(
            filters, kernel_size, strides=strides, padding=padding, dilation_rate=dilation_rate,
            activation=activation, use_bias=use_bias, kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer, kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer, data_format="channels_last",
            dtype=self.dtype_policy, name="conv",
        )

    def build(self, input_shape):
        self.conv.build(tuple(input_shape[:-1]) + (input_shape[-1] + 1,))

    def call(self, inputs, t=None):
        # conv([x, t]) computed as conv(x, K_x) + t * conv(ones, K_t), with K_x and K_t the
        # kernel split by input channel (the weights stay one kernel). No concatenation, and
        # the state's convolution has the state's channel count: TensorFlow's oneDNN input
        # gradient took 0.49 ms with 65 input channels against 0.34 ms with 64 (6x6, batch
        # 64), and the ODE block's backprop step 102 against 111 ms (batch 64), 174 against
        # 198 ms (batch 128).
        conv = self.conv
        channels = inputs.shape[-1]
        kernel_x, kernel_t = ops.split(conv.kernel, [channels], axis=2)
        arguments = dict(strides=conv.strides, padding=conv.padding,
                         dilation_rate=conv.dilation_rate, data_format="channels_last")
        out = ops.conv(inputs, kernel_x, **arguments)
        time_share = None if t is None else (
            _time_map(inputs, kernel_t, conv.kernel_size, arguments)
            * _scalar_time(t, inputs.dtype))
        out = _add_shift(out, time_share, conv.bias if conv.use_bias else None)
        return out if conv.activation is None else conv.activation(out)

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(tuple(input_shape[:-1]) + (input_shape[-1] + 1,))

    def get_config(self):
        conv = self.conv.get_config()
        keys = ["kernel_size", "strides", "padding", "dilation_rate", "activation", "use_bias",
                "kernel_initializer", "bias_initializer", "kernel_regularizer",
                "bias_regularizer"]
        return {**super().get_config(), "filters": self.filters, **{k: conv[k] for k in keys}}


def _add_shift(out, time_share, bias):
    """``out + (time_share + bias)``, either term ``None`` when absent: the two terms, which
    have no batch axis, are added to each other first and then to ``out``, so that the
    state-sized add and its gradient's state-sized reduction happen once, not twice
    (ConcatConv2D's backprop step 1-3% faster)."""
    if time_share is None:
        shift = bias
    elif bias is None:
        shift = time_share
    else:
        shift = time_share + bias
    return out if shift is None else out + shift


def _time_map(inputs, kernel_t, kernel_size, arguments):
    """``conv(ones, kernel_t)`` for ``inputs``' spatial shape: the output of a constant
    channel of ones, ``(1, height, width, filters)`` (it differs at the borders where the
    padding zeros reach in). With static spatial dimensions, a matrix product of the
    kernel's taps by which taps each output position reaches (found in NumPy, by the
    padding's rule); otherwise a convolution of a one-sample image of ones."""
    height, width = inputs.shape[1], inputs.shape[2]
    if height is None or width is None:
        ones = ops.ones_like(inputs[:1, :, :, :1])
        return ops.conv(ones, kernel_t, **arguments)
    rows = _taps_reached(height, kernel_size[0], arguments["strides"][0],
                         arguments["dilation_rate"][0], arguments["padding"])
    columns = _taps_reached(width, kernel_size[1], arguments["strides"][1],
                            arguments["dilation_rate"][1], arguments["padding"])
    # reached[(i, j), (a, b)] = rows[i, a] * columns[j, b], flattened as the kernel is.
    reached = np.einsum("ia,jb->ijab", rows, columns).reshape(
        rows.shape[0] * columns.shape[0], kernel_size[0] * kernel_size[1])
    taps = ops.reshape(kernel_t, (kernel_size[0] * kernel_size[1], -1))
    time_map = ops.matmul(ops.convert_to_tensor(reached, dtype=inputs.dtype), taps)
    return ops.reshape(time_map, (1, rows.shape[0], columns.shape[0], -1))


def _taps_reached(size, kernel, stride, dilation, padding):
    """``(outputs, kernel)`` 0/1 matrix: which kernel taps of each output position fall
    inside an input of ``size`` along one axis (``"same"``: TensorFlow's padding, the
    smaller half before)."""
    span = (kernel - 1) * dilation + 1
    if padding == "same":
        outputs = -(-size // stride)
        before = max((outputs - 1) * stride + span - size, 0) // 2
    else:
        outputs = -(-(size - span + 1) // stride)
        before = 0
    positions = (np.arange(outputs)[:, None] * stride - before
                 + np.arange(kernel)[None, :] * dilation)
    return ((positions >= 0) & (positions < size)).astype("float64")


@keras.saving.register_keras_serializable(package="keras_implicit")
class ConcatMLP(keras.layers.Layer):
    """Time-dependent MLP dynamics: every layer sees ``[h, t]`` (a stack of ``ConcatDense``).

    The output has the input's size, as the dynamics of an ODE on vectors must.

    Args:
        hidden_units: sizes of the hidden layers, e.g. ``(64, 64, 64)``.
        activation: activation of the hidden layers (the output is linear).

    Call arguments:
        inputs: ``(batch, features)``.
        t: scalar time (keyword); ``None`` means 0.

    Returns:
        ``(batch, features)``.

    Example:
        >>> ConcatMLP((64, 64, 64))(keras.ops.ones((4, 2)), t=0.5).shape
        (4, 2)

    Reference:
        Grathwohl et al. 2019 (FFJORD): the "concat" layers of its toy experiments.
    """

    def __init__(self, hidden_units=(64, 64, 64), activation="tanh", **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = validation.check_shape("hidden_units", hidden_units)
        self.activation = keras.activations.get(activation)
        self.hidden = [ConcatDense(u, activation=activation, dtype=self.dtype_policy,
                                   name=f"hidden_{i}") for i, u in enumerate(self.hidden_units)]
        self.output_layer = None

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(f"ConcatMLP needs inputs of shape (batch, features). "
                             f"Received: input_shape={tuple(input_shape)}")
        shape = tuple(input_shape)
        for layer in self.hidden:
            layer.build(shape)
            shape = shape[:-1] + (layer.units,)
        self.output_layer = ConcatDense(input_shape[-1], dtype=self.dtype_policy, name="output")
        self.output_layer.build(shape)

    def call(self, inputs, t=None):
        h = inputs
        for layer in self.hidden:
            h = layer(h, t=t)
        return self.output_layer(h, t=t)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "hidden_units": list(self.hidden_units),
                "activation": keras.activations.serialize(self.activation)}
