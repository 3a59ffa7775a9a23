"""What a layer's dtype policy changes in its solves, decided once when the layer is made.

Under a mixed policy (``"mixed_float16"``, ``"mixed_bfloat16"``) the dynamics
or the cell run in the compute dtype, where the speed is, and the solver runs
in float32 (``ki.solvers.state.control_dtype``): time, step size, error norm,
stage sums, residuals, Anderson's and Broyden's linear algebra. Two options
then differ from what the user wrote, and the layers (``NeuralODE``, ``DEQ``,
``FFJORD``, ``ContinuousFlow``, ``LatentODE``'s parts) decide them here, once:

- **Tolerances.** An evaluation in float16 or bfloat16 carries a relative
  error of its machine epsilon (9.8e-4, 7.8e-3), so a relative tolerance below
  it cannot be met: it is floored to the epsilon with one ``UserWarning`` that
  names the layer, the policy, the argument and both values. ``odeint`` and
  ``fixed_point`` floor by the same rule but warn at every trace; a layer hands
  them the floored value, so the warning appears once per layer, when it is
  created (or loaded), not per step. The layer's config keeps the values the
  user gave.
- **The adjoint under float16.** Keras wraps the optimizer of a
  ``"mixed_float16"`` model in a ``LossScaleOptimizer``, which multiplies the
  loss by up to 2**15, so the adjoint's cotangent is 2**15 times the
  gradient's. The adjoint's absolute tolerance then controls nothing useful
  (the backward solve takes several times the evaluations it takes in float32),
  and the cotangent enters the float16 vector-Jacobian products, where it
  overflows sooner than the gradients themselves would (a skipped step, NaN
  gradients: ``ops.failure.backward_overflow``). So the default, the name
  ``gradient="adjoint"``, becomes ``Adjoint(normalize=True)`` when the dynamics
  run in float16: the backward solve runs on the cotangent over its RMS, which
  a power-of-two loss scale leaves bit for bit unchanged (README, "Mixed
  precision", has the numbers and the cost). An ``Adjoint(...)`` instance (or
  config) is used as given: ``Adjoint(normalize=False)`` opts out. bfloat16
  has float32's range and Keras does not scale its loss.
"""

import tensorflow as tf

from keras_implicit import user_warnings
from keras_implicit.ops.adjoint import Adjoint
from keras_implicit.ops.implicit_gradient import Implicit
from keras_implicit.solvers import state as state_ops

HALF_DTYPES = (tf.float16, tf.bfloat16)


def evaluation_dtype(*dtypes):
    """The narrowest of ``dtypes`` (the compute dtypes of a layer and of its dynamics or
    cell): the precision every evaluation of the dynamics has."""
    dtypes = [tf.as_dtype(d) for d in dtypes if d is not None]
    return max(dtypes, key=lambda d: float(state_ops.finfo(d).eps))


def check_compatible(part, part_dtype, state_dtype, owner):
    """Refuses dynamics (or a cell) whose compute dtype the layer's state cannot carry.

    A half-precision part and a float32 state (or the reverse) share float32 as
    control dtype, and the layer casts between them; float32 dynamics in a float64
    layer would silently cap its precision.
    """
    part_dtype, state_dtype = tf.as_dtype(part_dtype), tf.as_dtype(state_dtype)
    if state_ops.control_dtype(part_dtype) != state_ops.control_dtype(state_dtype):
        raise TypeError(
            f"{owner}: its state is {state_dtype.name} but its {part} compute in "
            f"{part_dtype.name}; create the {part} with dtype={state_dtype.name!r} (float16 "
            f"or bfloat16 {part}, a mixed policy, also fit a float32 state). Received: "
            f"{part} with compute dtype {part_dtype.name!r}")


def describe(layer, kind=None, policy=None):
    """``"NeuralODE 'neural_ode' (dtype policy 'mixed_float16')"``, for messages."""
    policy = layer.dtype_policy if policy is None else policy
    name = getattr(layer, "name", None)
    return f"{kind or type(layer).__name__} {name!r} (dtype policy {policy.name!r})"


