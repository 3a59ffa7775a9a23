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
        specs = [_static_spec(x) for x in tf.nest.flatten(args)]
    except ValueError:
        return Probe(False, "the input rank is unknown", None)

    def flat(*leaves):  # the compiler-IR API takes flat TensorSpecs only
        return fn(*tf.nest.pack_sequence_as(args, list(leaves)))

    compiled = tf.function(flat, jit_compile=True, autograph=False)
    try:
        generate = compiled.experimental_get_compiler_ir(*specs)
        # Lowered outside the caller's graph: TensorFlow creates a random op to find the
        # device, which would otherwise run at every call of the traced function.
        with tf.init_scope():
            hlo = generate(stage="hlo")
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


class ODEPlan(collections.namedtuple(
        "ODEPlan", ["kind", "dynamics_wrapper", "step_fn_wrapper", "solve_wrapper", "reason"])):
    """How an ODE solve runs: ``kind`` is ``"none"`` (TensorFlow's graph; the dynamics
    traced once and called per stage), ``"dynamics"`` (the dynamics compiled),
    ``"step"`` (each trial step compiled whole: stages, error norm, dense
    coefficients) or ``"solve"`` (the whole solve, loop included, compiled)."""

    __slots__ = ()



def _trace_once(fn):
    return tf.function(fn, autograph=False, reduce_retracing=True)


def _jit(fn):
    return tf.function(fn, jit_compile=True, autograph=False)


def plan_ode(jit_dynamics, solver, gradient, fn, t, y0, params, *, dense=False,
             static_times=True):
    """Chooses how a solve runs (an :class:`ODEPlan`).

    ``jit_dynamics=False``: ``"none"``. ``True``: ``"dynamics"`` (as in 0.1.0;
    a function XLA refuses fails loudly when it runs). ``"auto"``, a fixed
    rule, measured on 2 CPU cores (README, "Speed"):

    - eager calls, TFP's solvers, and dynamics XLA refuses (one warning naming
      the ops): ``"none"``;
    - dynamics with convolutions (found in the HLO): ``"dynamics"``. XLA's
      CPU convolutions make a whole compiled solve slow; compiling the
      dynamics fuses GroupNorm, concatenations and activations around them.
      On the MNIST ODE block (batch 64) a training step took 225 ms this way
      against 252 ms with the trial step compiled whole and 295 ms
      uncompiled (adjoint), and 275 / 348 / 341 ms (backprop);
    - other dynamics (dense layers, small states) under ``Adjoint``:
      ``"solve"``, the forward solve and each backward interval as one XLA
      program each; with dense output (its arrays grow dynamically), output
      times of unknown number (XLA sizes the outputs statically: LatentODE's
      union of a batch's times), ``Backprop`` or ``Checkpointed`` (TensorFlow
      cannot carry a tape's accumulators out of a compiled loop): ``"step"``.
    """
    if jit_dynamics is False:
        return ODEPlan("none", _trace_once, None, None, None)
    if jit_dynamics is True:
        return ODEPlan("dynamics", _jit, None, None, None)
    if tf.executing_eagerly():
        return ODEPlan("none", _trace_once, None, None, "eager call: nothing to amortize")
    if not solver.differentiable:
        return ODEPlan("none", _trace_once, None, None, f"TFP's {solver.name!r}")
    result = probe(lambda t_, y_, p_: fn(t_, y_, p_), t, list(y0), list(params))
    if not result.ok:
        warn_fallback("The dynamics (jit_dynamics='auto')", result.reason)
        return ODEPlan("none", _trace_once, None, None, result.reason)
    if "convolution(" in result.hlo:
        return ODEPlan("dynamics", _jit, None, None, "convolutions")
    if getattr(gradient, "name", None) == "adjoint" and not dense and static_times:
        return ODEPlan("solve", None, None, _jit, "no convolutions")
    return ODEPlan("step", None, _jit, None,
                   "no convolutions, but a tape through a compiled loop cannot leave XLA")

