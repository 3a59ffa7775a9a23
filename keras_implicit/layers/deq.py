"""``DEQ``: a Keras layer whose output is the fixed point of a cell."""

import keras
import numpy as np
import tensorflow as tf

from keras_implicit.layers import deq_cells  # noqa: F401  (registers the cells for loading)
from keras_implicit.layers.solver_stats import SolverStatsMixin
from keras_implicit.ops.fixed_point import GRADIENTS, fixed_point
from keras_implicit.ops.fixed_point_result import ON_FAILURE
from keras_implicit.ops.jit import check_jit_flag
from keras_implicit.solvers import fixed_point_base
from keras_implicit.solvers import fixed_point_registry

_STATS = {"iterations_forward": "int32", "iterations_backward": "int32",
          "residual": "float32", "converged": "int32"}


@keras.saving.register_keras_serializable(package="keras_implicit")
class DEQ(SolverStatsMixin, keras.layers.Layer):
    """Deep Equilibrium layer: outputs ``z*`` with ``z* = cell(z*, x)``.

    The fixed point is found by a solver that records no tape (Anderson
    acceleration by default) and differentiated by the implicit function
    theorem: the backward pass solves ``g^T = g^T d cell/dz (z*) + dL/dz*``
    with vector–Jacobian products, so training memory does not grow with
    the number of iterations. See ``ki.ops.fixed_point``.

    Args:
        cell: a Keras layer whose ``call(z, x)`` returns the next ``z`` with
            ``z``'s shape (``DEQDenseCell``, ``DEQConvCell`` or any layer; a
            ``build`` of its own must take ``(z_shape, x_shape)``). Samples
            must not interact inside it (no batch normalisation).
        solver: ``"anderson"`` (default), ``"broyden"``, ``"picard"``, a config
            dict ``{"name": ..., **options}`` or a ``FixedPointSolver``.
        tol: tolerance of every sample's relative residual
            ``||cell(z) - z|| / ||cell(z)||`` (``stop_mode="abs"``: absolute), > 0.
        max_iter: bound on the evaluations of the cell, >= 1.
        backward_solver, backward_tol, backward_max_iter: those of the
            backward (implicit) solve; ``None`` uses the forward ones.
        gradient: ``"implicit"`` (default), ``"phantom"`` (``phantom_steps``
            damped unrolled steps from ``z*``) or ``"unrolled"``
            (backpropagation through every iteration).
        jacobian_penalty: weight >= 0 of the Jacobian regularisation loss
            ``weight * ||d cell/dz (z*)||_F^2 / dim(z)`` (a one-probe Hutchinson
            estimate, Bai et al. 2021), added with ``add_loss`` in training.
        state_shape: shape of ``z`` without the batch axis; ``None`` (default)
            uses the input's shape.
        stop_mode: ``"rel"`` (default) or ``"abs"``.
        phantom_steps: int >= 1, steps of the ``"phantom"`` gradient.
        damping: in (0, 1], damping of the ``"phantom"`` steps.
        on_failure: ``"warn"`` (default: eagerly a Python
            ``FixedPointWarning``, in graphs such as ``fit`` a line on stderr),
            ``"raise"`` or ``"ignore"``, when a solve ends without converging.
        jit_cell: compile the cell with XLA for the forward iterations while
            the solver loop stays in TensorFlow (faster for convolutional cells
            on CPU; one compilation per input shape).
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ``dtype``...).

    Call arguments:
        inputs: the injection ``x``, ``(batch, ...)``, floating point.
        training: whether the Jacobian penalty is computed (Keras sets it).

    Returns:
        ``z*``, ``(batch,) + state_shape``.

    Statistics: ``solver_stats()`` returns the last call's
    ``iterations_forward``, ``iterations_backward`` (of the last gradient:
    the implicit solve's iterations, ``phantom_steps``, or 0 when unrolled),
    ``residual`` (forward, in ``stop_mode``) and ``converged`` (0 or 1);
    ``ki.callbacks.SolverStats`` logs them.

    Example:
        >>> model = keras.Sequential([
        ...     keras.Input((16,)),
        ...     ki.layers.DEQ(ki.layers.deq_cells.DEQDenseCell(), tol=1e-4),
        ...     keras.layers.Dense(10),
        ... ])

    Reference:
        Bai, Kolter & Koltun 2019, Deep Equilibrium Models; Bai, Koltun &
        Kolter 2021, Stabilizing Equilibrium Models by Jacobian Regularization;
        Geng et al. 2021, On Training Implicit Models.
    """

    def __init__(self, cell, solver="anderson", tol=1e-4, max_iter=50, backward_solver=None,
                 backward_tol=None, backward_max_iter=None, gradient="implicit",
                 jacobian_penalty=0.0, state_shape=None, stop_mode="rel", phantom_steps=1,
                 damping=1.0, on_failure="warn", jit_cell=False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(cell, keras.layers.Layer):
            raise TypeError(
                f"`cell` must be a Keras layer with call(z, x). Received: cell={cell!r}")
        self.cell = cell
        self._solver = fixed_point_registry.get(solver)
        self._backward_solver = None if backward_solver is None else fixed_point_registry.get(
            backward_solver, argument="backward_solver")
        fixed_point_base.check_solve_arguments(tol, max_iter, stop_mode)
        self.tol, self.max_iter, self.stop_mode = float(tol), int(max_iter), stop_mode
        fixed_point_base.check_solve_arguments(
            tol if backward_tol is None else backward_tol,
            max_iter if backward_max_iter is None else backward_max_iter, stop_mode,
            prefix="backward_")
        self.backward_tol = None if backward_tol is None else float(backward_tol)
        self.backward_max_iter = None if backward_max_iter is None else int(backward_max_iter)
        if gradient not in GRADIENTS:
            raise ValueError(
                f"`gradient` must be one of {list(GRADIENTS)}. Received: gradient={gradient!r}")
        self.gradient = gradient
        if isinstance(jacobian_penalty, bool) or not isinstance(
                jacobian_penalty, (int, float, np.integer, np.floating)) \
                or not jacobian_penalty >= 0:
            raise ValueError(f"`jacobian_penalty` must be a number >= 0. "
                             f"Received: jacobian_penalty={jacobian_penalty!r}")
        self.jacobian_penalty = float(jacobian_penalty)
        self.state_shape = self._check_state_shape(state_shape)
        self.phantom_steps = fixed_point_base.check_positive_int("phantom_steps", phantom_steps)
        self.damping = fixed_point_base.check_damping(damping)
        if on_failure not in ON_FAILURE:
            raise ValueError(
                f"`on_failure` must be one of {list(ON_FAILURE)}. "
                f"Received: on_failure={on_failure!r}")
        self.on_failure = on_failure
        check_jit_flag("jit_cell", jit_cell)
        self.jit_cell = jit_cell
        # Failures are reported with tf.debugging.Assert / tf.print, which XLA
        # does not run: keep jit_compile="auto" off (an explicit jit_compile=True
        # trains, but then non-convergence shows only in the statistics).
        self.supports_jit = False

    @staticmethod
    def _check_state_shape(state_shape):
        if state_shape is None:
            return None
        try:
            shape = tuple(int(d) for d in state_shape)
        except (TypeError, ValueError):
            shape = ()
        if not shape or any(d < 1 for d in shape):
            raise ValueError(f"`state_shape` must be a non-empty tuple of positive ints (without "
                             f"the batch axis). Received: state_shape={state_shape!r}")
        return shape

    @property
    def solver(self):
        return self._solver

    @property
    def backward_solver(self):
        return self._backward_solver

    def _z_shape(self, input_shape):
        if self.state_shape is None:
            return tuple(input_shape)
        return (input_shape[0],) + self.state_shape

    def build(self, input_shape):
        z_shape = self._z_shape(input_shape)
        z = keras.KerasTensor(z_shape, dtype=self.compute_dtype)
        x = keras.KerasTensor(tuple(input_shape), dtype=self.compute_dtype)
        out = self.cell(z, x)
        if tuple(out.shape)[1:] != tuple(z_shape)[1:]:
            raise ValueError(
                f"The cell must return the next z with z's shape {tuple(z_shape)}. Received: "
                f"output shape {tuple(out.shape)} from cell {self.cell.name!r} (set `state_shape` "
                f"if z should not have the input's shape)")
        for name, dtype in _STATS.items():
            self._add_solver_stat(name, dtype=dtype)

    def call(self, inputs, training=None):
        z_shape = tf.concat([tf.shape(inputs)[:1], self.state_shape], 0) \
            if self.state_shape is not None else tf.shape(inputs)
        z0 = tf.zeros(z_shape, dtype=inputs.dtype)
        if self.state_shape is not None:
            z0 = tf.ensure_shape(z0, (None,) + self.state_shape)
        penalty = bool(training) and self.jacobian_penalty > 0
        result = fixed_point(
            lambda z, x: self.cell(z, x), inputs, z0, solver=self._solver, tol=self.tol,
            max_iter=self.max_iter, stop_mode=self.stop_mode,
            backward_solver=self._backward_solver, backward_tol=self.backward_tol,
            backward_max_iter=self.backward_max_iter, gradient=self.gradient,
            phantom_steps=self.phantom_steps, damping=self.damping, jacobian_penalty=penalty,
            on_failure=self.on_failure, on_backward=self._record_backward,
            jit_cell=self.jit_cell)
        stats = result.stats
        residual = stats.rel_residual if self.stop_mode == "rel" else stats.abs_residual
        values = {"iterations_forward": stats.forward_iterations, "residual": residual,
                  "converged": stats.converged}
        if self.gradient != "implicit":
            # The implicit backward solve records its own count when a gradient is
            # taken; inference keeps the last one.
            values["iterations_backward"] = self.phantom_steps if self.gradient == "phantom" else 0
        self._record_solver_stats(values)
        if penalty:
            self.add_loss(self.jacobian_penalty * result.jacobian_penalty)
        return result.z

    def _record_backward(self, stats):
        self._record_solver_stats({"iterations_backward": stats.backward_iterations})

    def compute_output_shape(self, input_shape):
        return self._z_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "cell": keras.saving.serialize_keras_object(self.cell),
            "solver": fixed_point_registry.serialize(self._solver),
            "tol": self.tol,
            "max_iter": self.max_iter,
            "backward_solver": None if self._backward_solver is None
            else fixed_point_registry.serialize(self._backward_solver),
            "backward_tol": self.backward_tol,
            "backward_max_iter": self.backward_max_iter,
            "gradient": self.gradient,
            "jacobian_penalty": self.jacobian_penalty,
            "state_shape": None if self.state_shape is None else list(self.state_shape),
            "stop_mode": self.stop_mode,
            "phantom_steps": self.phantom_steps,
            "damping": self.damping,
            "on_failure": self.on_failure,
            "jit_cell": self.jit_cell,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["cell"] = keras.saving.deserialize_keras_object(config["cell"])
        return cls(**config)
