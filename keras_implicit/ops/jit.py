"""Which pieces of a solve XLA compiles (the plans), decided at trace time with
``xla_probe`` (whether they compile) and compiled by ``xla_function``.

XLA fuses the many small ops of a typical Keras dynamics or cell (GroupNorm,
concatenations, activations) into a few kernels; where that pays, and where
TensorFlow's own kernels win, is the plans' rule (``plan_ode``,
``plan_fixed_point``).
"""

import collections

import numpy as np
import tensorflow as tf

from keras_implicit import user_warnings
from keras_implicit import validation
from keras_implicit.ops.xla_function import compile_solve, compile_whole
from keras_implicit.ops.xla_probe import (UNPROBED, compiles_parts, convolves, probe,
                                          traced_nodes)
from keras_implicit.solvers import state as state_ops

JIT_CHOICES = ("auto", True, False)

_AUTO_JIT = {"enabled": True}

#: The reason a plan gives when ``disable_auto_jit`` has turned ``"auto"`` off.
AUTO_JIT_DISABLED = "'auto' turned off by ki.config.disable_auto_jit()"


def enable_auto_jit():
    """Lets ``jit_dynamics="auto"`` and ``jit_cell="auto"`` compile with XLA where the rule
    of ``plan_ode`` / ``plan_fixed_point`` says so (the default)."""
    _AUTO_JIT["enabled"] = True


def disable_auto_jit():
    """Makes ``"auto"`` run every solve in TensorFlow's graph, in this process.

    For fast first calls (no XLA compilation: about 0.6 s for a small dense
    dynamics' forward solve and 1.2 s for its adjoint on 2 CPU cores) in a test
    suite or while debugging (``tf.print`` in a dynamics). ``True`` still
    compiles and ``False`` is unchanged; configs keep ``"auto"``. It applies to
    functions traced afterwards: a function already traced keeps its plan.
    """
    _AUTO_JIT["enabled"] = False


def is_auto_jit_enabled():
    """Whether ``"auto"`` may compile with XLA (see ``disable_auto_jit``)."""
    return _AUTO_JIT["enabled"]


def inside_xla():
    """Whether the code being traced now will be compiled by XLA: inside a
    ``tf.function(jit_compile=True)`` (Keras' ``jit_compile=True`` too) or a
    function ``plan_ode``/``plan_fixed_point`` compiles. A function that compiles
    a part of itself then runs that part plainly: XLA compiles it with the rest, and
    a compiled function nested in the adjoint's compiled dynamics crashed
    TensorFlow 2.21 (a segmentation fault, or a hang). The solvers ask the same
    (``state.in_xla``)."""
    return state_ops.in_xla()


