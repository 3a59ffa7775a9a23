"""Tensors a dynamics or cell reads from the caller's graph (closures) that a gradient tape
watches. The custom-gradient strategies (the adjoint, checkpointed, the implicit and phantom
gradients) differentiate their inputs and the variables read; a gradient through such a
tensor (``Ws = 2 * W`` computed before the solve, ``W`` trained) would be dropped: the tape
returned ``None`` for ``W`` without a word. ``warn_watched_closures`` says so.
"""

import tensorflow as tf
from tensorflow.python.eager import record

from keras_implicit import user_warnings
from keras_implicit.ops.xla_probe import static_trace


def warn_watched_closures(fn, args, what, remedy):
    """Warns when ``fn(*args)``, traced, reads floating tensors of the caller's graph that an
    active tape watches. Only where a tape records (nothing to drop otherwise) and in a
    traced call (an eager closure is indistinguishable from a constant without tracing
    ``fn``, which would cost each eager call a trace). ``fn`` may be a ``tf.function`` a
    compile plan has traced on the same ``args`` (``xla_probe.static_trace``): that
    trace is reused."""
    if tf.executing_eagerly() or not record.could_possibly_record():
        return
    if not isinstance(fn, tf.types.experimental.PolymorphicFunction):
        fn = tf.function(fn, autograph=False)
    concrete = static_trace(fn, *args)
    if concrete is None:
        return
    closures = [c for c in concrete.captured_inputs
                if tf.is_symbolic_tensor(c) and c.dtype.is_floating]
    if closures and record.should_record_backprop(closures):
        names = ", ".join(sorted({c.name for c in closures})[:3])
        user_warnings.warn(
            f"{what} reads tensors computed outside it ({names}) that a gradient tape "
            f"watches, and its gradient strategy differentiates only its inputs and the "
            f"variables it reads: their gradients are dropped (None). {remedy}")
