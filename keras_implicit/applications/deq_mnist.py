"""A small convolutional Deep Equilibrium classifier for MNIST."""

import keras

from keras_implicit import validation
from keras_implicit.layers.deq import DEQ
from keras_implicit.layers.deq_cells import DEQConvCell


def deq_mnist(*, input_shape=(28, 28, 1), num_classes=10, channels=32, hidden_channels=64,
              groups=8, solver="anderson", tol=1e-3, max_iter=30, gradient="implicit",
              jacobian_penalty=0.0, on_failure="warn", jit_cell=False, name="deq_mnist"):
    """Builds a small convolutional DEQ classifier (logits) for 28×28 images.

    Injection: a stride-2 3×3 convolution and GroupNorm map the image to a
    14×14×``channels`` tensor ``x``. Equilibrium: ``z* = cell(z*, x)`` with
    the :class:`DEQConvCell` (two 3×3 convolutions with GroupNorm, residual),
    found by ``solver`` and differentiated by the implicit function theorem.
    Head: a stride-2 3×3 convolution (ReLU) to 7×7×2``channels``, flattened,
    and a Dense layer to ``num_classes`` logits.

    Args:
        input_shape: image shape, default ``(28, 28, 1)``; floats in [0, 1].
        num_classes: number of logits, default 10.
        channels: channels of the equilibrium state, default 32.
        hidden_channels: channels inside the cell, default 64.
        groups: GroupNormalization groups; must divide both channel counts.
        solver, tol, max_iter, gradient, jacobian_penalty, on_failure, jit_cell:
            those of :class:`ki.layers.DEQ` (``gradient`` also as
            ``ki.ops.Implicit(solver, tol, max_iter)`` etc.).
        name: the model's name.

    Returns:
        A ``keras.Model`` from images to logits; train it with
        ``SparseCategoricalCrossentropy(from_logits=True)``. Its DEQ layer is
        named ``"deq"`` (``ki.callbacks.SolverStats`` logs ``deq/...``).

    Example:
        >>> model = ki.applications.deq_mnist(channels=16, hidden_channels=32, groups=4)
        >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ...               metrics=["accuracy"])
        >>> model.fit(x_train / 255.0, y_train, callbacks=[ki.callbacks.SolverStats()])

    Reference:
        Bai, Kolter & Koltun 2019, Deep Equilibrium Models; Kolter, Duvenaud &
        Johnson 2020, Deep Implicit Layers tutorial (chapter 4).
    """
    channels = validation.positive_int("channels", channels)
    hidden_channels = validation.positive_int("hidden_channels", hidden_channels)
    groups = validation.positive_int("groups", groups)
    num_classes = validation.positive_int("num_classes", num_classes)
    if channels % groups or hidden_channels % groups:
        raise ValueError(f"`groups` must divide `channels` and `hidden_channels`. Received: "
                         f"groups={groups}, channels={channels}, hidden_channels={hidden_channels}")
    inputs = keras.Input(tuple(input_shape), name="image")
    x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", name="injection_conv")(inputs)
    x = keras.layers.GroupNormalization(groups, name="injection_norm")(x)
    z = DEQ(DEQConvCell(hidden_channels, groups=groups, name="cell"), solver=solver, tol=tol,
            max_iter=max_iter, gradient=gradient, jacobian_penalty=jacobian_penalty,
            on_failure=on_failure, jit_cell=jit_cell, name="deq")(x)
    y = keras.layers.Conv2D(2 * channels, 3, strides=2, padding="same", activation="relu",
                            name="head_conv")(z)
    y = keras.layers.Flatten(name="head_flatten")(y)
    outputs = keras.layers.Dense(num_classes, name="logits")(y)
    return keras.Model(inputs, outputs, name=name)
