"""``FFJORD``: a continuous normalizing flow as a TensorFlow Probability bijector."""

import keras
import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import cache_util

from keras_implicit import validation
from keras_implicit.bijectors import augmented_dynamics as aug
from keras_implicit.layers import solve_precision
from keras_implicit.layers.time_dynamics import call_dynamics, compute_dtype, takes_time
from keras_implicit.ops import trace as trace_lib
from keras_implicit.ops.ode_options import ODEOptions
from keras_implicit.solvers import state as state_ops


@keras.saving.register_keras_serializable(package="keras_implicit")
class FFJORD(tfp.bijectors.Bijector):
    """A continuous normalizing flow: ``forward`` maps ``z(t0)`` to ``z(t1)`` under ``dz/dt = f``.

    ``forward``/``inverse`` and their log-determinants come from one solve of
    the augmented ODE (state, log-determinant, and optionally the RNODE
    regularisers), so ``TransformedDistribution.log_prob`` integrates once:
    the other quantities are cached (as in ``tfp.bijectors.FFJORD``). The
    log-determinant uses the exact trace of ``df/dz`` or Hutchinson's
    estimator, with the probe drawn once per solve. Gradients reach the
    dynamics' variables through the continuous adjoint or by backpropagation.

    Args:
        dynamics: a Keras layer whose ``call(state, t=None)`` returns
            d(state)/dt with the state's shape (batch first); a ``call``
            without ``t`` is autonomous. Examples must not interact (no batch
            statistics). Its variables are this bijector's variables.
        t0, t1: the times of ``forward``'s input and output (``t1 != t0``).
        solver, rtol, atol, num_steps, gradient, max_num_steps, step_control,
            jit_dynamics, on_failure: the options of every ``odeint`` solve of
            the flow (see ``ki.ops.odeint``); ``rtol`` and ``atol`` default to
            1e-5.
        trace: ``"hutchinson"`` (unbiased, cost independent of the dimension)
            or ``"exact"`` (cost proportional to the dimension). Settable
            later through the ``trace`` attribute.
        noise: Hutchinson probes, ``"rademacher"`` or ``"gaussian"``.
        num_probes: Hutchinson probes per solve, averaged (int >= 1).
        regularizers: RNODE terms to integrate with the flow, among
            ``"kinetic_energy"`` and ``"jacobian_frobenius"`` (Finlay et al. 2020).
        event_shape: the shape of one event, of rank 1 or more, e.g. ``(2,)`` or
            ``(28, 28, 1)``; ``None`` for vectors whose size is fixed by the
            first call. Inputs of another event shape are rejected.
        validate_args, name: as for every bijector.

    Call arguments (of ``forward``, ``inverse`` and the log-det methods):
        seed: optional int or shape-[2] integer tensor: the Hutchinson probe
            is then a function of the seed (reproducible); ``None`` draws a
            fresh probe for every solve.

    Returns:
        Tensors of the input's shape and dtype; log-determinants with the event
        axes reduced. ``solve`` returns a ``FlowSolution`` with the regularisers
        and solver statistics; ``forward_regularization`` /
        ``inverse_regularization`` read the regularisers from the cache.
        ``compiled_path`` says what XLA compiled in the last solve
        (``jit_dynamics``; also ``FlowSolution.stats.compiled``).

    Mixed precision: the flow's state (the sample, the log-determinant and
    the regularisers) is integrated in float32 when the input or the dynamics
    are float16 or bfloat16 (``ki.solvers.state.control_dtype``; float64 with
    float64); only the dynamics and their vector-Jacobian products run in the
    dynamics' compute dtype, and the trace's sum over the event and the
    Hutchinson probes are float32. Outputs have the input's dtype, the
    log-determinants and regularisers the state's. An ``rtol`` below the
    dynamics' machine epsilon is floored with one warning, and float16
    dynamics make ``gradient="adjoint"`` (the name) ``Adjoint(normalize=True)``
    (``keras_implicit.layers.solve_precision``).

    Example:
        >>> dynamics = ki.layers.ConcatMLP((64, 64))
        >>> flow = ki.bijectors.FFJORD(dynamics, event_shape=(2,))
        >>> dist = tfd.TransformedDistribution(
        ...     tfd.MultivariateNormalDiag(tf.zeros(2)), flow)
        >>> dist.log_prob(tf.zeros((5, 2)))  # shape (5,), one solve

    Reference:
        Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud 2019, FFJORD:
        Free-form Continuous Dynamics for Scalable Reversible Generative Models.
        Finlay, Jacobsen, Nurbekyan & Oberman 2020, How to train your neural
        ODE: the world of Jacobian and kinetic regularization.
    """

    _cache = cache_util.BijectorCacheWithGreedyAttrs(
        forward_name="_augmented_forward", inverse_name="_augmented_inverse")

    def __init__(self, dynamics, t0=0.0, t1=1.0, solver="dopri5", rtol=1e-5, atol=1e-5,
                 trace="hutchinson", noise="rademacher", num_probes=1, gradient="adjoint",
                 regularizers=(), event_shape=None, num_steps=None, max_num_steps=10_000,
                 step_control=None, jit_dynamics="auto", on_failure="raise",
                 validate_args=False, name="ffjord"):
        parameters = dict(locals())
        if not isinstance(dynamics, keras.layers.Layer):
            raise TypeError(f"`dynamics` must be a Keras layer with call(state, t=None). "
                            f"Received: dynamics={dynamics!r}")
        self._dynamics = dynamics
        self._time_dependent = takes_time(dynamics)
        self._t0 = validation.check_float("t0", t0)
        self._t1 = validation.check_float("t1", t1)
        if self._t0 == self._t1:
            raise ValueError(f"`t0` and `t1` must differ. Received: t0={t0}, t1={t1}")
        self._options = ODEOptions(solver, rtol, atol, num_steps, gradient, max_num_steps,
                                   step_control, jit_dynamics, on_failure)
        self._owner = solve_precision.describe(dynamics, f"FFJORD {name!r} with dynamics")
        # The options of every solve with these dynamics (one warning, here).
        self._solve_kwargs = solve_precision.ode_solve_kwargs(
            self._options, compute_dtype(dynamics), self._owner, remedy="create the dynamics",
            gradient=gradient)
        self._trace = aug.check_trace_method(trace)
        self._noise = trace_lib.check_noise_kind(noise)
        self._num_probes = validation.positive_int("num_probes", num_probes)
        self._regularizers = aug.check_regularizers(regularizers)
        self._event = validation.optional(validation.check_shape, "event_shape", event_shape)
        if self._event is not None and not dynamics.built:
            dynamics.build((None,) + self._event)
        event_ndims = 1 if self._event is None else len(self._event)
        super().__init__(forward_min_event_ndims=event_ndims, dtype=None,
                         validate_args=validate_args, parameters=parameters, name=name)
        self._track_variables()
        self._fn_cache = {}  # traced right-hand sides, one per estimator/regulariser choice
        #: What XLA compiled in the last solve traced or run eagerly (``"none"``,
        #: ``"dynamics"``, ``"step"``, ``"solve"``: ``ODEStats.compiled``); ``None``
        #: before the first.
        self.compiled_path = None

    @classmethod
    def _parameter_properties(cls, dtype):
        return dict()

    def _track_variables(self):
        # tf.Module walks attributes; Keras layers are not tf.Modules, so keep the
        # dynamics' tf.Variables where distributions and checkpoints find them.
        self._dynamics_variables = [getattr(v, "value", v) for v in self._dynamics.variables]

    @property
    def variables(self):
        return tuple(getattr(v, "value", v) for v in self._dynamics.variables)

    @property
    def trainable_variables(self):
        return tuple(getattr(v, "value", v) for v in self._dynamics.trainable_variables)

    @property
    def dynamics(self):
        return self._dynamics

    @property
    def event_shape(self):
        """The event shape (``None`` until the first call when not given)."""
        return self._event

    @property
    def regularizers(self):
        return self._regularizers

    @property
    def trace(self):
        return self._trace

    @trace.setter
    def trace(self, value):
        """Switches between ``"hutchinson"`` and ``"exact"`` (e.g. after loading)."""
        self._trace = aug.check_trace_method(value)
        # The bijector cache is keyed by the parameters: results of the other estimator
        # are not reused.
        self._parameters = self._no_dependency({**self._parameters, "trace": self._trace})

    @property
    def options(self):
        """The validated ``ODEOptions`` of the flow's solves."""
        return self._options

    def get_config(self):
        return {
            "dynamics": keras.saving.serialize_keras_object(self._dynamics),
            "t0": self._t0, "t1": self._t1,
            **self._options.get_config(),
            "trace": self._trace, "noise": self._noise, "num_probes": self._num_probes,
            "regularizers": list(self._regularizers),
            "event_shape": None if self._event is None else list(self._event),
            "validate_args": self.validate_args, "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["dynamics"] = keras.saving.deserialize_keras_object(config["dynamics"])
        return cls(**config)

    def _dynamics_fn(self, t, z):
        dtype = z.dtype
        # z is the flow's state (float32 for half-precision dynamics): the dynamics see it
        # in their compute dtype, and their output comes back in the state's.
        f = tf.convert_to_tensor(call_dynamics(self._dynamics, z, tf.cast(t, dtype),
                                               self._time_dependent))
        if f.dtype != dtype:
            raise TypeError(
                f"The dynamics returned {f.dtype.name} for a state of dtype {dtype.name}; "
                f"create the dynamics layer with dtype={dtype.name!r}. Received: "
                f"dynamics={self._dynamics.name!r} with dtype={self._dynamics.dtype}")
        if not f.shape.is_compatible_with(z.shape):
            raise ValueError(
                f"The dynamics must return d(state)/dt with the state's shape. Received: "
                f"shape {f.shape} for a state of shape {z.shape} "
                f"(dynamics={self._dynamics.name!r})")
        return f

    def _check_input(self, x, argument):
        x = tf.convert_to_tensor(x)
        if not x.dtype.is_floating:
            raise TypeError(f"`{argument}` must be floating point (float16/32/64); cast the "
                            f"data first. Received: {argument} with dtype={x.dtype.name}")
        rank = len(self._event) if self._event is not None else 1
        if x.shape.rank is None or x.shape.rank < rank:
            raise ValueError(f"`{argument}` must have rank >= {rank} (batch..., *event). "
                             f"Received: {argument}.shape={x.shape}")
        event = tuple(x.shape[x.shape.rank - rank:])
        if None in event:
            raise ValueError(f"`{argument}` must have a static event shape. "
                             f"Received: {argument}.shape={x.shape}")
        if self._event is None:
            self._event = event
        elif event != self._event:
            raise ValueError(
                f"`{argument}` has event shape {event} but this FFJORD has "
                f"event_shape={self._event}. Received: {argument}.shape={x.shape}")
        return x

    @tf.autograph.experimental.do_not_convert
    def solve(self, x, direction="forward", seed=None, log_det=True, on_backward=None):
        """One solve of the flow, uncached: output, log-det, regularisers, stats.

        Args:
            x: ``(batch..., *event)``: the input of ``forward`` (at ``t0``) or
                of ``inverse`` (at ``t1``).
            direction: ``"forward"`` (t0 -> t1) or ``"inverse"`` (t1 -> t0).
            seed: Hutchinson probe seed (``None``: a fresh probe).
            log_det: integrate the log-determinant (``False``: the bare ODE,
                e.g. for sampling; regularisers are still integrated if set).
            on_backward: called with the ``ODEStats`` after an adjoint solve.

        Returns:
            A ``FlowSolution``, its log-det (of this direction's map) and
            regularisers shaped like ``x``'s batch dimensions.
        """
        if direction not in ("forward", "inverse"):
            raise ValueError(f"`direction` must be 'forward' or 'inverse'. "
                             f"Received: direction={direction!r}")
        x = self._check_input(x, "x" if direction == "forward" else "y")
        # The state of the solve: float32 for half-precision inputs (the log-determinant
        # accumulates there), else the input's dtype; the dynamics must fit it.
        state_dtype = state_ops.control_dtype(x.dtype)
        solve_precision.check_compatible("dynamics", compute_dtype(self._dynamics), state_dtype,
                                         self._owner)
        event = self._event
        batch_shape = tf.shape(x)[: x.shape.rank - len(event)]
        flat = tf.cast(tf.reshape(x, (-1,) + event), state_dtype)
        t_start, t_end = (self._t0, self._t1) if direction == "forward" else (self._t1, self._t0)
        solution = aug.integrate_flow(
            self._dynamics_fn, flat, t_start, t_end, trace=self._trace,
            noise=self._noise, num_probes=self._num_probes, regularizers=self._regularizers,
            seed=seed, log_det=log_det, on_backward=on_backward, fn_cache=self._fn_cache,
            odeint_options=self._solve_kwargs)
        if len(self._dynamics_variables) != len(self._dynamics.variables):
            self._track_variables()  # the dynamics were built by this solve
        self.compiled_path = solution.stats.compiled

        def unflatten(value, shape):
            return None if value is None else tf.reshape(value, shape)

        full = tf.shape(x)
        return aug.FlowSolution(
            tf.cast(unflatten(solution.output, full), x.dtype),
            unflatten(solution.log_det_jacobian, batch_shape),
            unflatten(solution.kinetic_energy, batch_shape),
            unflatten(solution.jacobian_frobenius, batch_shape),
            solution.stats)

    def _attributes(self, solution, sign):
        log_det = sign * solution.log_det_jacobian  # of the forward map
        attrs = {"fldj": log_det, "ildj": -log_det}
        for name in self._regularizers:
            attrs[name] = getattr(solution, name)
        return attrs

    def _augmented_forward(self, x, seed=None):
        solution = self.solve(x, "forward", seed=seed)
        return solution.output, self._attributes(solution, 1.0)

    def _augmented_inverse(self, y, seed=None):
        solution = self.solve(y, "inverse", seed=seed)
        return solution.output, self._attributes(solution, -1.0)

    def _forward(self, x, **kwargs):
        return self._augmented_forward(x, **kwargs)[0]

    def _inverse(self, y, **kwargs):
        return self._augmented_inverse(y, **kwargs)[0]

    def _forward_log_det_jacobian(self, x, **kwargs):
        cached = self._cache.forward_attributes(x, **kwargs)
        if "fldj" not in cached:
            cached.update(self._augmented_forward(x, **kwargs)[1])
        return cached["fldj"]

    def _inverse_log_det_jacobian(self, y, **kwargs):
        cached = self._cache.inverse_attributes(y, **kwargs)
        if "ildj" not in cached:
            cached.update(self._augmented_inverse(y, **kwargs)[1])
        return cached["ildj"]

    def forward_regularization(self, x, **kwargs):
        """``{name: per-event integral}`` of the requested regularisers along ``forward(x)``."""
        x = tf.convert_to_tensor(x)
        self.forward(x, **kwargs)
        return self._regularization(self._cache.forward_attributes(x, **kwargs))

    def inverse_regularization(self, y, **kwargs):
        """``{name: per-event integral}`` along ``inverse(y)`` (the training direction)."""
        y = tf.convert_to_tensor(y)
        self.inverse(y, **kwargs)
        return self._regularization(self._cache.inverse_attributes(y, **kwargs))

    def _regularization(self, attrs):
        return {name: attrs[name] for name in self._regularizers}


def flow_distribution(bijectors, event_shape, dtype=tf.float32):
    """A ``tfd.TransformedDistribution``: a standard normal pushed through ``bijectors``.

    ``bijectors[0]`` acts first on the base sample (it is nearest the base).
    """
    base = tfp.distributions.Sample(
        tfp.distributions.Normal(tf.constant(0.0, dtype), tf.constant(1.0, dtype)),
        sample_shape=tuple(event_shape))
    chain = tfp.bijectors.Chain(list(reversed(list(bijectors))))
    return tfp.distributions.TransformedDistribution(base, chain)
