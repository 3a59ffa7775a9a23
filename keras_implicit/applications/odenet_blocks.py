"""The blocks of the Neural ODE paper's MNIST networks: ODE dynamics and residual block."""

import keras

from keras_implicit.layers.normalization import group_norm
from keras_implicit.layers.time_dynamics import ConcatConv2D


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1. Received: {name}={value!r}")
    return value


def _check_groups(filters, groups):
    _check_positive_int("groups", groups)
    if filters % groups:
        raise ValueError(f"`filters` must be a multiple of `groups`. Received: "
                         f"filters={filters}, groups={groups}")
    return groups


def _check_channels(layer, input_shape):
    if len(input_shape) != 4:
        raise ValueError(f"{type(layer).__name__} expects images (batch, height, width, "
                         f"channels). Received: input_shape={tuple(input_shape)}")
    if input_shape[-1] != layer.filters:
        raise ValueError(
            f"{type(layer).__name__} keeps the state's shape, so the input must have "
            f"filters={layer.filters} channels. Received: input_shape={tuple(input_shape)}")


def _group_norm(groups, name, dtype_policy):
    # Epsilon of torch.nn.GroupNorm, as in the paper's code.
    return keras.layers.GroupNormalization(groups=groups, epsilon=1e-5, name=name,
                                           dtype=dtype_policy)


@keras.saving.register_keras_serializable(package="keras_implicit")
class ODEBlockDynamics(keras.layers.Layer):
    """The ODE-Net's dynamics ``f(z, t)`` on a feature map (the paper's ``ODEfunc``).

    GroupNorm → ReLU → ConcatConv2D(3×3) → GroupNorm → ReLU → ConcatConv2D(3×3)
    → GroupNorm, where each ``ConcatConv2D`` sees ``t`` as an extra channel.
    The output has the input's shape, so the layer is the ``dynamics`` of a
    ``NeuralODE`` (ODE-Net, adaptive solver; RK-Net, fixed-grid solver).

    Args:
        filters: channels of the state (input and output), default 64.
        groups: groups of each GroupNormalization; ``filters`` must be a
            multiple of it. Default 32 (``min(32, dim)`` in the paper's code).
        kernel_size: size of both convolutions, default 3.
        **kwargs: ``keras.layers.Layer`` arguments.

    Call arguments:
        inputs: ``(batch, height, width, filters)``.
        t: scalar time (keyword only); ``None`` means 0.

    Returns:
        ``(batch, height, width, filters)``: d(state)/dt.

    Example:
        >>> ode = ki.layers.NeuralODE(ki.applications.ODEBlockDynamics(64), solver="dopri5")
        >>> ode(keras.ops.ones((2, 6, 6, 64))).shape
        (2, 6, 6, 64)

    Reference:
        Chen, Rubanova, Bettencourt & Duvenaud 2018, Neural Ordinary
        Differential Equations, Table 1 (code: torchdiffeq/examples/odenet_mnist.py).
    """

    def __init__(self, filters=64, groups=32, kernel_size=3, **kwargs):
        super().__init__(**kwargs)
        self.filters = _check_positive_int("filters", filters)
        self.groups = _check_groups(filters, groups)
        self.kernel_size = _check_positive_int("kernel_size", kernel_size)
        policy = self.dtype_policy
        self.norm1 = _group_norm(groups, "norm1", policy)
        self.conv1 = ConcatConv2D(filters, kernel_size, padding="same", name="conv1",
                                  dtype=policy)
        self.norm2 = _group_norm(groups, "norm2", policy)
        self.conv2 = ConcatConv2D(filters, kernel_size, padding="same", name="conv2",
                                  dtype=policy)
        self.norm3 = _group_norm(groups, "norm3", policy)

    def build(self, input_shape):
        _check_channels(self, input_shape)
        for layer in (self.norm1, self.conv1, self.norm2, self.conv2, self.norm3):
            layer.build(input_shape)

    def call(self, inputs, t=None):
        # The norms (with their ReLUs) compiled by XLA, the convolutions left to
        # TensorFlow's kernels (keras_implicit.layers.group_norm).
        out = group_norm(self.norm1, inputs, relu=True, compiled=True)
        out = group_norm(self.norm2, self.conv1(out, t=t), relu=True, compiled=True)
        return group_norm(self.norm3, self.conv2(out, t=t), compiled=True)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "groups": self.groups,
                "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package="keras_implicit")
class ResidualBlock(keras.layers.Layer):
    """A pre-activation residual block, the ResNet's unit in the paper's MNIST table.

    ``x + conv(ReLU(GroupNorm(conv(ReLU(GroupNorm(x))))))`` with 3×3
    convolutions without bias, as ``ResBlock`` in the paper's code.

    Args:
        filters: channels of the input and output, default 64.
        groups: groups of each GroupNormalization, default 32.
        kernel_size: size of both convolutions, default 3.
        **kwargs: ``keras.layers.Layer`` arguments.

    Call arguments:
        inputs: ``(batch, height, width, filters)``.

    Returns:
        ``(batch, height, width, filters)``.

    Example:
        >>> block = ki.applications.ResidualBlock(64)
        >>> block(keras.ops.ones((2, 6, 6, 64))).shape
        (2, 6, 6, 64)

    Reference:
        He, Zhang, Ren & Sun 2016, Identity Mappings in Deep Residual Networks;
        Chen et al. 2018, Neural Ordinary Differential Equations, Table 1.
    """

    def __init__(self, filters=64, groups=32, kernel_size=3, **kwargs):
        super().__init__(**kwargs)
        self.filters = _check_positive_int("filters", filters)
        self.groups = _check_groups(filters, groups)
        self.kernel_size = _check_positive_int("kernel_size", kernel_size)
        policy = self.dtype_policy
        self.norm1 = _group_norm(groups, "norm1", policy)
        self.conv1 = keras.layers.Conv2D(filters, kernel_size, padding="same", use_bias=False,
                                         name="conv1", dtype=policy)
        self.norm2 = _group_norm(groups, "norm2", policy)
        self.conv2 = keras.layers.Conv2D(filters, kernel_size, padding="same", use_bias=False,
                                         name="conv2", dtype=policy)

    def build(self, input_shape):
        _check_channels(self, input_shape)
        for layer in (self.norm1, self.conv1, self.norm2, self.conv2):
            layer.build(input_shape)

    def call(self, inputs):
        out = self.conv1(group_norm(self.norm1, inputs, relu=True, compiled=True))
        out = self.conv2(group_norm(self.norm2, out, relu=True, compiled=True))
        return inputs + out

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "groups": self.groups,
                "kernel_size": self.kernel_size}
