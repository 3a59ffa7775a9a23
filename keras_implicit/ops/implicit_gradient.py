"""The implicit-function-theorem gradient of a fixed point (``ki.ops.Implicit``).

Forward: the solver runs without recording a tape; only ``z*`` is kept.
Backward: for ``z* = f(z*, x; theta)`` and the incoming gradient ``v = dL/dz*``,
the implicit function theorem gives

    dL/dx = g^T df/dx,   dL/dtheta = g^T df/dtheta,   where   g^T = g^T df/dz + v^T,

a linear fixed point in ``g`` solved with vector–Jacobian products of ``f`` at
``z*`` by the backward solver. ``theta`` is every trainable variable ``f``
reads. The memory is that of one evaluation of ``f`` and the solver's history,
whatever the number of iterations. ``z0`` receives a zero gradient: ``z*``
does not depend on where the solve starts. A non-finite incoming gradient
(an overflowed loss scale) gives non-finite gradients without a backward solve,
and a float16 backward solve that overflows mid-way gives NaN gradients
without a report (``failure.backward_overflow``).
"""

import tensorflow as tf

from keras_implicit import validation
from keras_implicit.ops import failure
from keras_implicit.ops.fixed_point_gradients import (
    FIXED_POINT_GRADIENTS, FixedPointGradient, no_recording, report)
from keras_implicit.solvers import fixed_point_base
from keras_implicit.solvers import state as state_ops
from keras_implicit.solvers.status import Status


@FIXED_POINT_GRADIENTS.register("implicit")
class Implicit(FixedPointGradient):
    """The implicit-function-theorem gradient, by a backward fixed-point solve.

    Args:
        solver: the backward solver (name, config or ``FixedPointSolver``);
            ``None`` uses the forward solver.
        tol: tolerance of the backward solve; ``None`` uses the forward one.
        max_iter: iteration bound of the backward solve; ``None`` uses the forward one.

    Example:
        >>> ki.layers.DEQ(cell, gradient=ki.ops.Implicit(solver="broyden", tol=1e-6))
    """

    name = "implicit"

    def __init__(self, solver=None, tol=None, max_iter=None):
        self.solver = None if solver is None else fixed_point_base.get(
            solver, "Implicit(solver)")
        self.tol = validation.optional(validation.positive_float, "tol", tol)
        self.max_iter = validation.optional(validation.positive_int, "max_iter", max_iter)

    def get_config(self):
        return {"solver": None if self.solver is None
                else fixed_point_base.FIXED_POINT_SOLVERS.serialize(self.solver),
                "tol": self.tol, "max_iter": self.max_iter}

    def solve(self, problem):
        backward_solver = self.solver or problem.solver
        tol = problem.tol if self.tol is None else self.tol
        max_iter = problem.max_iter if self.max_iter is None else self.max_iter
        num_x = len(problem.xs)
        box = {}

        @tf.custom_gradient
        def forward(z_init, *inputs):
            inputs = list(inputs)
            with no_recording():
                z_star, stats = problem.solve_forward(inputs, z_init)
            box["stats"] = stats

            @state_ops.floating_variables_only
            def grad_fn(grad_z, variables=None):
                variables = list(variables or [])
                grad_z = tf.zeros_like(z_star) if grad_z is None else tf.convert_to_tensor(grad_z)
                wrt = inputs + variables

                compile_solve = None
                if problem.solve_wrapper is not None and backward_solver.fusable:
                    # The forward solve is compiled whole: so is the backward one.
                    compile_solve = problem.solve_wrapper

                def backward():
                    return _backward_solve(problem, z_star, inputs, variables, grad_z,
                                           backward_solver, tol, max_iter, compile_solve)

                def skip():
                    nan = [tf.fill(tf.shape(x), tf.constant(float("nan"), x.dtype)) for x in wrt]
                    zero = tf.constant(0, tf.int32)
                    return nan, fixed_point_base.FixedPointSolveStats(
                        zero, tf.zeros([], state_ops.control_dtype(z_star.dtype)),
                        tf.zeros([], state_ops.control_dtype(z_star.dtype)),
                        tf.constant(Status.NON_FINITE, tf.int32))

                finite = tf.reduce_all(tf.math.is_finite(grad_z))
                grads, backward_stats = tf.cond(finite, backward, skip)
                grads, reported = failure.backward_overflow(problem.state_dtype, finite,
                                                            backward_stats.status, grads)
                grads = report(
                    backward_stats._replace(status=reported),
                    backward_solver.name, "backward (implicit)", tol, problem.on_failure, grads)
                stats.set_backward_solve(backward_stats)
                if problem.on_backward is not None:
                    problem.on_backward(stats)
                # The backward solve is not differentiated (its solution g depends on
                # z* and the inputs): a second derivative through it came out wrong.
                grads = [tf.raw_ops.PreventGradient(input=g, message=_SECOND_ORDER)
                         for g in grads]
                input_grads = [tf.zeros_like(z_init)] + list(grads[:num_x])
                if variables:
                    return input_grads, list(grads[num_x:])
                return input_grads

            return z_star, grad_fn

        z = forward(problem.z0, *problem.xs)
        return z, box["stats"]


