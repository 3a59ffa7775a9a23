"""``fixed_point``: find ``z = fn(z, x)`` and differentiate it. Pure TensorFlow."""

import numpy as np
import tensorflow as tf

from keras_implicit.ops import fixed_point_result
from keras_implicit.ops.fixed_point_result import FixedPointResult, FixedPointStats
from keras_implicit.ops.implicit_gradient import no_recording, solve_with_implicit_gradient
from keras_implicit.ops.jacobian_penalty import jacobian_frobenius_penalty
from keras_implicit.ops.jit import check_jit_flag, maybe_jit
from keras_implicit.solvers import fixed_point_base
from keras_implicit.solvers import fixed_point_registry

GRADIENTS = ("implicit", "phantom", "unrolled")


@tf.autograph.experimental.do_not_convert
def fixed_point(fn, x, z0, *, solver="anderson", tol=1e-4, max_iter=50, stop_mode="rel",
                backward_solver=None, backward_tol=None, backward_max_iter=None,
                gradient="implicit", phantom_steps=1, damping=1.0, jacobian_penalty=False,
                on_failure="warn", on_backward=None, jit_cell=False):
    """Finds the fixed point ``z* = fn(z*, x)`` of a batch, starting from ``z0``.

    Args:
        fn: ``fn(z, x) -> z`` with ``z`` of ``z0``'s shape and dtype. The
            leading axis of ``z`` is the batch: residuals and convergence are
            per sample, so samples must not interact inside ``fn``.
        x: the input (injection): a tensor or a nested structure of tensors.
            Gradients reach its floating tensors.
        z0: the initial guess, ``(batch, ...)``, floating point (zeros are usual).
        solver: ``"anderson"`` (default), ``"broyden"``, ``"picard"``, a config
            dict ``{"name": ..., **options}`` or a ``FixedPointSolver``.
        tol: tolerance of every sample's residual, > 0.
        max_iter: bound on the evaluations of ``fn``, >= 1.
        stop_mode: ``"rel"``: ``||fn(z) - z|| / ||fn(z)||`` per sample, or
            ``"abs"``: ``||fn(z) - z||``.
        backward_solver, backward_tol, backward_max_iter: those of the
            implicit backward solve; ``None`` uses the forward ones.
        gradient: ``"implicit"`` (implicit function theorem: the backward pass
            solves ``g^T = g^T df/dz + dL/dz*`` by the backward solver, memory
            independent of the iterations), ``"phantom"`` (the output is
            ``phantom_steps`` damped steps ``z <- (1 - damping) z + damping
            fn(z, x)`` from ``z*``, backpropagated; Geng et al. 2021) or
            ``"unrolled"`` (backpropagation through every iteration of the
            solver; memory grows with the iterations).
        phantom_steps: int >= 1, steps of the ``"phantom"`` gradient.
        damping: in (0, 1], damping of the ``"phantom"`` steps.
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
        jit_cell: compile ``fn`` with XLA for the forward iterations, while the
            solver loop stays in TensorFlow (one compilation per input shape).

    Returns:
        A ``FixedPointResult``: ``z`` (``z0``'s shape), ``stats``
        (``FixedPointStats``) and ``jacobian_penalty`` (a scalar or ``None``).
        Gradients reach ``x``, and every trainable ``tf.Variable`` ``fn``
        reads; ``z0`` gets a zero gradient under ``"implicit"`` and
        ``"phantom"``.

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
    solver = fixed_point_registry.get(solver)
    backward_solver = solver if backward_solver is None else fixed_point_registry.get(
        backward_solver, argument="backward_solver")
    fixed_point_base.check_solve_arguments(tol, max_iter, stop_mode)
    backward_tol = tol if backward_tol is None else backward_tol
    backward_max_iter = max_iter if backward_max_iter is None else backward_max_iter
    fixed_point_base.check_solve_arguments(backward_tol, backward_max_iter, stop_mode,
                                           prefix="backward_")
    if gradient not in GRADIENTS:
        raise ValueError(
            f"`gradient` must be one of {list(GRADIENTS)}. Received: gradient={gradient!r}")
    phantom_steps = fixed_point_base.check_positive_int("phantom_steps", phantom_steps)
    damping = fixed_point_base.check_damping(damping)
    if on_failure not in fixed_point_result.ON_FAILURE:
        raise ValueError(f"`on_failure` must be one of {list(fixed_point_result.ON_FAILURE)}. "
                         f"Received: on_failure={on_failure!r}")
    if not callable(fn):
        raise TypeError(f"`fn` must be callable as fn(z, x). Received: fn={fn!r}")
    check_jit_flag("jit_cell", jit_cell)

    z0 = tf.convert_to_tensor(z0)
    if not z0.dtype.is_floating:
        raise TypeError(f"`z0` must be floating point. Received: z0 with dtype={z0.dtype.name}")
    if z0.shape.rank is not None and z0.shape.rank < 1:
        raise ValueError(f"`z0` must have a leading batch axis (rank >= 1). "
                         f"Received: z0 with shape {z0.shape}")
    flat_x = [tf.convert_to_tensor(t) for t in tf.nest.flatten(x)]
    differentiable = [i for i, t in enumerate(flat_x) if t.dtype.is_floating]
    z_shape, z_dynamic_shape = z0.shape, tf.shape(z0)
    if z_shape.rank is not None and z_shape[1:].is_fully_defined():
        rows = tf.reshape(z0, [-1, int(np.prod(z_shape[1:]))])
    else:
        rows = tf.reshape(z0, [z_dynamic_shape[0], -1])

    def call_fn(z, xs):
        """``fn`` on an unflattened ``z`` with the floating parts of ``x`` replaced by ``xs``."""
        parts = list(flat_x)
        for i, t in zip(differentiable, xs):
            parts[i] = t
        out = fn(z, tf.nest.pack_sequence_as(x, parts))
        out = tf.convert_to_tensor(out)
        if not out.shape.is_compatible_with(z.shape):
            raise ValueError(
                f"`fn` must return the next z, with the shape of z. Received: shape "
                f"{out.shape} for z of shape {z.shape}")
        if out.dtype != z.dtype:
            raise TypeError(f"`fn` must return the next z, with the dtype of z. Received: "
                            f"dtype {out.dtype.name} for z of dtype {z.dtype.name}")
        return out

    def flat_fn(z_rows, xs):
        return tf.reshape(call_fn(tf.reshape(z_rows, z_dynamic_shape), xs), tf.shape(z_rows))

    xs = [flat_x[i] for i in differentiable]
    options = {"tol": tol, "max_iter": max_iter, "stop_mode": stop_mode}
    if gradient == "implicit":
        backward_options = {"tol": backward_tol, "max_iter": backward_max_iter,
                            "stop_mode": stop_mode}
        stats_box = [None]
        z_rows = solve_with_implicit_gradient(flat_fn, rows, xs, solver, options,
                                              backward_solver, backward_options, on_failure,
                                              stats_box, on_backward, jit_cell)
        stats = stats_box[0]
    elif gradient == "phantom":
        constants = [tf.stop_gradient(t) for t in xs]
        with no_recording():
            cell = maybe_jit(lambda z: flat_fn(z, constants), jit_cell)
            z_rows, solve_stats = solver.solve(cell, tf.stop_gradient(rows), **options)
        [z_rows] = fixed_point_result.report(solve_stats, solver.name, "forward", tol,
                                             on_failure, [tf.stop_gradient(z_rows)])
        for _ in range(phantom_steps):
            f_rows = flat_fn(z_rows, xs)
            z_rows = f_rows if damping == 1.0 else z_rows + damping * (f_rows - z_rows)
        stats = FixedPointStats(solve_stats)
        stats.backward_iterations = tf.constant(phantom_steps, tf.int32)
        stats.backward_status = tf.constant(fixed_point_base.SUCCESS, tf.int32)
    else:
        z_rows, solve_stats = solver.solve(maybe_jit(lambda z: flat_fn(z, xs), jit_cell), rows,
                                           **options)
        [z_rows] = fixed_point_result.report(solve_stats, solver.name, "forward", tol,
                                             on_failure, [z_rows])
        stats = FixedPointStats(solve_stats)
    z = tf.reshape(z_rows, z_dynamic_shape)
    if z_shape.rank is not None:
        z = tf.ensure_shape(z, z_shape)
    penalty = None
    if jacobian_penalty:
        penalty = jacobian_frobenius_penalty(lambda z_: call_fn(z_, xs), tf.stop_gradient(z))
    return FixedPointResult(z, stats, penalty)
