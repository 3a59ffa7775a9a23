"""``fixed_point``: find ``z = fn(z, x)`` and differentiate it. Pure TensorFlow."""


import numpy as np
import tensorflow as tf

from keras_implicit import user_warnings
from keras_implicit import validation
from keras_implicit.ops import closures
from keras_implicit.ops import failure
from keras_implicit.ops import fixed_point_gradients
from keras_implicit.ops import implicit_gradient  # noqa: F401  (registers "implicit")
from keras_implicit.ops.fixed_point_gradients import FixedPointProblem
from keras_implicit.ops.jacobian_penalty import jacobian_frobenius_penalty
from keras_implicit.ops import jit as jit_lib
from keras_implicit.solvers import fixed_point_base
from keras_implicit.solvers import state as state_ops

FIXED_POINT_OPTION_NAMES = ("solver", "tol", "max_iter", "stop_mode", "gradient", "on_failure",
                            "jit_cell")


class FixedPointOptions:
    """Validated options of a fixed-point solve (the one place they are checked).

    Args: see ``fixed_point``.
    """

    def __init__(self, solver="anderson", tol=1e-4, max_iter=50, stop_mode="rel",
                 gradient="implicit", on_failure="warn", jit_cell="auto"):
        self.solver = fixed_point_base.get(solver)
        self.tol, self.max_iter, self.stop_mode = fixed_point_base.check_solve_arguments(
            tol, max_iter, stop_mode)
        self.gradient = fixed_point_gradients.get(gradient)
        self.on_failure = failure.check_on_failure(on_failure)
        self.jit_cell = jit_lib.check_jit("jit_cell", jit_cell)

    def resolvable_tol(self, dtype):
        """``tol``, floored (with one warning) to what a half-precision map resolves
        (its machine epsilon; DEQ's default 1e-4 is below float16's 9.8e-4)."""
        eps = float(state_ops.finfo(dtype).eps)
        if self.tol >= eps or tf.as_dtype(dtype).size > 2:
            return self.tol
        user_warnings.warn(
            f"tol={self.tol:g} is below what a {tf.as_dtype(dtype).name} map resolves "
            f"(machine epsilon {eps:.3g}); using tol={eps:.3g}. Evaluate the cell in a wider "
            f"dtype for tighter solves.")
        return eps

    def as_kwargs(self):
        return {name: getattr(self, name) for name in FIXED_POINT_OPTION_NAMES}

    def get_config(self):
        """The options as config values: pluggable objects as names or Keras config dicts."""
        config = self.as_kwargs()
        config["solver"] = fixed_point_base.FIXED_POINT_SOLVERS.serialize(self.solver)
        config["gradient"] = fixed_point_gradients.FIXED_POINT_GRADIENTS.serialize(self.gradient)
        return config


