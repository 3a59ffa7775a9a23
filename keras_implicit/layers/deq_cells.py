"""Cells for ``DEQ``: layers whose ``call(z, x)`` returns the next ``z``."""

import keras

from keras_implicit.layers.normalization import group_norm


@keras.saving.register_keras_serializable(package="keras_implicit")
class DEQDenseCell(keras.layers.Layer):
    """A dense DEQ cell: ``z_next = activation(z W + x U + b)``.

    ``W`` maps the state to itself (its size is the state's last axis);
    ``U`` maps the input's last axis to it. A small ``W`` (the default,
    orthogonal with gain 0.5) makes the map a contraction, so its fixed point
    exists and the solvers converge.

    Args:
        activation: activation (default ``"tanh"``, 1-Lipschitz).
        recurrent_initializer: initializer of ``W`` (default orthogonal, gain 0.5).
        kernel_initializer: initializer of ``U`` (default Glorot uniform).
        use_bias: whether to add ``b``.
        **kwargs: ``keras.layers.Layer`` arguments.

    Call arguments:
        z: ``(batch, ..., units)`` state.
        x: ``(batch, ..., features)`` input.

    Returns:
        The next state, ``z``'s shape.

    Example:
        >>> deq = ki.layers.DEQ(DEQDenseCell(), state_shape=(32,))
    """

    def __init__(self, activation="tanh", recurrent_initializer=None,
                 kernel_initializer="glorot_uniform", use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.activation = keras.activations.get(activation)
        self.recurrent_initializer = keras.initializers.get(
            recurrent_initializer or keras.initializers.Orthogonal(gain=0.5))
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.use_bias = bool(use_bias)

    def build(self, z_shape, x_shape):
        units, features = z_shape[-1], x_shape[-1]
        self.recurrent_kernel = self.add_weight(
            name="recurrent_kernel", shape=(units, units), initializer=self.recurrent_initializer)
        self.kernel = self.add_weight(
            name="kernel", shape=(features, units), initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(units,), initializer="zeros") \
            if self.use_bias else None

    def call(self, z, x):
        out = keras.ops.matmul(z, self.recurrent_kernel) + keras.ops.matmul(x, self.kernel)
        if self.bias is not None:
            out = out + self.bias
        return self.activation(out)

    def compute_output_shape(self, z_shape, x_shape):
        return tuple(z_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "activation": keras.activations.serialize(self.activation),
            "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "use_bias": self.use_bias,
        }


@keras.saving.register_keras_serializable(package="keras_implicit")
class DEQConvCell(keras.layers.Layer):
    """The residual convolutional DEQ cell of Bai et al. (channels last)::

        y = GroupNorm(relu(conv1(z)))
        z_next = GroupNorm(relu(z + GroupNorm(x + conv2(y))))

    ``conv1`` maps the state's channels to ``hidden_channels``, ``conv2``
    back; the input ``x`` (the injection) has the state's shape. Group
    normalisation (per sample) keeps the iterates bounded; the small initial
    kernels (normal, stddev 0.01) make the cell close to a contraction.

    Args:
        hidden_channels: channels of the inner convolution, >= 1.
        kernel_size: of both convolutions (odd; "same" padding).
        groups: groups of the normalisations; must divide the state's
            channels and ``hidden_channels``.
        kernel_initializer: of both convolutions.
        **kwargs: ``keras.layers.Layer`` arguments.

    Call arguments:
        z: ``(batch, height, width, channels)`` state.
        x: the injection, ``z``'s shape.

    Returns:
        The next state, ``z``'s shape.

    Example:
        >>> deq = ki.layers.DEQ(DEQConvCell(hidden_channels=64, groups=8))

    Reference:
        Bai, Kolter & Koltun 2019, Deep Equilibrium Models (and the NeurIPS
        2020 tutorial "Deep Implicit Layers", chapter 4).
    """

    def __init__(self, hidden_channels, kernel_size=3, groups=8, kernel_initializer=None,
                 **kwargs):
        super().__init__(**kwargs)
        for name, value in (("hidden_channels", hidden_channels), ("kernel_size", kernel_size),
                            ("groups", groups)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1. Received: {name}={value!r}")
        if hidden_channels % groups:
            raise ValueError(f"`groups` must divide `hidden_channels`. Received: groups={groups}, "
                             f"hidden_channels={hidden_channels}")
        self.hidden_channels = hidden_channels
        self.kernel_size = kernel_size
        self.groups = groups
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or keras.initializers.RandomNormal(stddev=0.01))

    def build(self, z_shape, x_shape):
        channels = z_shape[-1]
        if channels % self.groups:
            raise ValueError(f"`groups` must divide the state's channels. Received: "
                             f"groups={self.groups} for a state of shape {tuple(z_shape)}")
        if tuple(x_shape)[1:] != tuple(z_shape)[1:]:
            raise ValueError(f"The input must have the state's shape {tuple(z_shape)}. "
                             f"Received: input shape {tuple(x_shape)}")

        def conv(filters, name):
            return keras.layers.Conv2D(
                filters, self.kernel_size, padding="same", use_bias=False,
                kernel_initializer=self.kernel_initializer, dtype=self.dtype_policy, name=name)

        def norm(name):
            return keras.layers.GroupNormalization(self.groups, dtype=self.dtype_policy, name=name)

        self.conv1, self.conv2 = conv(self.hidden_channels, "conv1"), conv(channels, "conv2")
        self.norm1, self.norm2, self.norm3 = norm("norm1"), norm("norm2"), norm("norm3")
        hidden_shape = tuple(z_shape)[:-1] + (self.hidden_channels,)
        self.conv1.build(z_shape)
        self.norm1.build(hidden_shape)
        self.conv2.build(hidden_shape)
        self.norm2.build(z_shape)
        self.norm3.build(z_shape)

    def call(self, z, x):
        y = group_norm(self.norm1, keras.ops.relu(self.conv1(z)))
        return group_norm(self.norm3, keras.ops.relu(z + group_norm(self.norm2, x + self.conv2(y))))

    def compute_output_shape(self, z_shape, x_shape):
        return tuple(z_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_channels": self.hidden_channels,
            "kernel_size": self.kernel_size,
            "groups": self.groups,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }
