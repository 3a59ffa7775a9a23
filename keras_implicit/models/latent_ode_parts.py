"""Building blocks of ``LatentODE``: recognition networks and the time-axis bookkeeping.

Irregular batches are ``(observations, times, observed)`` with a leading batch
axis and a common padded length ``T``: entry ``[b, i]`` is observed where
``observed[b, i]`` is true. The recognition networks read each sample's
observed entries only, from the last to the first, so a sample's posterior
does not depend on what else is in the batch or on its padding.
"""

import keras
import tensorflow as tf

from keras_implicit import validation
from keras_implicit.ops.odeint import odeint
from keras_implicit.solvers import base as solver_base


def compact(observations, times, observed):
    """Moves each sample's observed entries to the front, in their order.

    Returns ``(observations, times, observed, gaps)`` where ``gaps[b, i]`` is
    ``times[b, i + 1] - times[b, i]`` between consecutive observed entries
    (0 after the last one and on padding). Unobserved observations are zeroed
    so that NaN placeholders cannot reach a gradient.
    """
    order = tf.argsort(tf.cast(tf.logical_not(observed), tf.int32), axis=1, stable=True)
    observed = tf.gather(observed, order, batch_dims=1)
    times = tf.gather(times, order, batch_dims=1)
    observations = tf.gather(observations, order, batch_dims=1)
    observations = tf.where(observed[..., None], observations, tf.zeros_like(observations))
    has_next = tf.concat([observed[:, 1:], tf.zeros_like(observed[:, :1])], axis=1)
    next_times = tf.concat([times[:, 1:], times[:, -1:]], axis=1)
    gaps = tf.where(has_next, next_times - times, tf.zeros_like(times))
    return observations, times, observed, gaps


def union_indices(times):
    """The sorted distinct values of ``times`` (any shape) and each entry's index in them."""
    flat = tf.reshape(times, [-1])
    union = tf.unique(tf.sort(flat)).y
    indices = tf.searchsorted(union, flat, side="left")
    return union, tf.reshape(indices, tf.shape(times))


def mlp(units, output_units, num_layers, activation, dtype, name):
    """``num_layers`` hidden Dense layers of ``units`` and a linear output layer."""
    layers = [keras.layers.Dense(units, activation=activation, dtype=dtype, name=f"dense_{i}")
              for i in range(num_layers)]
    layers.append(keras.layers.Dense(output_units, dtype=dtype, name="output"))
    return keras.Sequential(layers, name=name)


class _Recognition(keras.layers.Layer):
    """Shared head: the final hidden state -> mean and log-variance of q(z_t0)."""

    def __init__(self, latent_dim, units, t0=0.0, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = validation.positive_int("latent_dim", latent_dim)
        self.units = validation.positive_int("units", units)
        self.t0 = validation.check_float("t0", t0)
        self.head = keras.layers.Dense(2 * self.latent_dim, dtype=self.dtype_policy, name="head")

    def _split(self, hidden):
        moments = self.head(hidden)
        return moments[:, : self.latent_dim], moments[:, self.latent_dim:]

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim, "units": self.units,
                "t0": self.t0}


@keras.saving.register_keras_serializable(package="keras_implicit")
class GRUEncoder(_Recognition):
    """A GRU that reads a sample's observations backwards in time and outputs q(z_t0).

    Each step sees ``[x_i, t_i - t0, t_{i+1} - t_i]`` (the gap to the next
    observation, 0 for the last), so irregular sampling is visible to the RNN
    (Chen et al. 2018, Sec. 5).

    Args:
        latent_dim: size of ``z_t0``.
        units: GRU units.
        t0: the time at which ``z_t0`` lives.
        **kwargs: ``keras.layers.Layer`` arguments.

    Call arguments:
        observations: ``(batch, T, obs_dim)``.
        times: ``(batch, T)``.
        observed: ``(batch, T)`` bool; observed times strictly increase per sample.

    Returns:
        ``(mean, log_variance)``, each ``(batch, latent_dim)``.

    Example:
        >>> mean, log_var = GRUEncoder(4, 25)(x, t, observed)

    Reference:
        Chen, Rubanova, Bettencourt & Duvenaud 2018, Neural Ordinary
        Differential Equations, Sec. 5.
    """

    def __init__(self, latent_dim, units, t0=0.0, **kwargs):
        super().__init__(latent_dim, units, t0, **kwargs)
        self.gru = keras.layers.GRU(self.units, go_backwards=True, dtype=self.dtype_policy,
                                    name="gru")

    def build(self, observations_shape, times_shape=None, observed_shape=None):
        self.gru.build((None, None, observations_shape[-1] + 2))
        self.head.build((None, self.units))

    def call(self, observations, times, observed):
        observations, times, observed, gaps = compact(observations, times, observed)
        features = tf.concat(
            [observations, (times - self.t0)[..., None], gaps[..., None]], axis=-1)
        return self._split(self.gru(features, mask=observed))


@keras.saving.register_keras_serializable(package="keras_implicit")
class ODEGRUCell(keras.layers.Layer):
    """The ODE-RNN cell: evolve the hidden state by an ODE across the gap, then a GRU update.

    Its input is ``[x, span]`` where ``span`` (last column) is the signed time
    from the previous step to this one; the hidden state follows
    ``dh/dt = f(h)`` over that span (integrated in ``s = (t - t_prev) / span``
    on ``[0, 1]``, so every sample of a batch takes its own span in one
    solve), and then a ``GRUCell`` reads ``x``. The solve is differentiated by
    backpropagation, as the span is data.

    Args:
        units: hidden size.
        solver: ODE solver of the hidden dynamics (differentiable ones only).
        num_steps: steps of a fixed-grid solver per observation gap.
        rtol, atol: tolerances of an adaptive solver.
        **kwargs: ``keras.layers.Layer`` arguments.

    Call arguments:
        inputs: ``(batch, features + 1)``.
        states: ``[h]`` with ``h`` of shape ``(batch, units)``.

    Returns:
        ``(h, [h])``.

    Example:
        >>> rnn = keras.layers.RNN(ODEGRUCell(32), go_backwards=True)

    Reference:
        Rubanova, Chen & Duvenaud 2019, Latent ODEs for Irregularly-Sampled
        Time Series, Algorithm 1.
    """

    def __init__(self, units, solver="rk4", num_steps=4, rtol=1e-3, atol=1e-4, **kwargs):
        super().__init__(**kwargs)
        self.units = validation.positive_int("units", units)
        self._solver = solver_base.get(solver, "encoder_solver")
        if not self._solver.differentiable:
            raise ValueError(
                f"The ODE-RNN encoder backpropagates through its solver; choose one of "
                f"'dopri5', 'bosh3', 'rk4', 'midpoint', 'euler'. "
                f"Received: encoder_solver={self._solver.name!r}")
        if not self._solver.adaptive and num_steps is None:
            raise ValueError(
                f"The fixed-grid encoder solver {self._solver.name!r} needs "
                f"`encoder_num_steps` (an int >= 1). Received: encoder_num_steps=None")
        self.num_steps = validation.optional(validation.positive_int, "encoder_num_steps",
                                             num_steps)
        self.rtol = validation.positive_float("rtol", rtol)
        self.atol = validation.positive_float("atol", atol)
        self.state_size = self.units
        self.output_size = self.units
        self.gru_cell = keras.layers.GRUCell(self.units, dtype=self.dtype_policy, name="gru_cell")
        self.dynamics = mlp(self.units, self.units, 1, "tanh", self.dtype_policy, "ode_func")

    def build(self, input_shape):
        self.gru_cell.build((None, input_shape[-1] - 1))
        self.dynamics.build((None, self.units))

    def evolve(self, h, span):
        """``h`` carried by ``dh/dt = f(h)`` over the per-sample time ``span`` (batch, 1)."""
        times = tf.constant([0.0, 1.0], h.dtype)
        result = odeint(lambda s, y: span * self.dynamics(y), h, times, solver=self._solver,
                        rtol=self.rtol, atol=self.atol, num_steps=self.num_steps,
                        gradient="backprop")
        return result.states[-1]

    def call(self, inputs, states, training=False):
        h = self.evolve(states[0], inputs[:, -1:])
        output, new_states = self.gru_cell(inputs[:, :-1], [h], training=training)
        return output, new_states

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "solver": solver_base.ODE_SOLVERS.serialize(self._solver),
                "num_steps": self.num_steps,
                "rtol": self.rtol, "atol": self.atol}


@keras.saving.register_keras_serializable(package="keras_implicit")
class ODERNNEncoder(_Recognition):
    """The ODE-RNN recognition network of Rubanova et al. 2019, run backwards in time.

    Starting from ``h = 0`` at a sample's last observation, the hidden state
    is carried by a learned ODE back to each earlier observation and updated
    there by a GRU; after the first observation it is carried on to ``t0``.
    Samples never see one another's times.

    Args:
        latent_dim: size of ``z_t0``.
        units: hidden size of the GRU and its ODE.
        t0: the time at which ``z_t0`` lives.
        solver, num_steps, rtol, atol: of the hidden ODE (see ``ODEGRUCell``).
        **kwargs: ``keras.layers.Layer`` arguments.

    Call arguments:
        observations: ``(batch, T, obs_dim)``.
        times: ``(batch, T)``.
        observed: ``(batch, T)`` bool; observed times strictly increase per sample.

    Returns:
        ``(mean, log_variance)``, each ``(batch, latent_dim)``.

    Example:
        >>> mean, log_var = ODERNNEncoder(4, 25)(x, t, observed)

    Reference:
        Rubanova, Chen & Duvenaud 2019, Latent ODEs for Irregularly-Sampled
        Time Series.
    """

    def __init__(self, latent_dim, units, t0=0.0, solver="rk4", num_steps=4, rtol=1e-3,
                 atol=1e-4, **kwargs):
        super().__init__(latent_dim, units, t0, **kwargs)
        self.cell = ODEGRUCell(self.units, solver=solver, num_steps=num_steps, rtol=rtol,
                               atol=atol, dtype=self.dtype_policy, name="ode_gru_cell")
        self.rnn = keras.layers.RNN(self.cell, go_backwards=True, dtype=self.dtype_policy,
                                    name="rnn")

    def build(self, observations_shape, times_shape=None, observed_shape=None):
        self.rnn.build((None, None, observations_shape[-1] + 1))
        self.head.build((None, self.units))

    def call(self, observations, times, observed):
        observations, times, observed, gaps = compact(observations, times, observed)
        hidden = self.rnn(tf.concat([observations, -gaps[..., None]], axis=-1), mask=observed)
        first_time = times[:, :1]  # compacted: the first observed time of each sample
        hidden = self.cell.evolve(hidden, self.t0 - first_time)
        return self._split(hidden)

    def get_config(self):
        cell = self.cell.get_config()
        options = {k: cell[k] for k in ("solver", "num_steps", "rtol", "atol")}
        return {**super().get_config(), **options}
