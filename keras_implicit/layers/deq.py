"""``DEQ``: a Keras layer whose output is the fixed point of a cell."""

import inspect

import keras
import tensorflow as tf

from keras_implicit import user_warnings
from keras_implicit import validation
from keras_implicit.layers import deq_cells  # noqa: F401  (registers the cells for loading)
from keras_implicit.layers import solve_precision
from keras_implicit.layers.solver_stats import SolverStatsMixin
from keras_implicit.layers.time_dynamics import compute_dtype
from keras_implicit.ops.fixed_point import FixedPointOptions, fixed_point
from keras_implicit.ops.fixed_point_gradients import Phantom
from keras_implicit.ops.implicit_gradient import Implicit

_STATS = {"iterations_forward": "int32", "iterations_backward": "int32",
          "residual": "float32", "converged": "int32"}

# Arguments of keras_implicit 0.1.0, now options of the gradient strategy.
_LEGACY = ("backward_solver", "backward_tol", "backward_max_iter", "phantom_steps", "damping")


def migrate_legacy_gradient(config):
    """Turns a 0.1.0 DEQ/fixed-point config's flat gradient options into a strategy object.

    ``backward_solver``, ``backward_tol``, ``backward_max_iter`` become
    ``Implicit(solver, tol, max_iter)``; ``phantom_steps`` and ``damping``
    become ``Phantom(steps, damping)``. Warns (``DeprecationWarning``) when
    any is present. Returns a new config.
    """
    config = dict(config)
    legacy = {k: config.pop(k) for k in _LEGACY if k in config}
    if not legacy:
        return config
    user_warnings.warn(
        f"DEQ options {sorted(legacy)} (keras_implicit 0.1.0) are now options of the gradient "
        f"strategy: gradient=ki.ops.Implicit(solver, tol, max_iter) or "
        f"ki.ops.Phantom(steps, damping). Migrated; save the model again to update its file.",
        DeprecationWarning)
    gradient = config.get("gradient", "implicit")
    if gradient == "implicit":
        config["gradient"] = Implicit(solver=legacy.get("backward_solver"),
                                      tol=legacy.get("backward_tol"),
                                      max_iter=legacy.get("backward_max_iter"))
    elif gradient == "phantom":
        phantom = {"steps": legacy.get("phantom_steps"), "damping": legacy.get("damping")}
        config["gradient"] = Phantom(**{k: v for k, v in phantom.items() if v is not None})
    return config


