"""Layers that take the ODE time ``t`` as an extra input: dynamics building blocks."""

import keras
from keras import ops


def _time_column(inputs, t):
    """``t`` broadcast to ``inputs``' shape with one feature/channel."""
    like = inputs[..., :1]
    if t is None:
        return ops.zeros_like(like)
    # convert_to_tensor with a dtype keeps Python floats at full precision in float64.
    return ops.ones_like(like) * ops.convert_to_tensor(t, dtype=inputs.dtype)


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
        if not isinstance(units, int) or isinstance(units, bool) or units < 1:
            raise ValueError(f"`units` must be an int >= 1. Received: units={units!r}")
        self.units = units
        self.dense = keras.layers.Dense(
            units, activation=activation, use_bias=use_bias,
            kernel_initializer=kernel_initializer, bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer,
            dtype=self.dtype_policy, name="dense",
        )

    def build(self, input_shape):
        self.dense.build(tuple(input_shape[:-1]) + (input_shape[-1] + 1,))

    def call(self, inputs, t=None):
        return self.dense(ops.concatenate([inputs, _time_column(inputs, t)], axis=-1))

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
        if not isinstance(filters, int) or isinstance(filters, bool) or filters < 1:
            raise ValueError(f"`filters` must be an int >= 1. Received: filters={filters!r}")
        self.filters = filters
        self.conv = keras.layers.Conv2D(
            filters, kernel_size, strides=strides, padding=padding, dilation_rate=dilation_rate,
            activation=activation, use_bias=use_bias, kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer, kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer, dtype=self.dtype_policy, name="conv",
        )

    def build(self, input_shape):
        self.conv.build(tuple(input_shape[:-1]) + (input_shape[-1] + 1,))

    def call(self, inputs, t=None):
        return self.conv(ops.concatenate([inputs, _time_column(inputs, t)], axis=-1))

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(tuple(input_shape[:-1]) + (input_shape[-1] + 1,))

    def get_config(self):
        conv = self.conv.get_config()
        keys = ["kernel_size", "strides", "padding", "dilation_rate", "activation", "use_bias",
                "kernel_initializer", "bias_initializer", "kernel_regularizer",
                "bias_regularizer"]
        return {**super().get_config(), "filters": self.filters, **{k: conv[k] for k in keys}}
