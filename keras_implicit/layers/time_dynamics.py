"""Dynamics building blocks: layers that take the ODE time ``t`` as an extra input.

``takes_time`` tells whether a dynamics layer's ``call`` accepts ``t``; the
``Concat*`` layers append ``t`` as a feature or a channel.
"""

import inspect

import keras
from keras import ops

from keras_implicit import validation


def takes_time(layer):
    """Whether a dynamics layer's ``call`` accepts the keyword ``t``."""
    parameters = inspect.signature(layer.call).parameters
    return "t" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def call_dynamics(layer, state, t, time_dependent=None):
    """``layer(state, t=t)`` if it takes time, else ``layer(state)``."""
    if time_dependent is None:
        time_dependent = takes_time(layer)
    return layer(state, t=t) if time_dependent else layer(state)


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
        self.filters = validation.positive_int("filters", filters)
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