def _check_cell_call(cell):
    """Refuses a layer whose ``call`` does not take ``(z, x)`` positionally (a ``Dense``,
    a ``Sequential``: ``x`` would be taken as ``training``)."""
    try:
        parameters = list(inspect.signature(cell.call).parameters.values())
    except (TypeError, ValueError):  # no signature to read: the first call tells
        return
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return
    positional = [p.name for p in parameters if p.kind in (
        inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 or positional[1] in ("training", "mask"):
        raise TypeError(
            f"`cell` must be a Keras layer with call(z, x): the state z and the injection "
            f"x (e.g. ki.layers.DEQDenseCell, or a layer of your own combining z and x). "
            f"Received: cell={cell.__class__.__name__} {cell.name!r} whose call takes "
            f"({', '.join(positional)})")


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
        gradient: ``"implicit"`` (default), ``"phantom"``, ``"unrolled"`` or a
            strategy with options: ``ki.ops.Implicit(solver, tol, max_iter)``
            (the backward solve's; ``None`` uses the forward ones),
            ``ki.ops.Phantom(steps, damping)``, ``ki.ops.Unrolled()``.
        jacobian_penalty: weight >= 0 of the Jacobian regularisation loss
            ``weight * ||d cell/dz (z*)||_F^2 / dim(z)`` (a one-probe Hutchinson
            estimate, Bai et al. 2021), added with ``add_loss`` in training.
        state_shape: shape of ``z`` without the batch axis; ``None`` (default)
            uses the input's shape.
        stop_mode: ``"rel"`` (default) or ``"abs"``.
        on_failure: ``"warn"`` (default: eagerly a Python
            ``FixedPointWarning``, in graphs such as ``fit`` a line on stderr),
            ``"raise"`` or ``"ignore"``, when a solve ends without converging.
        jit_cell: ``"auto"`` (default), ``True`` or ``False``: what XLA
            compiles, decided when the call is traced
            (``ki.ops.jit.plan_fixed_point``): ``"auto"`` compiles the whole
            forward and implicit backward solves of a cell without
            convolutions, keeps a convolutional cell in TensorFlow's graph
            (faster on CPU), and falls back with one warning naming the op
            when XLA cannot compile the cell. ``True`` compiles the cell alone
            (fails loudly); ``False`` compiles nothing. The config stores the
            value as given (``"auto"`` is decided again on each machine);
            ``compiled_path`` is the path of the last call traced or run
            eagerly (a traced function that runs again does not set it).
            A model with a DEQ does not compile its whole training step:
            Keras's ``jit_compile=True`` trains without XLA, with Keras's
            warning, since a failed solve could not raise under it.
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ``dtype``...).

    Call arguments:
        inputs: the injection ``x``, ``(batch, ...)``, floating point.
        training: whether the Jacobian penalty is computed (Keras sets it).

    Returns:
        ``z*``, ``(batch,) + state_shape``.

    Mixed precision: under a mixed policy the cell runs in the compute dtype
    and the solver (residuals, Anderson's least squares, Broyden's updates) in
    float32; ``z*`` has the compute dtype, the Jacobian penalty is a float32
    loss. A ``tol`` (or an ``Implicit(tol=...)``) below the compute dtype's
    machine epsilon (the default 1e-4 under both mixed policies) is floored to
    it with one warning when the layer is made; ``get_config`` keeps it as given.

    Statistics: ``solver_stats()`` returns the last call's
    ``iterations_forward``, ``iterations_backward`` (of the last gradient:
    the implicit solve's iterations, the phantom steps, or 0 when unrolled),
    ``residual`` (forward, in ``stop_mode``) and ``converged`` (0 or 1);
    ``ki.callbacks.SolverStats`` logs them.

    Example:
        >>> model = keras.Sequential([
        ...     keras.Input((16,)),
        ...     ki.layers.DEQ(ki.layers.DEQDenseCell(), tol=1e-4),
        ...     keras.layers.Dense(10),
        ... ])

    Reference:
        Bai, Kolter & Koltun 2019, Deep Equilibrium Models; Bai, Koltun &
        Kolter 2021, Stabilizing Equilibrium Models by Jacobian Regularization;
        Geng et al. 2021, On Training Implicit Models.
    """

    def __init__(self, cell, solver="anderson", tol=1e-4, max_iter=50, gradient="implicit",
                 jacobian_penalty=0.0, state_shape=None, stop_mode="rel", on_failure="warn",
                 jit_cell="auto", **kwargs):
        removed = sorted(set(_LEGACY) & set(kwargs))
        if removed:
            raise TypeError(
                f"{removed} are no longer DEQ arguments: pass "
                f"gradient=ki.ops.Implicit(solver=..., tol=..., max_iter=...) or "
                f"gradient=ki.ops.Phantom(steps=..., damping=...). Received: "
                f"{ {k: kwargs[k] for k in removed} }")
        super().__init__(**kwargs)
        if not isinstance(cell, keras.layers.Layer):
            raise TypeError(
                f"`cell` must be a Keras layer with call(z, x). Received: cell={cell!r}")
        _check_cell_call(cell)
        self.cell = cell
        self.options = FixedPointOptions(solver, tol, max_iter, stop_mode, gradient, on_failure,
                                         jit_cell)
        owner = solve_precision.describe(self)
        solve_precision.check_compatible("cell", compute_dtype(cell), self.compute_dtype, owner)
        # The options of every solve under this layer's policy (one warning, here).
        self._solve_kwargs = solve_precision.fixed_point_solve_kwargs(
            self.options, solve_precision.evaluation_dtype(self.compute_dtype,
                                                           compute_dtype(cell)), owner)
        self.jacobian_penalty = validation.nonnegative_float("jacobian_penalty",
                                                             jacobian_penalty)
        self.state_shape = validation.optional(validation.check_shape, "state_shape",
                                               state_shape)
        # Failures are reported with tf.debugging.Assert / tf.print, which XLA does not
        # run: Keras then compiles no training step with XLA, neither for
        # jit_compile="auto" nor for an explicit jit_compile=True (which Keras turns
        # off with its warning "Model doesn't support `jit_compile=True`").
        self.supports_jit = False
        #: What XLA compiled in the last call traced or run eagerly (``"none"``,
        #: ``"cell"``, ``"solve"``; eager calls: ``"none"``); ``None`` before the first.
        self.compiled_path = None

    solver = property(lambda self: self.options.solver)
    gradient = property(lambda self: self.options.gradient)
    tol = property(lambda self: self.options.tol)
    max_iter = property(lambda self: self.options.max_iter)
    stop_mode = property(lambda self: self.options.stop_mode)
    on_failure = property(lambda self: self.options.on_failure)
    jit_cell = property(lambda self: self.options.jit_cell)

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
        if not inputs.dtype.is_floating:
            raise TypeError(f"DEQ inputs must be floating point; cast them first (e.g. "
                            f"keras.ops.cast(x, 'float32')). Received: inputs with "
                            f"dtype={inputs.dtype.name}")
        z_shape = tf.concat([tf.shape(inputs)[:1], self.state_shape], 0) \
            if self.state_shape is not None else tf.shape(inputs)
        z0 = tf.zeros(z_shape, dtype=inputs.dtype)
        if self.state_shape is not None:
            z0 = tf.ensure_shape(z0, (None,) + self.state_shape)
        penalty = bool(training) and self.jacobian_penalty > 0
        result = fixed_point(
            # A cell of another compute dtype (float32 in a mixed layer) returns its own.
            lambda z, x: tf.cast(self.cell(z, x), z.dtype), inputs, z0, **self._solve_kwargs,
            jacobian_penalty=penalty, on_backward=self._record_backward)
        stats = result.stats
        self.compiled_path = stats.compiled
        residual = stats.rel_residual if self.stop_mode == "rel" else stats.abs_residual
        values = {"iterations_forward": stats.forward_iterations, "residual": residual,
                  "converged": stats.converged}
        if not isinstance(self.gradient, Implicit):
            # The implicit backward solve records its own count when a gradient is
            # taken; inference keeps the last one.
            backward = stats.backward_iterations
            values["iterations_backward"] = 0 if backward is None else backward
        self._record_solver_stats(values)
        if penalty:
            # A loss in the variables' dtype, as Keras computes its own (float32 when mixed).
            self.add_loss(self.jacobian_penalty * tf.cast(result.jacobian_penalty,
                                                          self.variable_dtype))
        return result.z

    def _record_backward(self, stats):
        self._record_solver_stats({"iterations_backward": stats.backward_iterations})

    def compute_output_shape(self, input_shape):
        return self._z_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "cell": keras.saving.serialize_keras_object(self.cell),
            **self.options.get_config(),
            "jacobian_penalty": self.jacobian_penalty,
            "state_shape": None if self.state_shape is None else list(self.state_shape),
        }

    @classmethod
    def from_config(cls, config):
        config = migrate_legacy_gradient(config)
        config["cell"] = keras.saving.deserialize_keras_object(config["cell"])
        return cls(**config)
