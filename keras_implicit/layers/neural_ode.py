"""``NeuralODE``: a Keras layer whose output is the solution of an ODE."""

import keras
import numpy as np
import tensorflow as tf

from keras_implicit import validation
from keras_implicit.layers import solve_precision
from keras_implicit.layers.solver_stats import SolverStatsMixin
from keras_implicit.layers.time_dynamics import call_dynamics, compute_dtype, takes_time
from keras_implicit.ops.ode_options import ODEOptions
from keras_implicit.ops.odeint import odeint


@keras.saving.register_keras_serializable(package="keras_implicit")
class NeuralODE(SolverStatsMixin, keras.layers.Layer):
    """Maps an input state ``z(t0)`` to ``z(t1)``, the solution of ``dz/dt = f(z, t)``.

    ``f`` is the ``dynamics`` layer; its weights are trained through the
    continuous adjoint (memory independent of the number of solver steps), by
    backpropagation through the solver, or by checkpointed backpropagation.

    Args:
        dynamics: a Keras layer whose ``call(state, t=None)`` returns
            d(state)/dt with the state's shape (``ConcatDense``,
            ``ConcatConv2D`` or any layer); a layer whose ``call`` has no
            ``t`` is autonomous. Any state rank works.
        t0, t1: start and end time (finite); ``t1 < t0`` integrates backwards.
        solver: ``"dopri5"`` (default), ``"bosh3"``, ``"rk4"``, ``"midpoint"``,
            ``"euler"``, ``"bdf"``, ``"tfp_dopri5"``, a config dict or an
            ``ODESolver`` (a custom one too: it is saved with the model).
        rtol, atol: tolerances of adaptive solvers, finite and > 0.
        num_steps: total number of steps of fixed-grid solvers over [t0, t1].
        gradient: ``"adjoint"`` (default), ``"backprop"``, ``"checkpointed"`` or
            ``ki.ops.Adjoint(...)`` / ``Backprop()`` / ``Checkpointed(...)``.
        solution_times: for ``return_sequences=True``: strictly ordered times
            from ``t0`` towards ``t1``, ending at ``t1``; default ``(t1,)``.
        return_sequences: return the state at every solution time,
            ``(batch, T, ...)``, instead of the state at ``t1``.
        max_num_steps: bound on the steps of one solve.
        jit_dynamics: ``"auto"`` (default), ``True`` or ``False``: what XLA
            compiles (see ``ki.ops.odeint``). The config keeps ``"auto"``,
            decided again on each machine and at each trace;
            ``compiled_path`` is the path of the last call traced or run
            eagerly (a traced function that runs again does not set it).
        step_control: the step-size controller of adaptive solvers (``None``:
            ``ki.solvers.IController()``; ``ki.solvers.PIDController(...)``;
            both take ``min_step``, ``max_step``, ``jump_times``).
        on_failure: ``"raise"`` (default), ``"warn"`` or ``"ignore"`` when a
            solve fails (see ``ki.ops.odeint``).
        event: terminal event, a Keras layer whose ``call(state, t=None)``
            returns one value per sample, ``(batch,)``: each sample stops where
            it changes sign and is held at its event state afterwards
            (``return_sequences`` too). ``t`` may be a ``(batch,)`` tensor.
        return_events: return ``(state, event_time, fired)`` instead of the
            state: ``event_time`` ``(batch,)`` (``t1`` where the event did not
            fire) in the solver's time dtype (float32 under a mixed policy: times
            are not rounded to the compute dtype) and ``fired`` ``(batch,)`` bool.
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ``dtype``...).

    Call arguments:
        inputs: the initial state ``(batch, ...)``, floating point.
        solution_times: optional 1-D tensor overriding the layer's solution
            times for this call (the solve runs from ``t0`` through them; the
            first may equal ``t0``). Used by trajectory models whose times are data.

    Returns:
        ``(batch, ...)``, or ``(batch, T, ...)`` with ``return_sequences=True``;
        with ``return_events=True`` the tuple above. ``solve(inputs,
        dense=True)`` returns the whole ``ODEResult`` (``evaluate(t)`` anywhere).

    Mixed precision: under a mixed policy the dynamics run in the compute
    dtype and the solver (time, step size, error norm, stage sums) in float32;
    the output has the compute dtype, and ``solution_times`` keep full precision
    (they are not autocast). An ``rtol`` below the compute dtype's machine
    epsilon (the default 1e-3 under ``"mixed_bfloat16"``) is floored to it with
    one warning, and under float16 ``gradient="adjoint"`` (the name) is
    ``Adjoint(normalize=True)``, which Keras's loss scaling cannot fool; an
    ``Adjoint(...)`` instance is used as given
    (``keras_implicit.layers.solve_precision``). ``get_config`` keeps the
    options as given.

    Statistics: ``solver_stats()`` returns the last call's ``nfe_forward``,
    ``nfe_backward`` (adjoint evaluations of the last gradient; 0 otherwise),
    ``steps_accepted``, ``steps_rejected`` and, with an event, ``event_steps``;
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
                 return_sequences=False, max_num_steps=10_000, jit_dynamics="auto",
                 step_control=None, on_failure="raise", event=None, return_events=False,
                 **kwargs):
        super().__init__(**kwargs)
        if not isinstance(dynamics, keras.layers.Layer):
            raise TypeError(
                f"`dynamics` must be a Keras layer with call(state, t=None). "
                f"Received: dynamics={dynamics!r}")
        self.dynamics = dynamics
        self.t0 = validation.check_float("t0", t0)
        self.t1 = validation.check_float("t1", t1)
        if self.t0 == self.t1:
            raise ValueError(f"`t0` and `t1` must differ. Received: t0={t0}, t1={t1}")
        self.options = ODEOptions(solver, rtol, atol, num_steps, gradient, max_num_steps,
                                  step_control, jit_dynamics, on_failure)
        self.solution_times = self._check_solution_times(solution_times)
        self.return_sequences = validation.check_bool("return_sequences", return_sequences)
        if event is not None and not isinstance(event, keras.layers.Layer):
            raise TypeError(f"`event` must be a Keras layer with call(state, t=None) returning "
                            f"(batch,). Received: event={event!r}")
        self.event = event
        self.options.check_features(event_fn=None if event is None else self._event_fn,
                                    event_name="event")
        self.return_events = validation.check_bool("return_events", return_events)
        if self.return_events and event is None:
            raise ValueError("`return_events=True` needs an `event`. Received: event=None")
        self._time_dependent = takes_time(dynamics)
        owner = solve_precision.describe(self)
        solve_precision.check_compatible("dynamics", compute_dtype(dynamics),
                                         self.compute_dtype, owner)
        # The options of every solve under this layer's policy (one warning, here).
        self._solve_kwargs = solve_precision.ode_solve_kwargs(
            self.options, solve_precision.evaluation_dtype(self.compute_dtype,
                                                           compute_dtype(dynamics)), owner,
            gradient=gradient)
        #: What XLA compiled in the last call traced or run eagerly (``"none"``,
        #: ``"dynamics"``, ``"step"``, ``"solve"``; eager calls: ``"none"``); ``None``
        #: before the first call.
        self.compiled_path = None
        # `call` casts the state to the compute dtype itself: autocasting would round
        # `solution_times` (times, not features) to float16 or bfloat16 as well.
        self.autocast = False
        # Keras compiles the train step with XLA (jit_compile="auto", on GPUs) only
        # where this holds. TFP's solvers compile badly or not at all; backprop through
        # an adaptive solver's loop has no static bound, so XLA cannot record its tape;
        # checkpointed steps are kept in arrays of a size known when the solve runs.
        self.supports_jit = self.options.gradient.compiles_whole(self.solver)

    def _check_solution_times(self, solution_times):
        if solution_times is None:
            return (self.t1,)
        try:
            times = [float(t) for t in np.asarray(solution_times, dtype=np.float64).reshape(-1)]
        except (TypeError, ValueError):
            raise validation.ArgumentTypeError(
                f"`solution_times` must be a list of numbers. "
                f"Received: solution_times={solution_times!r}") from None
        if not self._ordered_from_t0(times):
            raise ValueError(
                f"`solution_times` must be finite and strictly ordered from t0={self.t0} "
                f"towards t1={self.t1}. Received: solution_times={list(times)}")
        if times[-1] != self.t1:
            raise ValueError(
                f"`solution_times` must end at t1={self.t1}. Received: "
                f"solution_times={list(times)}")
        return tuple(times)

    def _ordered_from_t0(self, times):
        """Whether ``times`` (a sequence of floats) is non-empty, finite and strictly ordered
        from ``t0`` (which the first may equal) in the direction of ``t1``."""
        steps = np.diff(np.concatenate([[self.t0], times])) * np.sign(self.t1 - self.t0)
        return (len(times) > 0 and bool(np.all(np.isfinite(times))) and steps[0] >= 0
                and bool(np.all(steps[1:] > 0)))

    # Option attributes (read-only views of the validated options).
    solver = property(lambda self: self.options.solver)
    gradient = property(lambda self: self.options.gradient)
    rtol = property(lambda self: self.options.rtol)
    atol = property(lambda self: self.options.atol)
    num_steps = property(lambda self: self.options.num_steps)
    max_num_steps = property(lambda self: self.options.max_num_steps)
    jit_dynamics = property(lambda self: self.options.jit_dynamics)
    step_control = property(lambda self: self.options.step_control)
    on_failure = property(lambda self: self.options.on_failure)

    def build(self, input_shape):
        if not self.dynamics.built:
            self.dynamics.build(input_shape)
        if self.event is not None and not self.event.built:
            self.event.build(input_shape)
        names = ["nfe_forward", "nfe_backward", "steps_accepted", "steps_rejected"]
        if self.event is not None:
            names.append("event_steps")
        for name in names:
            self._add_solver_stat(name)

    def _dynamics_fn(self):
        def fn(t, z):
            return call_dynamics(self.dynamics, z, tf.cast(t, z.dtype), self._time_dependent)

        return fn

    def _event_fn(self, t, z):
        return call_dynamics(self.event, z, tf.cast(t, z.dtype))

    def _times(self, solution_times):
        """The solve's times (float64 values, cast by ``odeint``) and the slice to return."""
        if solution_times is None:
            times = self.solution_times
            if times[0] == self.t0:
                return tf.constant(times, tf.float64), 0
            return tf.constant((self.t0,) + times, tf.float64), 1
        solution_times = self._check_call_times(solution_times)
        t0 = tf.constant([self.t0], tf.float64)
        starts_at_t0 = tf.equal(solution_times[0], t0[0])
        times = tf.cond(starts_at_t0, lambda: solution_times,
                        lambda: tf.concat([t0, solution_times], 0))
        return times, 1 - tf.cast(starts_at_t0, tf.int32)

    def _check_call_times(self, solution_times):
        """A call's ``solution_times`` as a float64 vector: 1-D, not empty, strictly ordered
        from ``t0`` (which the first may equal) in the direction of ``t1``; checked now when
        known, else when the graph runs."""
        message = (f"`solution_times` of a call must be a non-empty 1-D list of finite times, "
                   f"strictly ordered from t0={self.t0} in the direction of t1={self.t1} (the "
                   f"first may equal t0).")
        if tf.is_symbolic_tensor(solution_times):
            if solution_times.shape.rank not in (None, 1):
                raise ValueError(f"{message} Received: solution_times={solution_times!r}")
            times = tf.reshape(tf.cast(solution_times, tf.float64), [-1])
            # t0 as the times' dtype holds it (float32 0.7 is 0.69999998): t0 exactly.
            t0_there = tf.cast(tf.cast(self.t0, solution_times.dtype), tf.float64)
            times = tf.concat([tf.where(tf.equal(times[:1], t0_there),
                                        tf.constant(self.t0, tf.float64), times[:1]),
                               times[1:]], 0)
            from_t0 = tf.concat([tf.constant([self.t0], tf.float64), times], 0)
            steps = (from_t0[1:] - from_t0[:-1]) * np.sign(self.t1 - self.t0)
            check = tf.debugging.Assert(
                (tf.size(times) > 0) & tf.reduce_all(tf.math.is_finite(times))
                & tf.reduce_all(steps[:1] >= 0) & tf.reduce_all(steps[1:] > 0),
                [message + " Received: solution_times=", times], summarize=20)
            with tf.control_dependencies([check]):
                return tf.identity(times)
        try:  # Python floats, NumPy or an eager tensor: at full precision
            given = np.asarray(solution_times)
            values = given.astype(np.float64)
        except (TypeError, ValueError):
            values = None
        if values is not None and values.ndim == 1 and values.size:
            if given.dtype.kind == "f" and values[0] == np.asarray(self.t0, given.dtype):
                values[0] = self.t0  # t0 as the times' dtype holds it: t0 exactly
            if self._ordered_from_t0(values):
                return tf.constant(values)
        shown = values.tolist() if values is not None else solution_times
        raise ValueError(f"{message} Received: solution_times={shown!r}")

    def solve(self, inputs, solution_times=None, dense=False):
        """The whole ``ODEResult`` of the layer's solve from ``inputs``.

        With ``dense=True`` its ``evaluate(t)`` gives the state at any time in
        ``[t0, t1]`` (memory: one interpolating polynomial per solver step;
        differentiable with ``Backprop`` and ``Checkpointed``).
        """
        inputs = self._cast_inputs(inputs)
        if not self.built:
            self.build(inputs.shape)
        times, _ = self._times(solution_times)
        return self._odeint(inputs, times, dense)

    def _cast_inputs(self, inputs):
        inputs = tf.convert_to_tensor(inputs)
        return tf.cast(inputs, self.compute_dtype) if inputs.dtype.is_floating else inputs

    def _odeint(self, inputs, times, dense=False):
        return odeint(self._dynamics_fn(), inputs, times, **self._solve_kwargs,
                      event_fn=None if self.event is None else self._event_fn, dense=dense,
                      on_backward=self._record_backward)

    def call(self, inputs, solution_times=None):
        inputs = self._cast_inputs(inputs)
        times, skip = self._times(solution_times)
        result = self._odeint(inputs, times)
        stats = result.stats
        self.compiled_path = stats.compiled
        values = {"nfe_forward": stats.forward_nfe, "steps_accepted": stats.accepted_steps,
                  "steps_rejected": stats.rejected_steps}
        if self.event is not None:
            values["event_steps"] = stats.event_steps
        self._record_solver_stats(values)
        states = result.states
        if not self.return_sequences:
            output = states[-1]
        else:
            states = states[skip:]
            rank = len(inputs.shape)
            output = tf.transpose(states, [1, 0] + list(range(2, rank + 1)))
        if self.return_events:
            # The solver's time dtype (float32 under a mixed policy): times are not rounded.
            return output, result.event_times, result.event_fired
        return output

    def _record_backward(self, stats):
        self._record_solver_stats({"nfe_backward": stats.backward_nfe})

    def compute_output_shape(self, input_shape):
        if not self.return_sequences:
            shape = tuple(input_shape)
        else:
            shape = (input_shape[0], len(self.solution_times)) + tuple(input_shape[1:])
        if self.return_events:
            return shape, (input_shape[0],), (input_shape[0],)
        return shape

    def compute_output_spec(self, inputs, solution_times=None):
        spec = super().compute_output_spec(inputs, solution_times=solution_times)
        if not self.return_events:
            return spec
        # Keras gives every output the compute dtype: event times keep the solver's time
        # dtype (float32 for half precision), and `fired` is bool.
        state, event_time, fired = spec
        time_dtype = "float64" if self.compute_dtype == "float64" else "float32"
        return (state, keras.KerasTensor(event_time.shape, time_dtype),
                keras.KerasTensor(fired.shape, "bool"))

    def get_config(self):
        return {
            **super().get_config(),
            "dynamics": keras.saving.serialize_keras_object(self.dynamics),
            "t0": self.t0,
            "t1": self.t1,
            **self.options.get_config(),
            "solution_times": list(self.solution_times),
            "return_sequences": self.return_sequences,
            "event": None if self.event is None else keras.saving.serialize_keras_object(
                self.event),
            "return_events": self.return_events,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["dynamics"] = keras.saving.deserialize_keras_object(config["dynamics"])
        if config.get("event") is not None:
            config["event"] = keras.saving.deserialize_keras_object(config["event"])
        return cls(**config)
