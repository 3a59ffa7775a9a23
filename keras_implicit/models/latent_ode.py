"""``LatentODE``: a generative model of irregularly sampled time series."""

import math

import keras
import tensorflow as tf

from keras_implicit import validation
from keras_implicit.layers.neural_ode import NeuralODE
from keras_implicit.models import latent_ode_inputs as inputs_lib
from keras_implicit.models.latent_ode_parts import (GRUEncoder, ODERNNEncoder, mlp,
                                                    union_indices)
from keras_implicit.solvers import base as solver_base
from keras_implicit.solvers import state as state_ops

_ENCODERS = ("gru", "ode_rnn")
# The latent NeuralODE's options that the model takes and saves.
_ODE_KEYS = ("t0", "solver", "rtol", "atol", "num_steps", "gradient", "max_num_steps",
             "step_control", "jit_dynamics", "on_failure")


@keras.saving.register_keras_serializable(package="keras_implicit")
class LatentODE(keras.Model):
    """A latent ODE: an encoder infers ``z_t0``, an ODE carries it, a decoder emits observations.

    ``q(z_t0 | x)`` is a diagonal Gaussian computed by an RNN that reads each
    sample's observations backwards in time (a GRU, or the ODE-RNN of
    Rubanova et al.); ``z_t1..z_tN = ODESolve(z_t0, f, t0..tN)`` with ``f`` a
    ``NeuralODE``'s dynamics, solved once for the whole batch at the sorted
    union of its times and gathered per sample; ``x_ti ~ N(decoder(z_ti),
    sigma^2)``. ``fit(x)`` minimises the negative ELBO, the reconstruction
    negative log-likelihood of the observed entries plus
    ``kl_weight * KL(q(z_t0 | x) || N(0, I))`` per sample, and logs ``loss``,
    ``reconstruction`` and ``kl``.

    Inputs are a dict ``{"observations": (batch, T, obs_dim), "times": (batch,
    T), "mask": (batch, T)}`` (or that tuple). ``mask`` is 1 where an entry is
    observed; observed times must strictly increase within a sample; samples
    may have different times and numbers of observations. Unobserved entries
    are not read (their observations may be NaN) but are still predicted, so
    they are also the way to ask for interpolation and extrapolation: every
    time must be finite and ``>= t0`` (pad with ``t0`` or a sample's last time).

    Args:
        obs_dim: size of an observation.
        latent_dim: size of ``z``.
        hidden_units: width of the encoder RNN, the dynamics and the decoder.
        encoder: ``"gru"`` or ``"ode_rnn"``.
        dynamics: optional Keras layer ``f(z)`` (or ``f(z, t=...)``) for the
            latent ODE; default an ELU MLP with two hidden layers.
        t0: the time of ``z_t0``; all times must be ``>= t0``.
        solver, rtol, atol, num_steps, gradient, max_num_steps, step_control,
            jit_dynamics, on_failure: of the latent ``NeuralODE`` (see there).
        observation_std: standard deviation of the Gaussian observation noise, > 0.
        learn_observation_std: learn one noise scale per observed dimension,
            starting at ``observation_std``.
        kl_weight: weight of the KL term, >= 0 (1 gives the ELBO).
        encoder_solver, encoder_num_steps: ODE-RNN only: the solver of its
            hidden ODE and steps per observation gap.
        seed: seed of the reparameterisation noise.
        **kwargs: ``keras.Model`` arguments (``name``, ``dtype``...).

    Call arguments:
        inputs: the dict (or tuple) above.
        training: sample ``z_t0`` from ``q`` if true; use its mean otherwise.

    Returns:
        ``(batch, T, obs_dim)``: the decoded mean at every time of ``inputs``.
        ``compiled_path`` says what XLA compiled in the last solve.

    Mixed precision: under a mixed policy the encoder, dynamics and decoder
    run in the compute dtype; times and observations stay float32 (times are
    not rounded to float16 or bfloat16, where nearby observation times would
    merge), the ELBO is computed in float32, and ``fit`` scales the loss as
    Keras's own ``train_step`` does (``"mixed_float16"``'s ``LossScaleOptimizer``).

    Example:
        >>> data = ki.datasets.spirals(256, seed=0)
        >>> x = {k: data[k] for k in ("observations", "times", "mask")}
        >>> model = ki.models.LatentODE(obs_dim=2, latent_dim=4, hidden_units=25)
        >>> model.compile(keras.optimizers.Adam(1e-2))
        >>> model.fit(x, batch_size=64, epochs=10)
        >>> paths = model.sample_trajectories(x, np.linspace(0, 6, 100), num_samples=5)

    Reference:
        Chen, Rubanova, Bettencourt & Duvenaud 2018, Neural Ordinary
        Differential Equations, Sec. 5; Rubanova, Chen & Duvenaud 2019, Latent
        ODEs for Irregularly-Sampled Time Series.
    """

    def __init__(self, obs_dim, latent_dim, hidden_units, encoder="gru", dynamics=None, t0=0.0,
                 solver="dopri5", rtol=1e-3, atol=1e-4, num_steps=None, gradient="adjoint",
                 max_num_steps=10_000, observation_std=0.1, learn_observation_std=False,
                 kl_weight=1.0, encoder_solver="rk4", encoder_num_steps=4, seed=None,
                 step_control=None, jit_dynamics="auto", on_failure="raise", **kwargs):
        super().__init__(**kwargs)
        self.obs_dim = validation.positive_int("obs_dim", obs_dim)
        self.latent_dim = validation.positive_int("latent_dim", latent_dim)
        self.hidden_units = validation.positive_int("hidden_units", hidden_units)
        self.encoder_kind = validation.one_of("encoder", encoder, _ENCODERS)
        t0 = validation.check_float("t0", t0)
        self.observation_std_init = validation.positive_float("observation_std",
                                                              observation_std)
        self.learn_observation_std = validation.check_bool("learn_observation_std",
                                                           learn_observation_std)
        self.kl_weight = validation.nonnegative_float("kl_weight", kl_weight)
        self.seed = seed
        self.encoder_solver = solver_base.ODE_SOLVERS.serialize(
            solver_base.get(encoder_solver, "encoder_solver"))
        # Checked whichever encoder runs: the config keeps it (it was taken unchecked for GRU).
        self.encoder_num_steps = validation.optional(validation.positive_int,
                                                     "encoder_num_steps", encoder_num_steps)
        policy = self.dtype_policy
        if encoder == "gru":
            self.encoder = GRUEncoder(self.latent_dim, self.hidden_units, t0=t0, dtype=policy,
                                      name="encoder")
        else:
            self.encoder = ODERNNEncoder(self.latent_dim, self.hidden_units, t0=t0,
                                         solver=encoder_solver, num_steps=encoder_num_steps,
                                         dtype=policy, name="encoder")
        self._custom_dynamics = dynamics is not None
        if dynamics is None:
            dynamics = mlp(self.hidden_units, self.latent_dim, 2, "elu", policy, "dynamics")
        self.latent_ode = NeuralODE(
            dynamics, t0=t0, t1=float(t0) + 1.0, solver=solver, rtol=rtol, atol=atol,
            num_steps=num_steps, gradient=gradient, return_sequences=True,
            max_num_steps=max_num_steps, step_control=step_control, jit_dynamics=jit_dynamics,
            on_failure=on_failure, dtype=policy, name="latent_ode")
        self.t0 = self.latent_ode.t0
        self.decoder = mlp(self.hidden_units, self.obs_dim, 1, "relu", policy, "decoder")
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        # The union of a batch's times has a data-dependent length: no XLA.
        self.supports_jit = False
        # Times are not features: `_prepare` casts each input to its own dtype.
        self.autocast = False

    @property
    def state_dtype(self):
        """The dtype of times, observations and the ELBO: float32 under a mixed policy,
        else the compute dtype."""
        return state_ops.control_dtype(self.compute_dtype).name

    def build(self, input_shape=None):
        self.encoder.build((None, None, self.obs_dim))
        self.latent_ode.build((None, self.latent_dim))
        self.decoder.build((None, None, self.latent_dim))
        self.log_observation_std = self.add_weight(
            name="log_observation_std", shape=(self.obs_dim,),
            initializer=self._log_std_initializer,
            trainable=self.learn_observation_std)

    def _log_std_initializer(self, shape, dtype=None):
        # Computed in the variable's dtype: a float32 constant would round log(std).
        return tf.fill(shape, tf.constant(math.log(self.observation_std_init), dtype))

    def compile(self, optimizer="rmsprop", **kwargs):
        """``keras.Model.compile``; the loss is the model's own negative ELBO.

        The model and the optimizer are built here (the model's shapes do not
        depend on data), so the training function is traced once, not twice.
        """
        super().compile(optimizer=optimizer, **kwargs)
        if not self.built:
            self.build()
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        return [self.loss_tracker, self.reconstruction_tracker, self.kl_tracker]

    @property
    def compiled_path(self):
        """What XLA compiled in the latent ODE's last solve (``NeuralODE.compiled_path``:
        ``"step"`` under ``jit_dynamics="auto"`` for a dense dynamics in ``fit``, whose
        union of a batch's times has a length known only at run time)."""
        return self.latent_ode.compiled_path

    @property
    def observation_std(self):
        """The observation noise scale, ``(obs_dim,)``."""
        return tf.exp(tf.convert_to_tensor(self.log_observation_std))

    def _prepare(self, inputs):
        if not self.built:
            self.build()
        observations, times, mask = inputs_lib.unpack(inputs)
        dtype = self.state_dtype
        observations = tf.cast(tf.convert_to_tensor(observations), dtype)
        times = tf.cast(tf.convert_to_tensor(times), dtype)
        mask = tf.convert_to_tensor(mask)
        inputs_lib.check_shapes(observations, times, mask, self.obs_dim)
        observed = mask if mask.dtype == tf.bool else tf.not_equal(mask, tf.zeros([], mask.dtype))
        times = inputs_lib.check_values(times, observed, self.t0)
        # Unobserved entries may hold NaN: zero them before anything can differentiate them.
        observations = tf.where(observed[..., None], observations, tf.zeros_like(observations))
        return observations, times, observed

    def encode(self, inputs):
        """The posterior q(z_t0 | inputs): ``(mean, log_variance)``, each (batch, latent_dim)."""
        return self.encoder(*self._prepare(inputs))

    def decode(self, z0, times):
        """The decoded means ``(batch, T, obs_dim)`` of the latent paths from ``z0`` at ``times``.

        ``times`` is ``(batch, T)``, any order, every entry finite and ``>= t0``.
        """
        union, indices = union_indices(times)
        # An empty batch has no times: its (empty) paths are solved at t0.
        union = tf.cond(tf.size(union) > 0, lambda: union,
                        lambda: tf.constant([self.t0], union.dtype))
        # The ODE needs two distinct times; a batch observed only at t0 gets a spare one.
        lone = tf.logical_and(tf.equal(tf.size(union), 1), union[0] <= self.t0)
        solve_times = tf.cond(lone, lambda: tf.concat([union, union + 1], 0), lambda: union)
        states = self.latent_ode(z0, solution_times=solve_times)
        return self.decoder(tf.gather(states, indices, batch_dims=1))

    def _sample(self, mean, log_var, num_samples=None):
        shape = tf.shape(mean) if num_samples is None else tf.concat(
            [[num_samples], tf.shape(mean)], 0)
        noise = keras.random.normal(shape, dtype=mean.dtype, seed=self.seed_generator)
        return mean + tf.exp(0.5 * log_var) * noise

    def call(self, inputs, training=None):
        observations, times, observed = self._prepare(inputs)
        mean, log_var = self.encoder(observations, times, observed)
        z0 = self._sample(mean, log_var) if training else mean
        return self.decode(z0, times)

    def elbo_terms(self, inputs, training=True):
        """The two terms of the negative ELBO, per sample: ``(reconstruction, kl)``.

        ``reconstruction`` is the negative log-likelihood of the observed
        entries, ``kl`` is ``KL(q(z_t0 | x) || N(0, I))``; the training loss is
        their batch mean ``reconstruction + kl_weight * kl``. ``training=True``
        samples ``z_t0`` (the ELBO's estimator); otherwise its mean is used.
        """
        observations, times, observed = self._prepare(inputs)
        mean, log_var = self.encoder(observations, times, observed)
        z0 = self._sample(mean, log_var) if training else mean
        # The likelihood and the KL in the state dtype (float32 when mixed): a sum of
        # squared residuals over a sequence overflows float16.
        predicted = tf.cast(self.decode(z0, times), observations.dtype)
        mean, log_var = (tf.cast(v, observations.dtype) for v in (mean, log_var))
        std = tf.cast(self.observation_std, predicted.dtype)
        weights = tf.cast(observed, predicted.dtype)[..., None]
        residual = tf.where(observed[..., None], (observations - predicted) / std,
                            tf.zeros_like(predicted))
        log_norm = tf.math.log(std) + 0.5 * math.log(2.0 * math.pi)
        reconstruction = tf.reduce_sum((0.5 * tf.square(residual) + log_norm) * weights, [1, 2])
        kl = 0.5 * tf.reduce_sum(tf.square(mean) + tf.exp(log_var) - 1.0 - log_var, axis=1)
        return reconstruction, kl

    def _unpack_data(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if not isinstance(x, dict) or y is not None or sample_weight is not None:
            raise ValueError(
                "LatentODE trains on its inputs alone (the ELBO): pass fit(x) / evaluate(x) "
                "with x a dict {'observations', 'times', 'mask'} and no y or sample_weight. "
                f"Received: x of type {type(x).__name__}, y={'given' if y is not None else None}"
                f", sample_weight={'given' if sample_weight is not None else None}")
        return x

    def _update_metrics(self, reconstruction, kl, loss):
        batch = tf.shape(reconstruction)[0]
        self.loss_tracker.update_state(loss, sample_weight=batch)
        self.reconstruction_tracker.update_state(tf.reduce_mean(reconstruction), batch)
        self.kl_tracker.update_state(tf.reduce_mean(kl), batch)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        x = self._unpack_data(data)
        with tf.GradientTape() as tape:
            reconstruction, kl = self.elbo_terms(x, training=True)
            loss = tf.reduce_mean(reconstruction + self.kl_weight * kl)
            total = loss + tf.add_n(self.losses) if self.losses else loss
            # Replicas' gradients are summed: each contributes its share of the mean.
            total = total / tf.distribute.get_strategy().num_replicas_in_sync
            # As Keras's train_step: a LossScaleOptimizer multiplies the loss by its scale
            # (and divides the gradients by it in apply); other optimizers return it as is.
            total = self.optimizer.scale_loss(total)
        grads = tape.gradient(total, self.trainable_weights)
        self.optimizer.apply(grads, self.trainable_weights)
        return self._update_metrics(reconstruction, kl, loss)

    def test_step(self, data):
        reconstruction, kl = self.elbo_terms(self._unpack_data(data), training=True)
        return self._update_metrics(reconstruction, kl,
                                    tf.reduce_mean(reconstruction + self.kl_weight * kl))

    def sample_trajectories(self, inputs, times, num_samples=1):
        """Decoded paths of ``num_samples`` draws of ``z_t0 ~ q(z_t0 | inputs)`` at ``times``.

        Args:
            inputs: observed data, as in ``call``.
            times: ``(T,)`` shared or ``(batch, T)`` per sample; any times
                ``>= t0``, inside (interpolation) or beyond (extrapolation)
                the observed ones, in any order.
            num_samples: int >= 1.

        Returns:
            ``(num_samples, batch, T, obs_dim)`` decoded means.
        """
        num_samples = validation.positive_int("num_samples", num_samples)
        return self._trajectories(inputs, times, tf.constant(num_samples), sample=True)

    def predict_trajectories(self, inputs, times):
        """The decoded path of the posterior mean of ``z_t0`` at ``times``: ``(batch, T, obs_dim)``.

        ``times`` as in ``sample_trajectories``. Deterministic.
        """
        return self._trajectories(inputs, times, tf.constant(1), sample=False)[0]

    def _trajectories(self, inputs, times, num_samples, sample):
        observations, obs_times, observed = self._prepare(inputs)
        times = tf.cast(tf.convert_to_tensor(times), self.state_dtype)
        inputs_lib.check_query_times(times)
        if len(times.shape) == 1:
            times = tf.tile(times[None], [tf.shape(observations)[0], 1])
        times = inputs_lib.check_values(times, tf.ones_like(times, tf.bool), self.t0,
                                        ordered=False)
        return self._trajectories_graph(observations, obs_times, observed, times, num_samples,
                                        sample)

    @tf.function(reduce_retracing=True)
    def _trajectories_graph(self, observations, obs_times, observed, times, num_samples, sample):
        mean, log_var = self.encoder(observations, obs_times, observed)
        if sample:
            z0 = self._sample(mean, log_var, num_samples)
        else:
            z0 = mean[None]
        batch, latent = tf.shape(mean)[0], tf.shape(mean)[1]
        paths = self.decode(tf.reshape(z0, [-1, latent]), tf.tile(times, [num_samples, 1]))
        return tf.reshape(paths, [num_samples, batch, tf.shape(times)[1], self.obs_dim])

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None,
               **kwargs):
        """``keras.Model.export`` of the prediction path (``call`` with ``training=False``).

        By default the signature takes any batch size and sequence length: a
        dict of ``observations (None, None, obs_dim)``, ``times (None, None)``
        and ``mask (None, None)`` in ``state_dtype`` (float32 under a mixed policy).
        """
        if input_signature is None:
            dtype = self.state_dtype
            input_signature = [{
                "observations": tf.TensorSpec((None, None, self.obs_dim), dtype, "observations"),
                "times": tf.TensorSpec((None, None), dtype, "times"),
                "mask": tf.TensorSpec((None, None), dtype, "mask"),
            }]
        return super().export(filepath, format=format, verbose=verbose,
                              input_signature=input_signature, **kwargs)

    def save(self, filepath, overwrite=True, zipped=None, **kwargs):
        """``keras.Model.save`` through a temporary file: a failed save keeps the old file."""
        from keras_implicit import files

        return files.save_model(self, filepath, overwrite=overwrite, zipped=zipped, **kwargs)

    def get_config(self):
        config = {
            **super().get_config(),
            "obs_dim": self.obs_dim,
            "latent_dim": self.latent_dim,
            "hidden_units": self.hidden_units,
            "encoder": self.encoder_kind,
            "dynamics": (keras.saving.serialize_keras_object(self.latent_ode.dynamics)
                         if self._custom_dynamics else None),
            "observation_std": self.observation_std_init,
            "learn_observation_std": self.learn_observation_std,
            "kl_weight": self.kl_weight,
            "encoder_solver": self.encoder_solver,
            "encoder_num_steps": self.encoder_num_steps,
            "seed": self.seed,
        }
        ode = self.latent_ode.get_config()
        for key in _ODE_KEYS:
            config[key] = ode[key]
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("dynamics") is not None:
            config["dynamics"] = keras.saving.deserialize_keras_object(config["dynamics"])
        return cls(**config)
