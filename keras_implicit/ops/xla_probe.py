"""Whether a function compiles with XLA, found at trace time (``probe``), and what its traced
ops show (``traced_nodes``: convolutions, compiled parts, random numbers); the plans of
``ops.jit`` decide with them.

Whether a function compiles is only known once XLA sees its graph, and a
failure would surface only when the graph runs; ``probe`` lowers the function
to HLO at trace time, on the concrete signature with unknown dimensions set
to 1, without running it, so a ``"auto"`` choice is made deterministically
before anything executes. A function whose support depends on a dimension
that was unknown (rare: XLA needs static shapes only for a few ops) is then
compiled at run time with the real shapes; if that fails, the error is
XLA's, at the first call.
"""

import collections
import re

import tensorflow as tf

#: ``probe``'s reason for a function whose variables are not initialized yet.
UNINITIALIZED = "the variables it reads are not initialized yet (a tf.function's first trace)"

#: ``probe``'s reason for an input of unknown rank (nothing to lower it on).
UNKNOWN_RANK = "the input rank is unknown"

#: ``probe``'s reasons that are not XLA's refusals: a plan falls back without a warning.
UNPROBED = (UNINITIALIZED, UNKNOWN_RANK)

# TensorFlow's random ops, stateful and stateless (not StatelessWhile / StatelessIf).
_RANDOM_OPS = re.compile(r"Random|Multinomial|TruncatedNormal|^Stateful(Uniform|StandardNormal)"
                         r"|^Rng")


class Probe(collections.namedtuple("Probe", ["ok", "reason", "hlo", "random"])):
    """Whether a function lowers to XLA: ``ok``, the refusal's ``reason`` (the ops XLA has
    no kernel for, or the error's first line), the ``hlo`` text when it lowers, and whether
    it draws ``random`` numbers."""

    __slots__ = ()


def _static_spec(x):
    x = tf.convert_to_tensor(x) if not isinstance(x, tf.TensorSpec) else x
    if x.shape.rank is None:
        raise ValueError("rank unknown")
    return tf.TensorSpec([1 if d is None else d for d in x.shape.as_list()], x.dtype)


def _flat_traceable(fn, args):
    """``(flat, specs)``: ``fn`` on the flat leaves of ``args`` (as the compiler-IR API
    takes them) and their static specs; ``ValueError`` for an input of unknown rank."""
    specs = [_static_spec(x) for x in tf.nest.flatten(args)]

    def flat(*leaves):
        return fn(*tf.nest.pack_sequence_as(args, list(leaves)))

    return flat, specs


def probe(fn, *args):
    """Lowers ``fn(*args)`` to HLO without running it; returns a :class:`Probe`.

    ``args`` are tensors (symbolic ones too) or ``tf.TensorSpec``\\ s, possibly
    nested; unknown dimensions are probed as 1. ``fn``'s vector-Jacobian
    product is lowered too: every compiled plan differentiates ``fn`` inside XLA
    (the adjoint's and the implicit backward solves, the gradient of a compiled
    dynamics), and a gradient XLA refuses would fail only when the backward pass
    runs: a ``tf.custom_gradient`` computed with NumPy, or a ``tf.while_loop``
    without ``maximum_iterations`` (its gradient's accumulators have no static
    size). That lowering costs about 0.04 s for a small dense dynamics.
    """
    try:
        flat, specs = _flat_traceable(fn, args)
    except ValueError:
        return Probe(False, UNKNOWN_RANK, None, False)
    # XLA takes numbers only (its own refusal names an "_Arg" op, which says nothing).
    unsupported = sorted({s.dtype.name for s in specs if s.dtype in (tf.string, tf.variant)})
    if unsupported:
        return Probe(False, f"an input of dtype {', '.join(unsupported)}", None, False)
    try:
        concrete, hlo = _lower(flat, specs)
        random = draws_random(_graph_nodes(concrete.graph))
        if hlo is None:
            return Probe(False, UNINITIALIZED, None, random)
        try:
            _lower(_vector_jacobian_product(flat), specs)
        except Exception as error:
            return Probe(False, f"its gradient: {_reason(error)}", None, random)
    except Exception as error:  # XLA's refusals come as several exception types
        return Probe(False, _reason(error), None, False)
    return Probe(True, None, hlo, random)


def _lower(flat, specs):
    """``(concrete, hlo)``: ``flat`` traced at ``specs`` in the caller's graph (whose
    tensors it may capture) and lowered to HLO, or ``hlo=None`` when a variable it reads
    is not initialized yet. XLA's refusals raise."""
    compiled = tf.function(flat, jit_compile=True, autograph=False)
    concrete = compiled.get_concrete_function(*specs)
    # Lowered outside the caller's graph: TensorFlow creates a random op to find the
    # device, which would otherwise run at every call of the traced function.
    with tf.init_scope():
        # Variables created in a tf.function's first trace are initialized only after
        # it (the function is then traced again): lowering would fail on them.
        if not all(_initialized(v) for v in concrete.variables):
            return concrete, None
        lowered, lowered_specs = _graph_captures_as_arguments(compiled, concrete, specs)
        return concrete, lowered.experimental_get_compiler_ir(*lowered_specs)(stage="hlo")