def check_jit(name, value):
    """``"auto"``, ``True`` or ``False`` (a NumPy bool is taken as the bool it holds); anything
    else is a ``ValueError`` naming ``name``."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value == "auto":
        return value
    raise validation.ArgumentTypeError(
        f"`{name}` must be 'auto', True or False. Received: {name}={value!r}")


#: A plan's reason for a function that draws random numbers.
RANDOM = "it draws random numbers, which XLA would draw differently from TensorFlow's kernels"


def warn_fallback(what, reason):
    """One warning that ``what`` runs uncompiled, and why."""
    user_warnings.warn(f"{what} does not compile with XLA ({reason}); it runs in TensorFlow's "
                       f"graph instead. Pass False to silence this, or True to make it an error.")


def check_jit_dynamics(jit_dynamics, solver):
    """Validates ``jit_dynamics`` for ``solver`` (TFP's solvers refuse ``True``: BDF's
    Newton Jacobian re-enters a compiled dynamics per column, minutes instead of seconds)."""
    jit_dynamics = check_jit("jit_dynamics", jit_dynamics)
    if jit_dynamics is True and not solver.differentiable:
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


_TAPE_REASON = "a tape through compiled trial steps costs more than it saves"
_PARTS_REASON = "convolutions, and the dynamics compiles its other parts itself"


def plan_ode(jit_dynamics, solver, gradient, fn, t, y0, params, *, dense=False,
             static_times=True):
    """Chooses how a solve runs (an :class:`ODEPlan`).

    ``jit_dynamics=False``: ``"none"``. ``True``: ``"dynamics"`` (as in 0.1.0;
    a function XLA refuses fails loudly when it runs). ``"auto"``, a fixed
    rule, measured on 2 CPU cores (README, "Speed"):

    - after ``disable_auto_jit()``: ``"none"``;
    - eager calls, TFP's solvers, and dynamics XLA refuses (one warning naming
      the ops): ``"none"``; also, without a warning, inputs of unknown rank
      (nothing to probe) and dynamics that draw random numbers (XLA draws
      other numbers than TensorFlow's kernels: ``"auto"`` keeps ``False``'s);
    - dynamics with convolutions that compile parts of themselves with XLA
      (``layers.group_norm(..., compiled=True)``, as the ODE-Net's blocks do),
      both seen in a plain trace: ``"none"``, decided before any probe (no
      lowering to HLO, which took 0.25-0.29 s of the block's first call, and so
      no fallback warning either). Their author has compiled what XLA runs well
      and left the convolutions to TensorFlow's oneDNN kernels, whose
      gradients are about 3x faster than XLA's on CPU. On the MNIST ODE
      block (batch 64) a training step took 114 ms this way against 126 ms
      with the dynamics compiled whole (adjoint), and 146 against 161 ms
      (backprop);
    - other dynamics with convolutions: ``"dynamics"``. XLA's CPU
      convolutions make a whole compiled solve slow; compiling the dynamics
      fuses GroupNorm, concatenations and activations around them. On the
      MNIST ODE block with Keras' GroupNormalization (batch 64) a training
      step took 225 ms this way against 252 ms with the trial step compiled
      whole and 295 ms uncompiled (adjoint), and 275 / 348 / 341 ms
      (backprop);
    - other dynamics (dense layers, small states) under ``Adjoint``:
      ``"solve"``, the forward solve and each backward interval as one XLA
      program each; with dense output (its arrays grow dynamically) or output
      times of unknown number (XLA sizes the outputs statically: LatentODE's
      union of a batch's times): ``"step"``;
    - other dynamics under ``Backprop`` or ``Checkpointed``: ``"none"``, decided
      from a plain trace before any probe. A tape cannot leave a compiled loop,
      and one through compiled trial steps cost more than it saved: a training
      step of ConcatDense 64 at batch 32 took 2.7-3.0 ms so against 1.3 ms
      (backprop), 3.8-4.5 against 2.7-3.3 ms (checkpointed).
    """
    if jit_dynamics is False:
        return ODEPlan("none", _trace_once, None, None, None)
    if jit_dynamics is True:
        return ODEPlan("dynamics", compile_whole, None, None, None)
    if not is_auto_jit_enabled():
        return ODEPlan("none", _trace_once, None, None, AUTO_JIT_DISABLED)
    if tf.executing_eagerly():
        return ODEPlan("none", _trace_once, None, None, "eager call: nothing to amortize")
    if not solver.differentiable:
        return ODEPlan("none", _trace_once, None, None, f"TFP's {solver.name!r}")
    args = (t, list(y0), list(params))
    taped = getattr(gradient, "name", None) != "adjoint"
    # A plain trace first: it decides two cases without lowering to HLO, and a solve in
    # the graph reuses it (the ODE block's dynamics traced once less: 0.1 s).
    traced = _trace_once(fn)
    nodes = traced_nodes(traced, *args)

    def plain(reason):
        return ODEPlan("none", lambda g: traced if g is fn else _trace_once(g), None, None, reason)

    if nodes is not None and taped and not convolves(nodes):  # nothing would compile
        return plain(_TAPE_REASON)
    if nodes is not None and convolves(nodes) and compiles_parts(nodes):
        return plain(_PARTS_REASON)
    result = probe(fn, *args)
    if result.reason in UNPROBED:  # the trace that follows decides, or nothing lowers
        return plain(result.reason)
    if not result.ok:
        warn_fallback("The dynamics (jit_dynamics='auto')", result.reason)
        return plain(result.reason)
    if result.random:  # "auto" keeps the numbers of False
        return plain(RANDOM)
    if "convolution(" in result.hlo:
        if nodes is not None and compiles_parts(nodes):  # a convolution op not listed
            return plain(_PARTS_REASON)
        return ODEPlan("dynamics", compile_whole, None, None, "convolutions")
    if taped:
        return plain(_TAPE_REASON)
    if not dense and static_times:
        return ODEPlan("solve", None, None, compile_solve, "no convolutions")
    return ODEPlan("step", None, compile_whole, None,
                   "no convolutions; dense output or output times of unknown number")


class FixedPointPlan(collections.namedtuple(
        "FixedPointPlan", ["kind", "cell_wrapper", "step_wrapper", "iteration_wrapper",
                           "solve_wrapper", "reason"])):
    """How the forward solve of a fixed point runs: ``kind`` is ``"none"`` (TensorFlow's
    graph), ``"cell"`` (the map compiled, the solver's arithmetic in the graph),
    ``"step"`` (everything of an iteration but the map compiled), ``"iteration"`` (the
    whole iteration, map and solver update, compiled: only the loop stays in TensorFlow)
    or ``"solve"`` (the whole forward solve, loop included, one XLA program)."""

    __slots__ = ()

    @classmethod
    def of(cls, kind, reason=None):
        wrappers = {name: None if not name.startswith(kind) else
                    compile_solve if name == "solve_wrapper" else compile_whole
                    for name in ("cell_wrapper", "step_wrapper", "iteration_wrapper",
                                 "solve_wrapper")}
        return cls(kind, reason=reason, **wrappers)


def plan_fixed_point(jit_cell, solver, gradient, fn, args, static_shape=True):
    """Chooses how a fixed-point solve runs (a :class:`FixedPointPlan`).

    ``fn(*args)`` is the map as the solver calls it, with every tensor it
    reads besides variables in ``args`` (the probe lowers it on their specs).
    ``jit_cell=False``: ``"none"``. ``True``: ``"cell"`` (as in 0.1.0; a map
    XLA refuses fails loudly when it runs). ``"auto"``, a fixed rule measured
    on a shared 2-core CPU, one thread (README, "Deep Equilibrium Models"):

    - after ``disable_auto_jit()``: ``"none"``;
    - eager calls (nothing to amortize a compilation over), states whose
      shape is not static, and maps XLA refuses (one warning naming the
      ops): ``"none"``; also, without a warning, inputs of unknown rank and
      maps that draw random numbers (as for ``plan_ode``);
    - maps with convolutions (found in the HLO): ``"none"``. TensorFlow runs
      them with oneDNN's kernels, and XLA's CPU convolutions cost more than
      fusing the rest saves: one call of the MNIST DEQ cell (batch 64) takes
      6.2 ms in the graph and 7.7 ms compiled, and every compiled path made
      the training step slower (209 ms in the graph, 227 ms with the solver's
      arithmetic compiled, 1.8 s with the whole solves compiled);
    - other maps (dense layers), with the built-in solvers and the
      ``"implicit"`` or ``"phantom"`` gradient: ``"solve"``, the forward
      solve and the implicit backward solve (its vector-Jacobian products
      included) as one XLA program each. On the dense tanh cell the training
      step took 5.6 ms against 7.5 ms (256 features, batch 64), 2.1 against
      3.7 ms (batch 16), 36 against 38 ms (1024 features) and 427 against
      442 ms (4096 features). XLA launched once per iteration costs more than
      it saves: ``"cell"`` 7.5 ms and ``"iteration"`` 9.8 ms against 6.7 ms
      in the graph. The compilations cost about 1-3 s per input shape;
    - ``"unrolled"`` (a tape through a compiled loop cannot leave XLA) and
      solvers with a loop of their own: ``"none"``.
    """
    if jit_cell is False:
        return FixedPointPlan.of("none")
    if jit_cell is True:
        return FixedPointPlan.of("cell")
    if not is_auto_jit_enabled():
        return FixedPointPlan.of("none", AUTO_JIT_DISABLED)
    if tf.executing_eagerly():
        return FixedPointPlan.of("none", "eager call: nothing to amortize")
    if not static_shape:
        return FixedPointPlan.of("none", "the state's shape is not static")
    result = probe(fn, *args)
    if result.reason in UNPROBED:  # the trace that follows decides, or nothing lowers
        return FixedPointPlan.of("none", result.reason)
    if not result.ok:
        warn_fallback("The cell (jit_cell='auto')", result.reason)
        return FixedPointPlan.of("none", result.reason)
    if result.random:  # "auto" keeps the numbers of False
        return FixedPointPlan.of("none", RANDOM)
    if "convolution(" in result.hlo:
        return FixedPointPlan.of("none", "convolutions")
    if getattr(gradient, "name", None) == "unrolled":
        return FixedPointPlan.of("none", "a tape through a compiled loop cannot leave XLA")
    if not solver.fusable:
        return FixedPointPlan.of("none", f"the solver {solver.name!r} has a loop of its own")
    return FixedPointPlan.of("solve", "no convolutions")
