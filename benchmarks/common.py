"""Shared pieces of the MNIST benchmarks: quick mode, models, a compiled training step.

``KERAS_IMPLICIT_BENCH_QUICK=1`` (set by ``tests/test_benchmarks.py``) shrinks
batches so that every benchmark runs once in seconds; see ``README.md``.
"""

import os

QUICK = os.environ.get("KERAS_IMPLICIT_BENCH_QUICK") == "1"


# The dtype parameter of the ODE block and DEQ benchmarks: Keras dtype policies.
DTYPES = ["float32", "mixed_bfloat16", "mixed_float16"]


def check_dtype(dtype):
    """Raises ``NotImplementedError`` (asv: skipped) for ``"mixed_float16"`` without a GPU.

    CPUs have no float16 arithmetic worth timing (TensorFlow converts each op; oneDNN
    only with AVX-512 FP16), so a float16 time on CPU measures the emulation. bfloat16
    runs natively on CPUs with AVX-512 BF16 or AMX and is kept. The README's
    "Mixed precision" table has float16's NFE and accuracy on CPU.
    """
    import tensorflow as tf

    if dtype == "mixed_float16" and not tf.config.list_physical_devices("GPU"):
        raise NotImplementedError("mixed_float16 is timed on GPUs only")


def scaled_loss(loss, dtype):
    """``loss`` times Keras's initial loss scale (2**15) under ``"mixed_float16"``, as
    ``fit``'s LossScaleOptimizer does: the backward solve sees the scaled cotangent."""
    return loss * 2.0**15 if dtype == "mixed_float16" else loss


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


def build_feature_stack(name, filters=64):
    """The part of a Table 1 model that differs between them, alone: residual blocks or
    the NeuralODE on a 6x6x``filters`` input, then pool and Dense(10) for a loss.

    ``name`` as for :func:`build_model`; built by
    ``keras_implicit.experiments.block_memory.feature_stack``, which also serves the
    block-memory column of ``keras-implicit table1``.
    """
    from keras_implicit.experiments import block_memory

    kind, _, option = name.replace("_", "-").partition("-")
    if kind == "resnet":
        return block_memory.feature_stack(kind, num_blocks=int(option) if option else 6,
                                          filters=filters)
    if kind == "rknet":
        return block_memory.feature_stack(kind, num_steps=int(option) if option else 4,
                                          filters=filters)
    if kind == "odenet":
        return block_memory.feature_stack(kind, gradient=option or None, filters=filters)
    raise ValueError(f"Unknown feature stack. Received: name={name!r}")


def feature_batch(batch, filters=64, seed=0):
    """Random 6x6x``filters`` states and labels (float32, int32 tensors)."""
    from keras_implicit.experiments import block_memory

    return block_memory.feature_batch(batch, filters, seed)


def make_train_step(model):
    """A ``tf.function``: forward, backward and an SGD update; returns the loss."""
    from keras_implicit.experiments import block_memory

    return block_memory.make_train_step(model)


def solver_stats(model):
    """``{name: int}`` of the model's NeuralODE layer (empty for models without one)."""
    for layer in model._flatten_layers(include_self=False):
        if callable(getattr(layer, "solver_stats", None)):
            return {k: int(v) for k, v in layer.solver_stats().items()}
    return {}


def trainable_parameters(model):
    return sum(int(w.numpy().size) for w in model.trainable_weights)
