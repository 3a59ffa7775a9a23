"""The four MNIST classifiers of the Neural ODE paper's Table 1, as Keras models."""

import keras

from keras_implicit.applications.odenet_blocks import ODEBlockDynamics, ResidualBlock
from keras_implicit.layers.neural_ode import NeuralODE
from keras_implicit.solvers import base as solver_base

KINDS = ("mlp", "resnet", "rknet", "odenet")

# Table 1 of Chen et al. 2018: test error (%), parameters (millions), memory, time.
PAPER_TABLE1 = {
    "mlp": {"test_error": 1.60, "params_m": 0.24, "memory": "-", "time": "-"},
    "resnet": {"test_error": 0.41, "params_m": 0.60, "memory": "O(L)", "time": "O(L)"},
    "rknet": {"test_error": 0.47, "params_m": 0.22, "memory": "O(L~)", "time": "O(L~)"},
    "odenet": {"test_error": 0.42, "params_m": 0.22, "memory": "O(1)", "time": "O(L~)"},
}

# Solver settings of the two ODE kinds; ``solver=``, ``num_steps=``, ``gradient=`` override.
ODE_DEFAULTS = {
    "rknet": {"solver": "rk4", "num_steps": 4, "gradient": "backprop"},
    "odenet": {"solver": "dopri5", "num_steps": None, "gradient": "adjoint"},
}


def _check_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}. Received: {name}={value!r}")
    return value


def _downsampling(x, filters, groups):
    """28×28×1 → 26×26 (3×3 valid) → 13×13 → 6×6 (two 4×4 stride-2 convs, padding 1)."""
    x = keras.layers.Conv2D(filters, 3, name="downsample_conv1")(x)
    x = keras.layers.GroupNormalization(groups, epsilon=1e-5, name="downsample_norm1")(x)
    x = keras.layers.ReLU(name="downsample_relu1")(x)
    x = keras.layers.ZeroPadding2D(1, name="downsample_pad2")(x)
    x = keras.layers.Conv2D(filters, 4, strides=2, name="downsample_conv2")(x)
    x = keras.layers.GroupNormalization(groups, epsilon=1e-5, name="downsample_norm2")(x)
    x = keras.layers.ReLU(name="downsample_relu2")(x)
    x = keras.layers.ZeroPadding2D(1, name="downsample_pad3")(x)
    return keras.layers.Conv2D(filters, 4, strides=2, name="downsample_conv3")(x)


