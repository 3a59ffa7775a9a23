"""The implicit-function-theorem gradient of a fixed point, as a custom gradient.

Forward: the solver runs without recording a tape; only ``z*`` is kept.
Backward: for ``z* = f(z*, x; theta)`` and the incoming gradient ``v = dL/dz*``,
the implicit function theorem gives

    dL/dx = g^T df/dx,   dL/dtheta = g^T df/dtheta,   where   g^T = g^T df/dz + v^T,

a linear fixed point in ``g`` solved with vector–Jacobian products of ``f`` at
``z*`` by the backward solver. ``theta`` is every trainable variable ``f``
reads. The memory is that of one evaluation of ``f`` and the solver's history,
whatever the number of iterations. ``z0`` receives a zero gradient: ``z*``
does not depend on where the solve starts.
"""

import tensorflow as tf
from tensorflow.python.eager import record

from keras_implicit.ops import fixed_point_result
from keras_implicit.ops.jit import maybe_jit


def no_recording():
    """Stops every gradient tape on this thread (the forward solve keeps no tape)."""
    return record.stop_recording()


def solve_with_implicit_gradient(flat_fn, z0, xs, solver, options, backward_solver,
                                 backward_options, on_failure, stats_box, on_backward=None,
                                 jit_cell=False):
    """Solves ``z = flat_fn(z, xs)`` and defines its gradient by the IFT.

    Args:
        flat_fn: ``flat_fn(z, xs) -> z``, ``z`` of shape ``(batch, dim)``, ``xs``
            a list of tensors.
        z0: ``(batch, dim)`` initial guess.
        xs: list of tensors the gradient must reach.
        solver, backward_solver: ``FixedPointSolver`` instances.
        options, backward_options: dicts of ``tol``, ``max_iter``, ``stop_mode``.
        on_failure: ``"warn"``, ``"raise"`` or ``"ignore"``.
        stats_box: a one-element list; receives the ``FixedPointStats``, whose
            backward fields are set when the gradient is computed.
        on_backward: called with the ``FixedPointStats`` after the backward solve.
        jit_cell: compile ``flat_fn`` of the forward solve with XLA.

    Returns:
        ``z*``, ``(batch, dim)``.
    """
    num_x = len(xs)

    @tf.custom_gradient
    def forward(z_init, *inputs):
        inputs = list(inputs)
        with no_recording():
            z_star, stats = solver.solve(maybe_jit(lambda z: flat_fn(z, inputs), jit_cell),
                                         z_init, **options)
        [z_star] = fixed_point_result.report(stats, solver.name, "forward", options["tol"],
                                             on_failure, [z_star])
        stats_box[0] = fixed_point_result.FixedPointStats(stats)

        def grad_fn(grad_z, variables=None):
            variables = list(variables or [])
            grad_z = tf.zeros_like(z_star) if grad_z is None else tf.convert_to_tensor(grad_z)
            point = tf.identity(z_star)
            with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
                tape.watch([point] + inputs + variables)
                f_point = flat_fn(point, inputs)

            def adjoint_map(g):
                vjp = tape.gradient(f_point, point, output_gradients=g,
                                    unconnected_gradients=tf.UnconnectedGradients.ZERO)
                return vjp + grad_z

            g, backward_stats = backward_solver.solve(adjoint_map, grad_z, **backward_options)
            [g] = fixed_point_result.report(backward_stats, backward_solver.name,
                                            "backward (implicit)", backward_options["tol"],
                                            on_failure, [g])
            grads = tape.gradient(f_point, inputs + variables, output_gradients=g,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            del tape
            stats_box[0].set_backward(backward_stats)
            if on_backward is not None:
                on_backward(stats_box[0])
            input_grads = [tf.zeros_like(z_init)] + list(grads[:num_x])
            if variables:
                return input_grads, list(grads[num_x:])
            return input_grads

        return z_star, grad_fn

    return forward(z0, *xs)
