"""XLA compilation of a solver's pieces, and the probe that decides whether it compiles.

XLA fuses the many small ops of a typical Keras dynamics or cell (GroupNorm,
concatenations, activations) into a few kernels. Whether a function compiles
is only known once XLA sees its graph, and a failure would surface only when
the graph runs; ``probe`` lowers the function to HLO at trace time, on the
concrete signature with unknown dimensions set to 1, without running it, so a
``"auto"`` choice is made deterministically before anything executes. A
function whose support depends on a dimension that was unknown (rare: XLA
needs static shapes only for a few ops) is then compiled at run time with the
real shapes; if that fails, the error is XLA's, at the first call.
"""

import collections
import re
import warnings

import tensorflow as tf

from keras_implicit import validation

JIT_CHOICES = ("auto", True, False)


def check_jit(name, value):
    """``"auto"``, ``True`` or ``False``; anything else is a ``ValueError`` naming ``name``."""
    if value is True or value is False or (isinstance(value, str) and value == "auto"):
        return value
    raise validation.ArgumentTypeError(
        f"`{name}` must be 'auto', True or False. Received: {name}={value!r}")


def maybe_jit(fn, jit):
    """``fn`` compiled with XLA (a ``tf.function``) when ``jit``, else ``fn`` itself."""
    return tf.function(fn, jit_compile=True, autograph=False) if jit else fn


class Probe(collections.namedtuple("Probe", ["ok", "reason", "hlo"])):
    """Whether a function lowers to XLA: ``ok``, the refusal's ``reason`` (the ops XLA has
    no kernel for, or the error's first line), and the ``hlo`` text when it lowers."""

    __slots__ = ()


def _static_spec(x):
    x = tf.convert_to_tensor(x) if not isinstance(x, tf.TensorSpec) else x
    shape = [1 if d is None else d for d in x.shape.as_list()] if x.shape.rank is not None \
        else None
    if shape is None:
        raise ValueError("rank unknown")
    return tf.TensorSpec(shape, x.dtype)


def probe(fn, *args):
    """Lowers ``fn(*args)`` to HLO without running it; returns a :class:`Probe`.

    ``args`` are tensors (symbolic ones too) or ``tf.TensorSpec``\\ s, possibly
    nested; unknown dimensions are probed as 1.
    """
    try:
        specs = tf.nest.map_structure(_static_spec, args)
    except ValueError:
        return Probe(False, "the input rank is unknown", None)
    compiled = tf.function(fn, jit_compile=True, autograph=False)
    try:
        hlo = compiled.experimental_get_compiler_ir(*specs)(stage="hlo")
    except Exception as error:  # XLA's refusals come as several exception types
        return Probe(False, _reason(error), None)
    return Probe(True, None, hlo)


def _reason(error):
    text = str(error)
    ops = sorted(set(re.findall(r"XLA_\w+_JIT: (\w+) \(", text)))
    if ops:
        return f"XLA has no kernel for {', '.join(ops)}"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first[:300]


def warn_fallback(what, reason):
    """One warning that ``what`` runs uncompiled, and why."""
    warnings.warn(f"{what} does not compile with XLA ({reason}); it runs in TensorFlow's graph "
                  f"instead. Pass False to silence this, or True to make it an error.",
                  UserWarning, stacklevel=3)


def check_jit_dynamics(jit_dynamics, solver):
    """Validates ``jit_dynamics`` for ``solver`` (TFP's solvers refuse ``True``)."""
    jit_dynamics = check_jit("jit_dynamics", jit_dynamics)
    if jit_dynamics is True and not solver.differentiable:
        # TFP's BDF differentiates the dynamics itself (its Newton Jacobian), which
        # re-enters the compiled function per column: minutes instead of seconds.
        raise ValueError(
            f"`jit_dynamics=True` works with the solvers 'dopri5', 'bosh3', 'rk4', "
            f"'midpoint' and 'euler', not with TFP's. Received: jit_dynamics=True, "
            f"solver={solver.name!r}")
    return jit_dynamics


def ode_wrappers(jit_dynamics):
    """``(dynamics_wrapper, step_fn_wrapper, compiled)`` for ``odeint``'s compile option."""
    if jit_dynamics is True:
        return (lambda fn: maybe_jit(fn, True)), None, "dynamics"
    return None, None, "none"