def _resolvable(value, dtype):
    """``value``, or the machine epsilon of a half-precision ``dtype`` when ``value`` is
    below it (the rule of ``ODEOptions.resolvable_rtol`` and ``resolvable_tol``)."""
    dtype = tf.as_dtype(dtype)
    eps = float(state_ops.finfo(dtype).eps)
    return eps if dtype in HALF_DTYPES and value < eps else value


def _warn(owner, floored, dtype, part, remedy):
    eps = float(state_ops.finfo(dtype).eps)
    given = " and ".join(f"{argument}={value:g}" for argument, value, _ in floored)
    used = " and ".join(used for _, _, used in floored)
    verb = "is" if len(floored) == 1 else "are"
    user_warnings.warn(
        f"{owner}: {given} {verb} below the machine epsilon of {tf.as_dtype(dtype).name} "
        f"({eps:.3g}), the compute dtype of its {part}, and cannot be met; the solver uses "
        f"{used}. For a tighter solve, {remedy or f'create the layer and its {part}'} with "
        f"dtype='float32'.")


def ode_solve_kwargs(options, dtype, owner, part="dynamics", remedy=None, gradient=None):
    """The ``odeint`` keyword arguments of a layer whose dynamics run in ``dtype``.

    Args:
        options: the layer's ``ODEOptions`` (what the user gave; left unchanged).
        dtype: the dtype of the dynamics' evaluations (``evaluation_dtype``).
        owner: the layer, for the warning (``describe``).
        part: what the warning calls the evaluated function.
        remedy: what the warning asks to create with ``dtype='float32'`` (default:
            the layer and its ``part``).
        gradient: the ``gradient`` argument as the user gave it: the name
            ``"adjoint"`` is normalized under float16, an instance or config is not.

    Returns:
        ``options.as_kwargs()`` with ``rtol`` floored for adaptive solvers (fixed
        grids have no error control), an explicit ``Adjoint(rtol=...)`` floored
        likewise, and the adjoint given by name normalized under float16.
    """
    kwargs = options.as_kwargs()
    floored = []
    if options.solver.adaptive:
        rtol = _resolvable(options.rtol, dtype)
        if rtol != options.rtol:
            floored.append(("rtol", options.rtol, f"rtol={rtol:.3g}"))
            kwargs["rtol"] = rtol
    by_name = isinstance(gradient, str)
    gradient = options.gradient
    if isinstance(gradient, Adjoint):
        config = gradient.get_config()
        if tf.as_dtype(dtype) == tf.float16 and by_name:
            config["normalize"] = True
        backward_solver = gradient.solver or options.solver
        if config["rtol"] is not None and backward_solver.adaptive:
            rtol = _resolvable(config["rtol"], dtype)
            if rtol != config["rtol"]:
                floored.append(("gradient=Adjoint(rtol)", config["rtol"],
                                f"Adjoint(rtol={rtol:.3g})"))
                config["rtol"] = rtol
        if config != gradient.get_config():
            kwargs["gradient"] = Adjoint.from_config(config)
    if floored:
        _warn(owner, floored, dtype, part, remedy)
    return kwargs


def fixed_point_solve_kwargs(options, dtype, owner, part="cell", remedy=None):
    """The ``fixed_point`` keyword arguments of a layer whose cell runs in ``dtype``:
    ``options.as_kwargs()`` with ``tol`` and an explicit ``Implicit(tol=...)`` floored
    (one warning)."""
    kwargs = options.as_kwargs()
    floored = []
    tol = _resolvable(options.tol, dtype)
    if tol != options.tol:
        floored.append(("tol", options.tol, f"tol={tol:.3g}"))
        kwargs["tol"] = tol
    gradient = options.gradient
    if isinstance(gradient, Implicit) and gradient.tol is not None:
        backward_tol = _resolvable(gradient.tol, dtype)
        if backward_tol != gradient.tol:
            floored.append(("gradient=Implicit(tol)", gradient.tol,
                            f"Implicit(tol={backward_tol:.3g})"))
            kwargs["gradient"] = Implicit.from_config(
                {**gradient.get_config(), "tol": backward_tol})
    if floored:
        _warn(owner, floored, dtype, part, remedy)
    return kwargs
