"""Compiling a solver's right-hand side with XLA while the solver loop stays in TensorFlow.

XLA fuses the many small ops of a typical Keras dynamics or cell (GroupNorm,
concatenations, activations) into a few kernels; the solver loop itself, with its
data-dependent step count, stays in TensorFlow's graph (compiled whole, the ODE
block's training step is 4.7x slower on CPU; see the README).
"""

import tensorflow as tf


def maybe_jit(fn, jit):
    """``fn`` compiled with XLA (a ``tf.function``) when ``jit``, else ``fn`` itself."""
    return tf.function(fn, jit_compile=True, autograph=False) if jit else fn


def check_jit_flag(name, value):
    """Raises a ``TypeError`` naming ``name`` unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool. Received: {name}={value!r}")
