"""Arithmetic on states held as flat lists of tensors, and the error norm."""

import contextlib
import threading

import ml_dtypes
import tensorflow as tf
from tensorflow.python.ops import control_flow_util


def cast_to(x, dtype):
    """``x`` as a tensor of ``dtype``; Python numbers are converted at full precision.

    (``tf.cast(1 / 6, tf.float64)`` would round 1/6 to float32 first.)
    """
    if tf.is_tensor(x):
        return tf.cast(x, dtype)
    return tf.constant(x, dtype)


def combine(y, dt, coefficients, derivatives):
    """``y + dt * sum_i coefficients[i] * derivatives[i]``, skipping zero coefficients;
    ``y=None`` for the sum alone (an error estimate).

    Each weight ``dt * c`` is a scalar product, so a term costs one state-sized
    multiply and one add (a Runge–Kutta step makes several such sums per stage).
    A weight is computed once per dtype for all state tensors: the adjoint's
    state has three or more, and each weight again cost its trace two ops.
    """
    terms = [(c, k) for c, k in zip(coefficients, derivatives) if c != 0.0]
    weights = {}

    def weight(c, dtype):
        if (c, dtype) not in weights:
            weights[c, dtype] = (tf.cast(dt * cast_to(c, dt.dtype), dtype) if tf.is_tensor(dt)
                                 else cast_to(dt * c, dtype))
        return weights[c, dtype]

    out = []
    for j in range(len(derivatives[0])):
        acc = None if y is None else y[j]
        for c, k in terms:
            term = weight(c, k[j].dtype) * k[j]
            acc = term if acc is None else acc + term
        out.append(tf.zeros_like(derivatives[0][j]) if acc is None else acc)
    return out


def finfo(dtype):
    """Machine limits of a floating dtype, bfloat16 included (``np.finfo`` refuses it)."""
    return ml_dtypes.finfo(tf.as_dtype(dtype).as_numpy_dtype)


def control_dtype(dtype):
    """The dtype of a solver's control quantities for a state of ``dtype``: times, step
    sizes, error norms and residuals.

    float32 for half-precision states (float16 cannot tell 0.999 from 1.0 apart
    from 1e-3 steps, squares above 256 overflow it, and bfloat16 keeps 8 bits
    of mantissa); else the state's dtype.
    """
    dtype = tf.as_dtype(dtype)
    return tf.float32 if dtype in (tf.float16, tf.bfloat16) else dtype


def rms(x):
    """Root mean square; 0 for an empty tensor (an empty batch has no error)."""
    x = tf.convert_to_tensor(x)
    if x.shape.rank == 0:
        return tf.abs(x)
    size = tf.cast(tf.maximum(tf.size(x), 1), x.dtype)
    return tf.sqrt(tf.reduce_sum(tf.square(x)) / size)


def error_ratio(error, y0, y1, rtol, atol, error_mask=None):
    """Mixed RMS norm of ``error / (atol + rtol * max(|y0|, |y1|))``.

    The norm is the maximum over state tensors of each tensor's RMS (as in
    torchdiffeq); tensors whose ``error_mask`` entry is False are left out
    (the adjoint seminorm of Kidger, Chen & Lyons 2021). Computed and returned
    in float32 for half-precision states, else in the state's dtype.
    """
    ratios = []
    for j, (e, a, b) in enumerate(zip(error, y0, y1)):
        if error_mask is not None and not error_mask[j]:
            continue
        dtype = control_dtype(e.dtype)
        e, a, b = (tf.cast(v, dtype) for v in (e, a, b))
        scale = cast_to(atol, dtype) + cast_to(rtol, dtype) * tf.maximum(tf.abs(a), tf.abs(b))
        ratios.append(rms(e / scale))
    if not ratios:
        raise ValueError("error_mask leaves no state tensor in the error norm.")
    dtype = ratios[0].dtype
    return tf.reduce_max(tf.stack([tf.cast(r, dtype) for r in ratios]))


def all_finite(tensors):
    return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(x)) for x in tensors]))


def choose(condition, if_true, if_false):
    """``if_true`` if the scalar ``condition`` holds, else ``if_false`` (two structures of
    tensors alike, e.g. a step's new and old states).

    In TensorFlow's graph a cond, which forwards one of them, where a select copies the
    state and its gradient copies it twice (backprop through the ODE block 2-4% faster);
    inside XLA a select, which XLA fuses (a conditional made the compiled small dense
    solve 4% slower).
    """
    if in_xla():
        return tf.nest.map_structure(lambda a, b: tf.where(condition, a, b), if_true, if_false)
    return tf.cond(condition, lambda: if_true, lambda: if_false)


@tf.custom_gradient
def nan_unless(reached, x):
    """``x`` where the scalar ``reached`` holds, else NaN: an output a failed solve did not
    reach. Its gradient is NaN wherever a loss depends on such an output (a nonzero
    cotangent), as the adjoint's is, instead of the zero a select would give; an unused
    unreached output leaves the gradient alone."""
    nan = tf.constant(float("nan"), x.dtype)

    def grad(dy):
        return None, tf.where(reached, dy, tf.where(tf.equal(dy, 0), tf.zeros_like(dy), nan))

    return tf.where(reached, x, tf.fill(tf.shape(x), nan)), grad


def floating_variables_only(grad_fn):
    """``grad_fn`` (of a ``tf.custom_gradient``) given only the floating variables the
    forward read. TensorFlow hands a custom gradient every trainable variable read,
    an int64 counter too (``tf.Variable``'s default is ``trainable=True``), and a
    gradient strategy that carried it along failed on its dtype. Such variables get
    ``None``, as TensorFlow gives them."""
    def wrapped(*upstream, variables=None):
        variables = list(variables or [])
        floating = [v for v in variables if v.dtype.is_floating]
        if len(floating) == len(variables):
            return grad_fn(*upstream, variables=variables)
        if not floating:
            return grad_fn(*upstream), [None] * len(variables)
        input_grads, floating_grads = grad_fn(*upstream, variables=floating)
        given = iter(floating_grads)
        return input_grads, [next(given) if v.dtype.is_floating else None for v in variables]

    return wrapped


_XLA = threading.local()


@contextlib.contextmanager
def tracing_for_xla():
    """Marks the code traced inside as bound for XLA (``ops.jit`` wraps what it compiles):
    a solver may then choose ops XLA runs well (``in_xla``)."""
    _XLA.depth = getattr(_XLA, "depth", 0) + 1
    try:
        yield
    finally:
        _XLA.depth -= 1


def in_xla():
    """Whether the code being traced now will be compiled by XLA: marked by
    ``tracing_for_xla`` (what ``ops.jit`` compiles), or inside a
    ``tf.function(jit_compile=True)`` (Keras' ``jit_compile=True`` too)."""
    if getattr(_XLA, "depth", 0) > 0:
        return True
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())
