"""A function compiled as one XLA program, as the compile plans (``ops.jit``) use it.

``compile_whole(fn)`` is ``tf.function(fn, jit_compile=True)`` traced in XLA's
context (``solvers.state.tracing_for_xla``), whose scalar outputs of one dtype
leave the program as one vector each and are unstacked outside.
"""

import collections
import dataclasses

import tensorflow as tf
from tensorflow.python.eager import record

from keras_implicit.solvers import state as state_ops


def compile_whole(fn, recorded=True):
    """``fn`` as one XLA program (a ``tf.function(jit_compile=True)``).

    Its scalar outputs of one dtype leave the program as one vector, unstacked
    outside: each output of a compiled call costs TensorFlow about 1.3 us per
    call, and a compiled solve returns six scalars (its statistics and final
    time and step), so a small dense solve called in a loop paid 7 us of its
    78 us for them (measured on 2 CPU cores: a compiled call with seven
    outputs took 21.6 us, with two 14.7 us). Unused statistics are then never
    unstacked.

    ``recorded=False`` hides the call from gradient tapes and makes it a stateful call
    (``compile_solve``).
    """
    def traced(*args, **kwargs):
        with state_ops.tracing_for_xla():
            result = fn(*args, **kwargs)
        kept, vectors, layout = _pack_scalars(result)
        tf.compat.v1.get_default_graph()._keras_implicit_layout = layout
        return kept, vectors

    compiled = tf.function(traced, jit_compile=True, autograph=False)

    def call(*args, **kwargs):
        concrete = compiled.get_concrete_function(*args, **kwargs)
        if recorded:
            kept, vectors = concrete(*args, **kwargs)
        else:
            _call_as_stateful(concrete)
            with record.stop_recording():
                kept, vectors = concrete(*args, **kwargs)
        return _unpack_scalars(concrete.graph._keras_implicit_layout, kept, vectors)

    return call


def compile_solve(fn):
    """``compile_whole`` for a whole solve, loop included, whose gradient its caller
    defines (the adjoint's, the implicit function theorem's).

    The call is hidden from gradient tapes. A persistent tape that recorded it made
    TensorFlow rewrite the call to return the loop's accumulators (TensorLists), which
    cannot leave an XLA program: "Support for TensorList crossing the XLA/TF boundary is
    not implemented".

    The call is also a stateful one (``StatefulPartitionedCall``). TensorFlow's function
    runtime constant-folds a stateless call whose inputs are all constants (a
    ``tf.constant`` state, dynamics without variables) by running it with its own
    kernels, and its ``While`` kernel recurses once per iteration: a solve of about 1,400
    steps overflowed the stack and killed the process (a segmentation fault).
    """
    return compile_whole(fn, recorded=False)


def _call_as_stateful(concrete):
    """Makes the graph calls of ``concrete`` ``StatefulPartitionedCall`` ops, which
    constant folding never evaluates (``compile_solve``). TensorFlow decides the call's
    kind from the traced function's own ops (stateless here: the solve's loop reads no
    variable) and keeps it in the call options of the function it calls."""
    atomic = concrete._inference_function
    if not atomic.call_options.is_stateful:
        atomic._call_options = dataclasses.replace(atomic.call_options, is_stateful=True)


def _pack_scalars(result):
    """``(kept, vectors, layout)``: the leaves of ``result`` with every group of two or
    more scalar tensors of one dtype stacked into a vector (``vectors``, one per group),
    and how ``_unpack_scalars`` restores ``result``'s structure."""
    leaves = tf.nest.flatten(result)
    groups = collections.defaultdict(list)
    for index, leaf in enumerate(leaves):
        if isinstance(leaf, tf.Tensor) and leaf.shape.rank == 0:
            groups[leaf.dtype].append(index)
    packed = [indices for indices in groups.values() if len(indices) > 1]
    slots = {index: (group, position) for group, indices in enumerate(packed)
             for position, index in enumerate(indices)}
    kept = [leaf for index, leaf in enumerate(leaves) if index not in slots]
    vectors = [tf.stack([leaves[i] for i in indices]) for indices in packed]
    return kept, vectors, (result, len(leaves), slots)


def _unpack_scalars(layout, kept, vectors):
    """``result`` again, from ``_pack_scalars``' ``layout`` and the compiled call's outputs."""
    structure, count, slots = layout
    scalars = [tf.unstack(v) for v in vectors]
    kept = iter(kept)
    leaves = [scalars[slots[i][0]][slots[i][1]] if i in slots else next(kept)
              for i in range(count)]
    return tf.nest.pack_sequence_as(structure, leaves)
