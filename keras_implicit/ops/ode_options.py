"""The options of an ODE solve, validated in one place for every caller.

``odeint``, ``NeuralODE``, ``FFJORD``, ``ContinuousFlow`` and ``LatentODE`` all
build one :class:`ODEOptions`; its checks are the only ones of these options,
and its messages name the argument and the value received.
"""

import tensorflow as tf

from keras_implicit import user_warnings
from keras_implicit import validation
from keras_implicit.ops import failure
from keras_implicit.ops import jit as jit_lib
from keras_implicit.ops import ode_gradients
from keras_implicit.solvers import base as solver_base
from keras_implicit.solvers import state as state_ops
from keras_implicit.solvers import step_control as step_control_lib

ODE_OPTION_NAMES = ("solver", "rtol", "atol", "num_steps", "gradient", "max_num_steps",
                    "step_control", "jit_dynamics", "on_failure")


class ODEOptions:
    """Validated options of an ODE solve.

    Args:
        solver: a solver name, config dict or ``ODESolver``.
        rtol, atol: tolerances of adaptive solvers, finite and > 0.
        num_steps: total steps of fixed-grid solvers over the span (an int
            >= 1, at most ``max_num_steps``); ignored by adaptive solvers.
        gradient: ``"adjoint"``, ``"backprop"``, ``"checkpointed"``, a config
            dict or an ``ODEGradient``.
        max_num_steps: bound on the steps of one solve, an int in [1, 2**31 - 1].
        step_control: ``None`` (the solver's default controller), ``"i"``,
            ``"pid"``, a config dict or a ``StepController`` (adaptive solvers
            of ours only).
        jit_dynamics: compile the dynamics with XLA.
        on_failure: ``"raise"`` (default), ``"warn"`` or ``"ignore"``.
    """

    def __init__(self, solver="dopri5", rtol=1e-3, atol=1e-3, num_steps=None,
                 gradient="adjoint", max_num_steps=10_000, step_control=None, jit_dynamics="auto",
                 on_failure="raise"):
        self.solver = solver_base.get(solver)
        self.gradient = ode_gradients.get(gradient)
        # A name may mean more than its default instance (under float16 "adjoint" is
        # normalized, Adjoint() is not): the config keeps an instance as an instance.
        self.gradient_by_name = isinstance(gradient, str)
        self.rtol = validation.positive_float("rtol", rtol)
        self.atol = validation.positive_float("atol", atol)
        self.max_num_steps = validation.positive_int("max_num_steps", max_num_steps)
        if num_steps is not None or not self.solver.adaptive:
            self.solver.check_options(num_steps, self.max_num_steps)
        self.num_steps = validation.optional(validation.positive_int, "num_steps", num_steps)
        self.step_control = None
        if step_control is not None:
            if not self.solver.supports_step_control:
                raise ValueError(
                    f"`step_control` works with the adaptive solvers 'dopri5' and 'bosh3' (and "
                    f"other AdaptiveRungeKutta tableaux), not with {self.solver.name!r}. "
                    f"Received: step_control={step_control!r}, solver={self.solver.name!r}")
            self.step_control = step_control_lib.get(step_control)
        self.gradient.check(self.solver)
        self.jit_dynamics = jit_lib.check_jit_dynamics(jit_dynamics, self.solver)
        self.on_failure = failure.check_on_failure(on_failure)

    def check_features(self, event_fn=None, dense=False, first_step=None, event_name="event_fn"):
        """Refuses events, dense output and ``first_step`` on solvers without them, and a
        ``first_step`` that is not a positive number (a tensor is taken as it is: <= 0 at
        run time means automatic). ``event_name``: the argument that gave ``event_fn``."""
        validation.check_bool("dense", dense)
        if first_step is not None and not tf.is_tensor(first_step):
            validation.positive_float("first_step", first_step)
        if first_step is not None and not self.solver.adaptive:
            raise ValueError(  # a fixed grid has no first step to choose: it was ignored
                f"`first_step` works with the adaptive solvers 'dopri5' and 'bosh3' "
                f"(AdaptiveRungeKutta), not with {self.solver.name!r}. "
                f"Received: first_step={first_step!r}, solver={self.solver.name!r}")
        for flag, wanted, what in (("supports_events", event_fn is not None, event_name),
                                   ("supports_dense", dense, "dense=True")):
            if wanted and not getattr(self.solver, flag):
                raise ValueError(
                    f"`{what.split('=')[0]}`: {what} works with the adaptive solvers 'dopri5' "
                    f"and 'bosh3' (AdaptiveRungeKutta), not with {self.solver.name!r}. "
                    f"Received: solver={self.solver.name!r}")
        if event_fn is not None and not callable(event_fn):
            raise TypeError(f"`event_fn` must be callable as event_fn(t, y) -> (batch,). "
                            f"Received: event_fn={event_fn!r}")

    def resolvable_rtol(self, dtype):
        """``rtol``, floored (with one warning) to what half-precision dynamics resolve.

        Dynamics evaluated in float16 or bfloat16 carry a relative error of
        about its machine epsilon (9.8e-4, 7.8e-3) in every evaluation: an
        ``rtol`` below it cannot be met, and the default 1e-3 is below
        bfloat16's. Wider dtypes keep ``rtol`` as given, and so do fixed-grid
        solvers, which have no error control.
        """
        eps = float(state_ops.finfo(dtype).eps)
        if self.rtol >= eps or tf.as_dtype(dtype).size > 2 or not self.solver.adaptive:
            return self.rtol
        user_warnings.warn(
            f"rtol={self.rtol:g} is below what {tf.as_dtype(dtype).name} dynamics resolve "
            f"(machine epsilon {eps:.3g}); using rtol={eps:.3g}. Evaluate the dynamics in a "
            f"wider dtype (e.g. a float32 policy) for tighter solves.")
        return eps

    def solver_options(self, rtol=None):
        return solver_base.SolverOptions(self.rtol if rtol is None else rtol, self.atol,
                                         self.num_steps, self.max_num_steps, self.step_control)

    def as_kwargs(self):
        """The options as ``odeint`` keyword arguments (instances, already valid)."""
        return {name: getattr(self, name) for name in ODE_OPTION_NAMES}

    def get_config(self):
        """The options as config values: pluggable objects as names or Keras config dicts."""
        config = self.as_kwargs()
        config["solver"] = solver_base.ODE_SOLVERS.serialize(self.solver)
        config["gradient"] = ode_gradients.ODE_GRADIENTS.serialize(
            self.gradient, short=self.gradient_by_name)
        if self.step_control is not None:
            config["step_control"] = step_control_lib.STEP_CONTROLLERS.serialize(
                self.step_control)
        return config
