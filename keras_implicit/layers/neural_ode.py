"""``NeuralODE``: a Keras layer whose output is the solution of an ODE."""

import inspect

import keras
import numpy as np
import tensorflow as tf

from keras_implicit.ops import gradients as gradients_lib
from keras_implicit.ops.odeint import check_jit_dynamics, odeint
from keras_implicit.layers.solver_stats import SolverStatsMixin
from keras_implicit.solvers import registry


def takes_time(layer):
    """Whether a dynamics layer's ``call`` accepts the keyword ``t``."""
    parameters = inspect.signature(layer.call).parameters
    return "t" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _check_float(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"`{name}` must be a number. Received: {name}={value!r}")
    return float(value)


@keras.saving.register_keras_serializable(package="keras_implicit")
class NeuralODE(SolverStatsMixin, keras.layers.Layer):
    """Maps an input state ``z(t0)`` to ``z(t1)``, the solution of ``dz/dt = f(z, t)``.

    ``f`` is the ``dynamics`` layer; its weights are trained through the
    continuous adjoint (memory independent of the number of solver steps) or
    by backpropagation through the solver.

    Args:
        dynamics: a Keras layer whose ``call(state, t=None)`` returns
            d(state)/dt with the state's shape (``ConcatDense``,
            ``ConcatConv2D`` or any layer); a layer whose ``call`` has no
            ``t`` is autonomous. Any state rank works.
        t0, t1: start and end time; ``t1 < t0`` integrates backwards.
        solver: ``"dopri5"`` (default), ``"bosh3"``, ``"rk4"``, ``"midpoint"``,
            ``"euler"``, ``"bdf"``, ``"tfp_dopri5"``, a config dict or an
            ``ODESolver``.
        rtol, atol: tolerances of adaptive solvers, > 0.
        num_steps: total number of steps of fixed-grid solvers over [t0, t1].
        gradient: ``"adjoint"`` or ``"backprop"`` (or ``ki.ops.Adjoint(...)``).
        solution_times: for ``return_sequences=True``: strictly ordered times
            from ``t0`` towards ``t1``, ending at ``t1``; default ``(t1,)``.
        return_sequences: return the state at every solution time,
            ``(batch, T, ...)``, instead of the state at ``t1``.
        max_num_steps: bound on the steps of one adaptive solve.
        jit_dynamics: compile the dynamics (and the adjoint's vector-Jacobian
            product) with XLA while the solver loop stays in TensorFlow: about
            2x faster training steps for convolutional dynamics on CPU, at one
            compilation per input shape (see ``ki.ops.odeint``).
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ``dtype``...).

    Call arguments:
        inputs: the initial state ``(batch, ...)``, floating point.
        solution_times: optional 1-D tensor overriding the layer's solution
            times for this call (the solve runs from ``t0`` through them; the
            first may equal ``t0``). Used by trajectory models whose times are data.

    Returns:
        ``(batch, ...)``, or ``(batch, T, ...)`` with ``return_sequences=True``.

    Statistics: ``solver_stats()`` returns the last call's ``nfe_forward``,
    ``nfe_backward`` (adjoint evaluations of the last gradient; 0 with
    ``"backprop"``), ``steps_accepted`` and ``steps_rejected``;
    ``ki.callbacks.SolverStats`` logs them.

    Example:
        >>> model = keras.Sequential([
        ...     keras.Input((2,)),
        ...     ki.layers.NeuralODE(ki.layers.ConcatDense(2, activation="tanh")),
        ...     keras.layers.Dense(1),
        ... ])

    Reference:
        Chen, Rubanova, Bettencourt & Duvenaud 2018, Neural Ordinary
        Differential Equations.
    """

    def __init__(self, dynamics, t0=0.0, t1=1.0, solver="dopri5", rtol=1e-3, atol=1e-3,
                 num_steps=None, gradient="adjoint", solution_times=None,
                 return_sequences=False, max_num_steps=10_000, jit_dynamics=False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(dynamics, keras.layers.Layer):
            raise TypeError(
                f"`dynamics` must be a Keras layer with call(state, t=None). "
                f"Received: dynamics={dynamics!r}")
        self.dynamics = dynamics
        self.t0 = _check_float("t0", t0)
        self.t1 = _check_float("t1", t1)
        if self.t0 == self.t1:
            raise ValueError(f"`t0` and `t1` must differ. Received: t0={t0}, t1={t1}")
        self._solver = registry.get(solver)
        self._gradient = gradients_lib.get(gradient)
        self.rtol = _check_float("rtol", rtol)
        self.atol = _check_float("atol", atol)
        for label, value in (("rtol", self.rtol), ("atol", self.atol)):
            if value <= 0:
                raise ValueError(f"`{label}` must be > 0. Received: {label}={value}")
        if num_steps is not None and (
                isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer))
                or num_steps < 1):
            raise ValueError(f"`num_steps` must be an int >= 1. Received: num_steps={num_steps!r}")
        if not self._solver.adaptive and num_steps is None:
            raise ValueError(
                f"The fixed-grid solver {self._solver.name!r} needs `num_steps` (an int >= 1). "
                f"Received: num_steps=None")
        self.num_steps = None if num_steps is None else int(num_steps)
        if isinstance(self._gradient, gradients_lib.Backprop) and not self._solver.differentiable:
            raise ValueError(
                f"The solver {self._solver.name!r} cannot be backpropagated through; use "
                f"gradient='adjoint'. Received: gradient='backprop', solver={self._solver.name!r}")
        self.solution_times = self._check_solution_times(solution_times)
        self.return_sequences = bool(return_sequences)
        if isinstance(max_num_steps, bool) or not isinstance(max_num_steps, (int, np.integer)) \
                or max_num_steps < 1:
            raise ValueError(
                f"`max_num_steps` must be an int >= 1. Received: max_num_steps={max_num_steps!r}")
        self.max_num_steps = int(max_num_steps)
        check_jit_dynamics(jit_dynamics, self._solver)
        self.jit_dynamics = jit_dynamics
        self._time_dependent = takes_time(dynamics)
        # Keras compiles the train step with XLA (jit_compile="auto", on GPUs) only
        # where this holds. TFP's solvers compile badly or not at all; backprop through
        # an adaptive solver's loop has no static bound, so XLA cannot record its tape.
        self.supports_jit = self._solver.differentiable and not (
            self._solver.adaptive and isinstance(self._gradient, gradients_lib.Backprop))

    def _check_solution_times(self, solution_times):
        if solution_times is None:
            return (self.t1,)
        times = [float(t) for t in np.asarray(solution_times, dtype=np.float64).reshape(-1)]
        direction = np.sign(self.t1 - self.t0)
        steps = np.diff([self.t0] + times) * direction
        if not times or np.any(steps[1:] <= 0) or steps[0] < 0:
            raise ValueError(
                f"`solution_times` must be strictly ordered from t0={self.t0} towards "
                f"t1={self.t1}. Received: solution_times={list(solution_times)}")
        if times[-1] != self.t1:
            raise ValueError(
                f"`solution_times` must end at t1={self.t1}. Received: "
                f"solution_times={list(solution_times)}")
        return tuple(times)

    @property
    def solver(self):
        return self._solver

    def build(self, input_shape):
        if not self.dynamics.built:
            self.dynamics.build(input_shape)
        for name in ("nfe_forward", "nfe_backward", "steps_accepted", "steps_rejected"):
            self._add_solver_stat(name)

    def _dynamics_fn(self):
        if self._time_dependent:
            return lambda t, z: self.dynamics(z, t=t)
        return lambda t, z: self.dynamics(z)

    def _times(self, dtype, solution_times):
        """The solve's times and the slice of its states to return."""
        if solution_times is None:
            times = self.solution_times
            if times[0] == self.t0:
                return tf.constant(times, dtype), 0
            return tf.constant((self.t0,) + times, dtype), 1
        if tf.is_tensor(solution_times):
            solution_times = tf.cast(solution_times, dtype)
        else:  # Python floats at full precision (tf.cast would round them to float32)
            solution_times = tf.constant(solution_times, dtype)
        solution_times = tf.reshape(solution_times, [-1])
        t0 = tf.constant([self.t0], dtype)
        starts_at_t0 = tf.equal(solution_times[0], t0[0])
        times = tf.cond(starts_at_t0, lambda: solution_times,
                        lambda: tf.concat([t0, solution_times], 0))
        return times, 1 - tf.cast(starts_at_t0, tf.int32)

    def call(self, inputs, solution_times=None):
        times, skip = self._times(inputs.dtype, solution_times)
        result = odeint(
            self._dynamics_fn(), inputs, times, solver=self._solver, rtol=self.rtol,
            atol=self.atol, num_steps=self.num_steps, gradient=self._gradient,
            max_num_steps=self.max_num_steps, on_backward=self._record_backward,
            jit_dynamics=self.jit_dynamics)
        stats = result.stats
        self._record_solver_stats({
            "nfe_forward": stats.forward_nfe,
            "steps_accepted": stats.accepted_steps,
            "steps_rejected": stats.rejected_steps,
        })
        states = result.states
        if not self.return_sequences:
            return states[-1]
        states = states[skip:]
        rank = len(inputs.shape)
        return tf.transpose(states, [1, 0] + list(range(2, rank + 1)))

    def _record_backward(self, stats):
        self._record_solver_stats({"nfe_backward": stats.backward_nfe})

    def compute_output_shape(self, input_shape):
        if not self.return_sequences:
            return tuple(input_shape)
        return (input_shape[0], len(self.solution_times)) + tuple(input_shape[1:])

    def get_config(self):
        return {
            **super().get_config(),
            "dynamics": keras.saving.serialize_keras_object(self.dynamics),
            "t0": self.t0,
            "t1": self.t1,
            "solver": registry.serialize(self._solver),
            "rtol": self.rtol,
            "atol": self.atol,
            "num_steps": self.num_steps,
            "gradient": gradients_lib.serialize(self._gradient),
            "solution_times": list(self.solution_times),
            "return_sequences": self.return_sequences,
            "max_num_steps": self.max_num_steps,
            "jit_dynamics": self.jit_dynamics,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["dynamics"] = keras.saving.deserialize_keras_object(config["dynamics"])
        return cls(**config)
