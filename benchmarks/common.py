"""Shared pieces of the MNIST benchmarks: quick mode, models, a compiled training step.

``KERAS_IMPLICIT_BENCH_QUICK=1`` (set by ``tests/test_benchmarks.py``) shrinks
batches so that every benchmark runs once in seconds; see ``README.md``.
"""

import os

QUICK = os.environ.get("KERAS_IMPLICIT_BENCH_QUICK") == "1"


def quick(full, small):
    """``small`` in quick mode, else ``full``."""
    return small if QUICK else full


def mnist_batch(batch, seed=0):
    """Random images in [0, 1] of MNIST's shape and random labels (float32, int32 tensors)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(batch, 28, 28, 1)).astype("float32")
    return tf.constant(x), tf.constant(rng.integers(0, 10, batch).astype("int32"))


def build_model(name):
    """A Table 1 model from a benchmark name: ``resnet``, ``resnet-24``, ``rknet``,
    ``rknet-96`` (RK4 steps), ``odenet``, ``odenet_adjoint``, ``odenet_backprop``."""
    import keras

    from keras_implicit.applications import odenet_mnist

    keras.utils.set_random_seed(0)
    kind, _, option = name.replace("_", "-").partition("-")
    if kind == "resnet":
        return odenet_mnist("resnet", num_blocks=int(option) if option else None)
    if kind == "rknet":
        return odenet_mnist("rknet", num_steps=int(option) if option else None)
    if kind == "odenet":
        return odenet_mnist("odenet", gradient=option or None)
    return odenet_mnist(kind)


def make_train_step(model):
    """A ``tf.function``: forward, backward and an SGD update; returns the loss."""
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def solver_stats(model):
    """``{name: int}`` of the model's NeuralODE layer (empty for models without one)."""
    for layer in model._flatten_layers(include_self=False):
        if callable(getattr(layer, "solver_stats", None)):
            return {k: int(v) for k, v in layer.solver_stats().items()}
    return {}


def trainable_parameters(model):
    return sum(int(w.numpy().size) for w in model.trainable_weights)