def _head(x, groups, num_classes):
    x = keras.layers.GroupNormalization(groups, epsilon=1e-5, name="head_norm")(x)
    x = keras.layers.ReLU(name="head_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    return keras.layers.Dense(num_classes, name="logits")(x)


def odenet_mnist(kind="odenet", *, input_shape=(28, 28, 1), num_classes=10, filters=64,
                 groups=32, num_blocks=None, hidden_units=None, solver=None, num_steps=None,
                 gradient=None, rtol=1e-3, atol=1e-3, jit_dynamics=None, name=None):
    """Builds one of the paper's MNIST classifiers: MLP, ResNet, RK-Net or ODE-Net.

    All but the MLP share a downsampling stem (conv 3×3 → GroupNorm → ReLU →
    two stride-2 4×4 convs, GroupNorm/ReLU between them) that maps a 28×28
    image to a 6×6×``filters`` state, and a head GroupNorm → ReLU → global
    average pool → Dense(``num_classes``). Between them:

    - ``"resnet"``: ``num_blocks`` (6) pre-activation :class:`ResidualBlock`\\ s
      (≈0.58M parameters; memory O(L) in the depth).
    - ``"rknet"``: a ``NeuralODE`` over t ∈ [0, 1] with
      :class:`ODEBlockDynamics`, fixed-grid RK4 with ``num_steps`` (4) steps,
      differentiated by backpropagation through the solver (≈0.21M; memory
      O(L~) in the number of evaluations).
    - ``"odenet"``: the same ``NeuralODE`` solved by adaptive dopri5 with
      ``rtol = atol = 1e-3``, differentiated by the continuous adjoint
      (≈0.21M; memory O(1)).
    - ``"mlp"``: flatten → Dense(``hidden_units`` = 300, ReLU) → Dense (≈0.24M).

    Args:
        kind: ``"odenet"`` (default), ``"rknet"``, ``"resnet"`` or ``"mlp"``.
        input_shape: image shape, default ``(28, 28, 1)``; inputs are floats
            (the table's pipeline scales pixels to [0, 1]).
        num_classes: outputs of the final Dense layer (logits), default 10.
        filters: channels of the convolutional state, default 64.
        groups: GroupNormalization groups, default 32.
        num_blocks: ``"resnet"`` only: number of residual blocks, default 6.
        hidden_units: ``"mlp"`` only: width of the hidden layer, default 300.
        solver, num_steps, gradient: ODE kinds only: override the
            ``NeuralODE``'s solver (``"rknet"``: ``"rk4"``, 4 steps,
            ``"backprop"``; ``"odenet"``: ``"dopri5"``, ``"adjoint"``).
        rtol, atol: tolerances of adaptive solvers, default 1e-3.
        jit_dynamics: ODE kinds only: compile the dynamics with XLA
            (``NeuralODE(jit_dynamics=True)``), default False.
        name: model name, default ``kind``.

    Returns:
        An uncompiled ``keras.Model`` mapping images to logits. The
        ODE kinds' ``NeuralODE`` layer is named ``"neural_ode"``.

    Example:
        >>> model = ki.applications.odenet_mnist("odenet")
        >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        208266

    Reference:
        Chen, Rubanova, Bettencourt & Duvenaud 2018, Neural Ordinary
        Differential Equations, Table 1.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown `kind`. Valid kinds: {list(KINDS)}. Received: kind={kind!r}")
    _reject_foreign_options(kind, num_blocks=num_blocks, hidden_units=hidden_units,
                            solver=solver, num_steps=num_steps, gradient=gradient,
                            jit_dynamics=jit_dynamics)
    _check_int("num_classes", num_classes)
    _check_int("filters", filters)
    _check_int("groups", groups)
    if filters % groups:
        raise ValueError(f"`filters` must be a multiple of `groups`. Received: "
                         f"filters={filters}, groups={groups}")
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise ValueError(f"`input_shape` must be (height, width, channels). Received: "
                         f"input_shape={input_shape!r}")
    inputs = keras.Input(tuple(input_shape), name="images")
    if kind == "mlp":
        hidden_units = _check_int("hidden_units", 300 if hidden_units is None else hidden_units)
        x = keras.layers.Flatten(name="flatten")(inputs)
        x = keras.layers.Dense(hidden_units, activation="relu", name="hidden")(x)
        outputs = keras.layers.Dense(num_classes, name="logits")(x)
        return keras.Model(inputs, outputs, name=name or kind)
    x = _downsampling(inputs, filters, groups)
    if kind == "resnet":
        num_blocks = _check_int("num_blocks", 6 if num_blocks is None else num_blocks)
        for i in range(num_blocks):
            x = ResidualBlock(filters, groups, name=f"residual_block_{i}")(x)
    else:
        settings = dict(ODE_DEFAULTS[kind])
        for key, value in (("solver", solver), ("num_steps", num_steps), ("gradient", gradient)):
            if value is not None:
                settings[key] = value
        if kind == "rknet" and solver is not None and num_steps is None:
            settings["num_steps"] = None if _is_adaptive(solver) else settings["num_steps"]
        x = NeuralODE(ODEBlockDynamics(filters, groups, name="ode_dynamics"), t0=0.0, t1=1.0,
                      rtol=rtol, atol=atol, jit_dynamics=bool(jit_dynamics), name="neural_ode",
                      **settings)(x)
    outputs = _head(x, groups, num_classes)
    return keras.Model(inputs, outputs, name=name or kind)


def _is_adaptive(solver):
    return solver_base.get(solver).adaptive


def _reject_foreign_options(kind, **options):
    owners = {"num_blocks": ("resnet",), "hidden_units": ("mlp",), "solver": ("rknet", "odenet"),
              "num_steps": ("rknet", "odenet"), "gradient": ("rknet", "odenet"),
              "jit_dynamics": ("rknet", "odenet")}
    for option, value in options.items():
        if value is not None and kind not in owners[option]:
            raise ValueError(
                f"`{option}` applies only to kind in {list(owners[option])}. "
                f"Received: kind={kind!r}, {option}={value!r}")