_SECOND_ORDER = (
    "second derivatives through a fixed point's implicit gradient are not supported (its "
    "backward solve is not differentiated); use gradient='unrolled' for them")


def _backward_solve(problem, z_star, inputs, variables, grad_z, solver, tol, max_iter,
                    compile_solve=None):
    """``(dL/d(inputs + variables), stats)``: the solve for ``g``, then ``g``'s
    vector-Jacobian products with ``f`` at ``z*``.

    ``compile_solve`` (a compile plan's ``solve_wrapper``) compiles the solve for
    ``g`` alone; its products with respect to the inputs and variables follow in
    TensorFlow's graph, at the cost of one more evaluation of ``f``. In one XLA
    program the solver's history (a temporary buffer that lives for the whole
    program) and the variables' gradients (its outputs) were held at once: a dense
    DEQ's training step (1024 units, batch 64) peaked at 11.5 MiB against 8.75 MiB in
    the graph; split, at 8.5-8.75 MiB, for the same step time.
    """
    # float16 cells: the equation is linear in (g, grad_z), so it is solved for the
    # cotangent over its RMS; a loss scale of up to 2**15 (mixed_float16) then neither
    # overflows the float16 vector-Jacobian products nor moves an absolute tolerance.
    scale = None
    if problem.state_dtype is not None and tf.as_dtype(problem.state_dtype) == tf.float16:
        scale = _cotangent_scale(grad_z)
        grad_z = grad_z / tf.cast(scale, grad_z.dtype)

    if compile_solve is None:
        tape, point, f_point = _linearize(problem, z_star, inputs, variables)
        g, stats = _solve_cotangent(tape, point, f_point, grad_z, solver, tol, max_iter,
                                    problem.stop_mode)
    else:
        def solve(z_star, grad_z, *inputs):
            return _solve_cotangent(*_linearize(problem, z_star, list(inputs), []), grad_z,
                                    solver, tol, max_iter, problem.stop_mode)

        g, stats = compile_solve(solve)(z_star, grad_z, *inputs)
        tape, _, f_point = _linearize(problem, z_star, inputs, variables)
    grads = tape.gradient(f_point, inputs + variables, output_gradients=g,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    grads = [tf.convert_to_tensor(x) for x in grads]
    if scale is not None:
        grads = [x * tf.cast(scale, x.dtype) for x in grads]
    return grads, stats


def _linearize(problem, z_star, inputs, variables):
    """``(tape, point, f(point))`` at ``point = z*``, the tape watching ``point``, the
    inputs and ``variables``."""
    point = tf.identity(z_star)
    with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
        tape.watch([point] + inputs + variables)
        f_point = problem.fn(point, inputs)
    return tape, point, f_point


def _solve_cotangent(tape, point, f_point, grad_z, solver, tol, max_iter, stop_mode):
    """``(g, stats)``: the solve of ``g = g^T df/dz + grad_z``."""
    def adjoint_map(g):
        vjp = tape.gradient(f_point, point, output_gradients=g,
                            unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return vjp + grad_z

    return solver.solve(adjoint_map, grad_z, tol=tol, max_iter=max_iter, stop_mode=stop_mode)


def _cotangent_scale(v):
    """The RMS of ``v`` (float32), or 1 where that is 0."""
    scale = state_ops.rms(tf.cast(v, tf.float32))
    return tf.where(scale > 0, scale, tf.ones_like(scale))