def _vector_jacobian_product(flat):
    """``flat``'s gradient with respect to its floating inputs and the variables it reads,
    for cotangents of ones (what XLA must compile does not depend on their values)."""
    def vjp(*leaves):
        inputs = [x for x in leaves if x.dtype.is_floating]
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = [y for y in tf.nest.flatten(flat(*leaves)) if y.dtype.is_floating]
        return tape.gradient(outputs, inputs + list(tape.watched_variables()),
                             output_gradients=[tf.ones_like(y) for y in outputs],
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)

    return vjp


def _graph_captures_as_arguments(compiled, concrete, specs):
    """``(function, specs)`` to lower in place of ``compiled`` at ``specs``.

    Lowering evaluates a function's captured tensors, so a tensor of the caller's
    graph that ``fn`` closes over (``odeint(lambda t, y: -scale * y, ...)`` with
    ``scale`` computed in the same ``tf.function``) cannot be lowered as it is.
    Such captures become arguments of static spec (XLA compiles them as arguments
    when the solve runs too); variables and constants stay captured.
    """
    captures = list(concrete.captured_inputs)
    symbolic = [tf.is_symbolic_tensor(c) for c in captures]
    if not any(symbolic):
        return compiled, specs
    count = len(specs)

    def lifted(*values):
        arguments, lifted_captures = list(values[:count]), iter(values[count:])
        return concrete._call_flat(
            arguments, [next(lifted_captures) if is_symbolic else c
                        for c, is_symbolic in zip(captures, symbolic)])

    capture_specs = [_static_spec(tf.TensorSpec(c.shape, c.dtype))
                     for c, is_symbolic in zip(captures, symbolic) if is_symbolic]
    return (tf.function(lifted, jit_compile=True, autograph=False),
            list(specs) + capture_specs)


#: TensorFlow ops that XLA lowers to a ``convolution`` (transposed ones included).
_CONVOLUTIONS = frozenset({"Conv", "Conv2D", "Conv3D", "DepthwiseConv2dNative",
                           "Conv2DBackpropInput", "Conv3DBackpropInputV2"})


def static_trace(traced, *args):
    """The concrete function of the ``tf.function`` ``traced`` on the static specs of
    ``args`` (unknown dimensions as 1), or ``None`` when it cannot be traced there (an
    unknown rank, or an error the solve's own trace will report). ``traced`` keeps the
    trace: a second call with the same ``args`` reuses it."""
    try:
        return traced.get_concrete_function(*tf.nest.map_structure(_static_spec, args))
    except Exception:  # the probe, or the solve's trace, says what is wrong
        return None


def traced_nodes(traced, *args):
    """The ops of ``static_trace(traced, *args)`` (the graph's and its functions'), or
    ``None`` where it gives ``None``."""
    concrete = static_trace(traced, *args)
    return None if concrete is None else _graph_nodes(concrete.graph)


def _graph_nodes(graph):
    graph_def = graph.as_graph_def()
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    return nodes


def draws_random(nodes):
    """Whether traced ops (``traced_nodes``) draw random numbers."""
    return any(_RANDOM_OPS.search(node.op) for node in nodes)


def convolves(nodes):
    """Whether traced ops (``traced_nodes``) include a convolution."""
    return any(node.op in _CONVOLUTIONS for node in nodes)


def compiles_parts(nodes):
    """Whether traced ops (``traced_nodes``, i.e. outside XLA) call functions compiled with
    ``jit_compile=True`` (e.g. ``layers.group_norm(..., compiled=True)``). Inside XLA
    such parts are traced plainly (``inside_xla``), so the probe's lowering cannot tell."""
    return any(node.attr["_XlaMustCompile"].b for node in nodes
               if node.op in ("PartitionedCall", "StatefulPartitionedCall"))


def _initialized(variable):
    try:
        return bool(variable.is_initialized())
    except Exception:  # not every variable kind answers; lowering will tell
        return True


def _reason(error):
    text = str(error)
    ops = sorted(set(re.findall(r"XLA_\w+_JIT: (\w+) \(", text)))
    if ops:
        return f"XLA has no kernel for {', '.join(ops)}"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    # The lowering API's wrapper says nothing: "Failed getting HLO text: '<XLA's error>".
    first = re.sub(r"^Failed getting HLO text: '?", "", first)
    return first[:300]