@tf.autograph.experimental.do_not_convert
def fixed_point(fn, x, z0, *, solver="anderson", tol=1e-4, max_iter=50, stop_mode="rel",
                gradient="implicit", jacobian_penalty=False, on_failure="warn", on_backward=None,
                jit_cell="auto"):
    """Finds the fixed point ``z* = fn(z*, x)`` of a batch, starting from ``z0``.

    Args:
        fn: ``fn(z, x) -> z`` with ``z`` of ``z0``'s shape and dtype. The
            leading axis of ``z`` is the batch: residuals and convergence are
            per sample, so samples must not interact inside ``fn``.
        x: the input (injection): a tensor or a nested structure of tensors.
            Gradients reach its floating tensors.
        z0: the initial guess, ``(batch, ...)``, floating point (zeros are
            usual). Half-precision ``z0`` is iterated in float32 (the solver's
            linear algebra and residuals), with ``fn`` evaluated in its dtype.
        solver: ``"anderson"`` (default), ``"broyden"``, ``"picard"``, a config
            dict ``{"name": ..., **options}`` or a ``FixedPointSolver``.
        tol: tolerance of every sample's residual, > 0 (floored, with a
            warning, to the machine epsilon of ``z0``'s dtype).
        max_iter: bound on the evaluations of ``fn``, >= 1.
        stop_mode: ``"rel"``: ``||fn(z) - z|| / ||fn(z)||`` per sample, or
            ``"abs"``: ``||fn(z) - z||``.
        gradient: ``"implicit"`` (implicit function theorem: the backward pass
            solves ``g^T = g^T df/dz + dL/dz*``, memory independent of the
            iterations), ``"phantom"`` (damped unrolled steps from ``z*``;
            Geng et al. 2021), ``"unrolled"`` (backpropagation through every
            iteration), or a ``ki.ops.Implicit(solver, tol, max_iter)`` /
            ``ki.ops.Phantom(steps, damping)`` / ``ki.ops.Unrolled()`` instance.
        jacobian_penalty: whether to also return a Hutchinson estimate of
            ``||df/dz||_F^2 / dim(z)`` at ``z*`` (one probe; Bai et al. 2021),
            differentiable with respect to ``x`` and the variables ``fn``
            reads (``z*`` enters as a constant, as in the paper).
        on_failure: what a solve that stops without converging does:
            ``"warn"`` (default; a Python ``FixedPointWarning`` eagerly, a
            ``tf.print`` to stderr inside a graph), ``"raise"``
            (``tf.errors.InvalidArgumentError``) or ``"ignore"``. The status is
            in ``stats`` in every case.
        on_backward: called with the ``FixedPointStats`` once the implicit
            backward solve has run (e.g. to record its iterations).
        jit_cell: ``"auto"`` (default), ``True`` or ``False``: what XLA
            compiles (``ki.ops.jit.plan_fixed_point`` states the rule and its
            measurements). ``"auto"`` decides when the call is traced
            (``tf.function``, ``fit``; eager calls run uncompiled): for a map
            without convolutions, the forward solve and the implicit backward
            solve each become one XLA program (not with ``"unrolled"``, nor
            with a solver that has a loop of its own); a convolutional map
            stays in TensorFlow's graph (oneDNN's convolutions beat XLA's on
            CPU); a map XLA cannot compile falls back with one warning naming
            the op. ``True`` compiles the map alone and fails loudly;
            ``False`` compiles nothing. ``stats.compiled`` says which path ran
            (``"none"``, ``"cell"`` or ``"solve"``). A compilation costs
            about 1-3 s per input shape (and per device).

    Returns:
        A ``FixedPointResult``: ``z`` (``z0``'s shape), ``stats``
        (``FixedPointStats``) and ``jacobian_penalty`` (a scalar or ``None``).
        Gradients reach ``x``, and every trainable ``tf.Variable`` ``fn``
        reads; ``z0`` gets a zero gradient under ``"implicit"`` and ``"phantom"``.

    Raises:
        ValueError / TypeError: on bad arguments, naming the argument and value.
        tf.errors.InvalidArgumentError: with ``on_failure="raise"``, when a
            solve ends at ``max_iter`` or at a NaN/Inf residual.

    Example:
        >>> W = tf.constant([[0.5, 0.1], [0.0, 0.3]])
        >>> result = fixed_point(lambda z, x: tf.tanh(z @ W + x), tf.ones([4, 2]),
        ...                      tf.zeros([4, 2]), tol=1e-6)
        >>> result.z.shape, bool(result.stats.converged)
        (TensorShape([4, 2]), True)

    Reference:
        Bai, Kolter & Koltun 2019, Deep Equilibrium Models; Geng et al. 2021,
        On Training Implicit Models.
    """
    options = FixedPointOptions(solver, tol, max_iter, stop_mode, gradient, on_failure, jit_cell)
    validation.check_bool("jacobian_penalty", jacobian_penalty)
    if not callable(fn):
        raise TypeError(f"`fn` must be callable as fn(z, x). Received: fn={fn!r}")

    z0 = tf.convert_to_tensor(z0)
    if not z0.dtype.is_floating:
        raise TypeError(f"`z0` must be floating point. Received: z0 with dtype={z0.dtype.name}")
    if z0.shape.rank is not None and z0.shape.rank < 1:
        raise ValueError(f"`z0` must have a leading batch axis (rank >= 1). "
                         f"Received: z0 with shape {z0.shape}")
    dtype = z0.dtype
    solve_dtype = state_ops.control_dtype(dtype)
    try:
        flat_x = [tf.convert_to_tensor(t) for t in tf.nest.flatten(x)]
    except (TypeError, ValueError):
        raise validation.ArgumentTypeError(
            f"`x` must be a tensor or a nested structure of tensors (the map's input). "
            f"Received: x={x!r}") from None
    differentiable = [i for i, t in enumerate(flat_x) if t.dtype.is_floating]
    others = [i for i in range(len(flat_x)) if i not in differentiable]
    z_shape, z_dynamic_shape = z0.shape, tf.shape(z0)
    static_tail = z_shape[1:].as_list() if z_shape.rank is not None and \
        z_shape[1:].is_fully_defined() else None
    if static_tail is not None:
        rows = tf.reshape(z0, [-1, int(np.prod(static_tail))])
    else:
        rows = tf.reshape(z0, [z_dynamic_shape[0], -1])

    def call_fn(z, xs, other_xs=None):
        """``fn`` on an unflattened ``z`` with the floating parts of ``x`` replaced by ``xs``
        (and the others by ``other_xs``, for the compile probe)."""
        parts = list(flat_x)
        for i, t in zip(differentiable, xs):
            parts[i] = t
        for i, t in zip(others, other_xs or []):
            parts[i] = t
        out = fn(z, tf.nest.pack_sequence_as(x, parts))
        if out is None:
            raise ValueError(f"`fn` must return the next z, a tensor of z's shape. Received: "
                             f"{out!r}")
        out = tf.convert_to_tensor(out)
        if not out.shape.is_compatible_with(z.shape):
            raise ValueError(
                f"`fn` must return the next z, with the shape of z. Received: shape "
                f"{out.shape} for z of shape {z.shape}")
        if out.dtype != z.dtype:
            raise TypeError(f"`fn` must return the next z, with the dtype of z. Received: "
                            f"dtype {out.dtype.name} for z of dtype {z.dtype.name}")
        return out

    def flat_fn(z_rows, xs, other_xs=None):
        # The solver iterates in the control dtype; fn sees z in its own dtype. A static
        # state shape is rebuilt from the rows' batch size: XLA can then compile fn.
        z_rows_in = tf.cast(z_rows, dtype)
        if static_tail is not None:
            z = tf.reshape(z_rows_in, tf.concat([tf.shape(z_rows)[:1], static_tail], 0))
        else:
            z = tf.reshape(z_rows_in, z_dynamic_shape)
        return tf.cast(tf.reshape(call_fn(z, xs, other_xs), tf.shape(z_rows)), solve_dtype)

    xs = [flat_x[i] for i in differentiable]
    z0_rows = tf.cast(rows, solve_dtype)
    plan_args = (z0_rows, xs, [flat_x[i] for i in others])
    plan = jit_lib.plan_fixed_point(options.jit_cell, options.solver, options.gradient, flat_fn,
                                    plan_args, static_shape=static_tail is not None)
    if getattr(options.gradient, "name", None) in ("implicit", "phantom"):
        closures.warn_watched_closures(
            flat_fn, plan_args, "`fn`",
            "Pass them in `x`, read the variables inside fn, or use gradient='unrolled'.")
    problem = FixedPointProblem(
        fn=flat_fn, z0=z0_rows, xs=xs, solver=options.solver,
        tol=options.resolvable_tol(dtype), max_iter=options.max_iter,
        stop_mode=options.stop_mode, on_failure=options.on_failure, on_backward=on_backward,
        cell_wrapper=plan.cell_wrapper, step_wrapper=plan.step_wrapper,
        iteration_wrapper=plan.iteration_wrapper, solve_wrapper=plan.solve_wrapper,
        compiled=plan.kind, state_dtype=dtype)
    z_rows, stats = options.gradient.solve(problem)
    z = tf.reshape(tf.cast(z_rows, dtype), z_dynamic_shape)
    if z_shape.rank is not None:
        z = tf.ensure_shape(z, z_shape)
    penalty = None
    if jacobian_penalty:
        penalty = jacobian_frobenius_penalty(lambda z_: call_fn(z_, xs), tf.stop_gradient(z))
    return FixedPointResult(z, stats, penalty)


class FixedPointResult:
    """The result of ``fixed_point``.

    Attributes:
        z: the fixed point, with the shape of ``z0``.
        stats: a ``FixedPointStats``.
        jacobian_penalty: with ``jacobian_penalty=True``, a scalar Hutchinson
            estimate of ``mean_b ||d fn / d z (z*_b)||_F^2 / dim(z_b)``,
            differentiable (add it to the loss); else ``None``.
    """

    def __init__(self, z, stats, jacobian_penalty=None):
        self.z = z
        self.stats = stats
        self.jacobian_penalty = jacobian_penalty

    def __repr__(self):
        return f"FixedPointResult(z={self.z!r}, stats={self.stats!r})"
