"""``ContinuousFlow``: a density model, a standard normal pushed through FFJORD blocks."""

import contextlib
import math

import keras
import numpy as np
import tensorflow as tf

from keras_implicit import bijectors as bijectors_lib  # FFJORD (and TFP) load on first use
from keras_implicit import validation
from keras_implicit.layers import solve_precision
from keras_implicit.layers.solver_stats import SolverStatsMixin
from keras_implicit.layers.time_dynamics import ConcatMLP, compute_dtype
from keras_implicit.ops import trace as trace_lib
from keras_implicit.ops.ode_options import ODEOptions
from keras_implicit.solvers import state as state_ops

_REGULARIZERS = ("kinetic_energy", "jacobian_frobenius")


@keras.saving.register_keras_serializable(package="keras_implicit")
class ContinuousFlow(SolverStatsMixin, keras.Model):
    """A density model: a standard normal base pushed through one or more FFJORD blocks.

    ``fit(x)`` maximises the log-likelihood of ``x``: the loss is the mean
    negative log-likelihood plus the weighted RNODE regularisers (kinetic
    energy and Jacobian Frobenius norm, integrated along the data-to-base
    solve). The logs report ``nll`` (nats), ``bits_per_dim`` (``nll / (D
    log 2)``, no dequantisation offset), the regularisers when weighted, and
    the forward/backward NFE.

    Args:
        dynamics: a Keras layer ``call(state, t=None)`` or a list of them,
            one per block (nearest the base first); ``None`` builds
            ``num_blocks`` ``ConcatMLP(hidden_units, activation)`` (vectors only).
        num_blocks, hidden_units, activation: the default dynamics.
        t0, t1, solver, rtol, atol, trace, noise, num_probes, gradient,
        num_steps, max_num_steps, step_control, jit_dynamics, on_failure: of
            every ``ki.bijectors.FFJORD`` block.
        kinetic_energy_weight, jacobian_frobenius_weight: RNODE weights
            (>= 0; a regulariser is integrated only when its weight is > 0).
        seed: seed of the Hutchinson probes and of ``sample`` (``None``: random).
        **kwargs: ``keras.Model`` arguments (``name``, ``dtype``...).

    Call arguments:
        inputs: ``(batch, *event)`` data, floating point.

    Returns:
        ``log p(inputs)``, shape ``(batch,)``. Also ``log_prob(x, seed=None)``
        and ``sample(n, seed=None)``; ``compiled_path`` says what XLA compiled
        in the last solve (``jit_dynamics``); ``trace`` is settable (``"exact"`` for
        evaluation, also after loading); ``export_saved_model(path)`` writes a
        SavedModel with ``log_prob``, ``log_prob_exact``,
        ``log_prob_hutchinson`` and ``sample`` endpoints.

    Mixed precision: under a mixed policy the dynamics run in the compute
    dtype and everything else in float32: the data are not rounded to it,
    and the flow's state, log-determinant, regularisers, ``log_prob``, the
    loss and ``sample`` are float32 (see ``ki.bijectors.FFJORD``). ``fit``
    scales the loss as Keras's own ``train_step`` does, so the
    ``LossScaleOptimizer`` of ``"mixed_float16"`` works.

    Example:
        >>> flow = ki.models.ContinuousFlow(hidden_units=(64, 64, 64), rtol=1e-3, atol=1e-3)
        >>> flow.compile(optimizer=keras.optimizers.Adam(1e-2))
        >>> flow.fit(ki.datasets.toy2d("8gaussians", 10_000), batch_size=512, epochs=10)
        >>> flow.log_prob(x_test), flow.sample(1000, seed=0)

    Reference:
        Grathwohl et al. 2019, FFJORD; Finlay et al. 2020, How to train your
        neural ODE (RNODE).
    """

    def __init__(self, dynamics=None, num_blocks=1, hidden_units=(64, 64, 64), activation="tanh",
                 t0=0.0, t1=1.0, solver="dopri5", rtol=1e-5, atol=1e-5, trace="hutchinson",
                 noise="rademacher", num_probes=1, gradient="adjoint", kinetic_energy_weight=0.0,
                 jacobian_frobenius_weight=0.0, num_steps=None, max_num_steps=10_000,
                 step_control=None, jit_dynamics="auto", on_failure="raise", seed=None, **kwargs):
        super().__init__(**kwargs)
        if dynamics is None:
            num_blocks = validation.positive_int("num_blocks", num_blocks)
            dynamics = [ConcatMLP(hidden_units, activation, dtype=self.dtype_policy,
                                  name=f"dynamics_{k}") for k in range(num_blocks)]
        # One layer, or a list of them; a number or a string is refused here, not by list().
        received = dynamics
        dynamics = list(dynamics) if isinstance(dynamics, (list, tuple)) else [dynamics]
        if not dynamics or not all(isinstance(d, keras.layers.Layer) for d in dynamics):
            raise TypeError(f"`dynamics` must be a Keras layer, a non-empty list of them or None. "
                            f"Received: dynamics={received!r}")
        self.dynamics = dynamics
        self._regularizer_weights = {
            "kinetic_energy": validation.nonnegative_float("kinetic_energy_weight",
                                                           kinetic_energy_weight),
            "jacobian_frobenius": validation.nonnegative_float("jacobian_frobenius_weight",
                                                               jacobian_frobenius_weight)}
        self._ode_options = ODEOptions(solver, rtol, atol, num_steps, gradient, max_num_steps,
                                       step_control, jit_dynamics, on_failure)
        # Every block solves with these (one precision warning, here, instead of one per
        # block); get_config saves _ode_options.
        solve_kwargs = solve_precision.ode_solve_kwargs(
            self._ode_options, solve_precision.evaluation_dtype(
                *[compute_dtype(d) for d in dynamics]), solve_precision.describe(self),
            gradient=gradient)
        self.flow_options = {
            "t0": t0, "t1": t1, **solve_kwargs, "trace": trace, "noise": noise,
            "num_probes": num_probes,
            "regularizers": [n for n in _REGULARIZERS if self._regularizer_weights[n] > 0]}
        # Validates every option now (errors name the argument); rebuilt with the event shape.
        bijectors_lib.FFJORD(dynamics[0], **self.flow_options)
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(seed)
        object.__setattr__(self, "_flow_blocks", None)  # FFJORDs are not Keras-tracked
        #: What XLA compiled in the last solve traced or run eagerly (``"none"``,
        #: ``"dynamics"``, ``"step"``, ``"solve"``); ``None`` before the first.
        self.compiled_path = None
        logged = ["loss", "nll", "bits_per_dim", *self.flow_options["regularizers"],
                  "nfe_forward", "nfe_backward"]
        self._trackers = {name: keras.metrics.Mean(name=name) for name in logged}
        # The data are the flow's state: not rounded to a half-precision compute dtype.
        self.autocast = False

    @property
    def state_dtype(self):
        """The dtype of the data, the flow's state, ``log_prob`` and samples: float32
        under a mixed policy, else the compute dtype."""
        return state_ops.control_dtype(self.compute_dtype).name

    # ----------------------------------------------------------------- building
    def build(self, input_shape):
        event = tuple(input_shape[1:])
        if not event or None in event:
            raise ValueError(f"ContinuousFlow needs inputs (batch, *event) with a static event "
                             f"shape. Received: input_shape={tuple(input_shape)}")
        for layer in self.dynamics:
            if not layer.built:
                layer.build((None,) + event)
        self.event_shape = event
        self.event_size = int(np.prod(event))
        object.__setattr__(self, "_flow_blocks", [
            bijectors_lib.FFJORD(layer, event_shape=event, name=f"ffjord_{k}",
                                 **self.flow_options)
            for k, layer in enumerate(self.dynamics)])
        self._add_solver_stat("nfe_forward")
        self._add_solver_stat("nfe_backward")

    @property
    def bijectors(self):
        """The FFJORD blocks, nearest the base first (built with the model)."""
        if self._flow_blocks is None:
            raise ValueError("The ContinuousFlow is not built yet: call it on data first.")
        return list(self._flow_blocks)

    @property
    def trace(self):
        return self.flow_options["trace"]

    @trace.setter
    def trace(self, value):
        """``"exact"`` or ``"hutchinson"``; resets compiled train/test/predict functions."""
        for block in self._flow_blocks or []:
            block.trace = value
        if self._flow_blocks is None:
            bijectors_lib.FFJORD(self.dynamics[0], **{**self.flow_options, "trace": value})
        self.flow_options["trace"] = value
        self.train_function = self.test_function = self.predict_function = None

    @contextlib.contextmanager
    def _trace_mode(self, value):
        saved = self.trace
        for block in self.bijectors:
            block.trace = value
        try:
            yield
        finally:
            for block in self.bijectors:
                block.trace = saved

    # ----------------------------------------------------------------- densities
    def _check_data(self, x):
        x = tf.convert_to_tensor(x)
        if not x.dtype.is_floating:
            raise TypeError(f"ContinuousFlow data must be floating point; cast it first. "
                            f"Received: x with dtype={x.dtype.name}")
        if not self.built:
            self.build(tuple(x.shape))  # a tuple: Keras keeps it for export
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"`x` has event shape {tuple(x.shape[1:])} but the ContinuousFlow has "
                f"event_shape={self.event_shape}. Received: x.shape={tuple(x.shape)}")
        return tf.cast(x, self.state_dtype)

    def _base_log_prob(self, z):
        axes = list(range(1, z.shape.rank))
        norm = 0.5 * self.event_size * math.log(2.0 * math.pi)
        return -0.5 * tf.reduce_sum(tf.square(z), axis=axes) - tf.cast(norm, z.dtype)

    @tf.autograph.experimental.do_not_convert
    def _terms(self, x, seed=None, on_backward=None):
        """``log p(x)``, per-example regularisers and forward NFE, in one pass of solves."""
        x = self._check_data(x)
        seeds = [None] * len(self.bijectors)
        if seed is not None:
            seeds = tf.unstack(tf.random.experimental.stateless_split(
                trace_lib.stateless_seed(seed), len(seeds)))
        z, log_det, nfe = x, 0.0, 0
        regs = {name: 0.0 for name in self.flow_options["regularizers"]}
        for block, block_seed in zip(reversed(self.bijectors), reversed(seeds)):
            solution = block.solve(z, "inverse", seed=block_seed, on_backward=on_backward)
            z, log_det = solution.output, log_det + solution.log_det_jacobian
            nfe += solution.stats.forward_nfe
            self.compiled_path = solution.stats.compiled
            for name in regs:
                regs[name] += getattr(solution, name)
        return self._base_log_prob(z) + log_det, regs, nfe

    @tf.autograph.experimental.do_not_convert
    def log_prob(self, x, seed=None):
        """``log p(x)`` per example, shape ``(batch,)``."""
        log_prob, _, nfe = self._terms(x, seed)
        self._record_solver_stats({"nfe_forward": nfe})
        return log_prob

    def call(self, inputs):
        return self.log_prob(inputs)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    @tf.autograph.experimental.do_not_convert
    def sample(self, n, seed=None):
        """``n`` samples ``(n, *event)``: base draws pushed through the blocks (no trace)."""
        if not self.built:
            raise ValueError(
                "The ContinuousFlow is not built yet: call it on data or fit it first.")
        if isinstance(n, tf.Variable):  # its value now (or, traced, when the graph runs)
            n = tf.convert_to_tensor(n)
        if tf.is_symbolic_tensor(n):  # an exported endpoint's n: checked when it runs
            if not n.dtype.is_integer or n.shape.rank != 0:
                raise validation.ArgumentTypeError(
                    f"`n` must be an int >= 0 (or a scalar integer tensor). Received: n={n!r}")
            with tf.control_dependencies([tf.debugging.assert_non_negative(
                    n, message="`n` must be an int >= 0 (the number of samples)")]):
                n = tf.identity(n)
        else:
            n = validation.check_int("n", n, minimum=0)
        shape = tf.concat([tf.reshape(tf.cast(n, tf.int32), [1]), self.event_shape], 0)
        if seed is None:
            z = keras.random.normal(shape, dtype=self.state_dtype, seed=self._seed_generator)
        else:
            z = tf.random.stateless_normal(shape, trace_lib.stateless_seed(seed),
                                           dtype=self.state_dtype)
        for block in self.bijectors:
            solution = block.solve(z, "forward", log_det=False)
            z = solution.output
            self.compiled_path = solution.stats.compiled
        return z

    # ----------------------------------------------------------------- training
    @tf.autograph.experimental.do_not_convert
    def _loss(self, x):
        backward = []
        log_prob, regs, nfe = self._terms(
            x, seed=self._seed_generator.next(),
            on_backward=lambda stats: backward.append(stats.backward_nfe))
        nll = -tf.reduce_mean(log_prob)
        loss = nll
        for name, value in regs.items():
            regs[name] = tf.reduce_mean(value)
            loss += tf.cast(self._regularizer_weights[name], loss.dtype) * regs[name]
        return loss, nll, regs, nfe, backward

    def _update_metrics(self, loss, nll, regs, nfe, nfe_backward):
        values = {"loss": loss, "nll": nll,
                  "bits_per_dim": nll / (self.event_size * math.log(2.0)),
                  "nfe_forward": nfe, "nfe_backward": nfe_backward, **regs}
        for name, value in values.items():
            self._trackers[name].update_state(tf.cast(value, "float32"))
        self._record_solver_stats({"nfe_forward": nfe, "nfe_backward": nfe_backward})
        return {name: tracker.result() for name, tracker in self._trackers.items()}

    @tf.autograph.experimental.do_not_convert
    def train_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            loss, nll, regs, nfe, backward = self._loss(x)
            # Replicas' gradients are summed: each contributes its share of the mean.
            share = loss / tf.distribute.get_strategy().num_replicas_in_sync
            # As Keras's train_step: a LossScaleOptimizer multiplies the loss by its scale
            # (and divides the gradients by it in apply); other optimizers return it as is.
            share = self.optimizer.scale_loss(share)
        variables = self.trainable_variables
        gradients = tape.gradient(share, variables)
        self.optimizer.apply(gradients, variables)
        nfe_backward = tf.add_n(backward) if backward else tf.constant(0, tf.int32)
        return self._update_metrics(loss, nll, regs, nfe, nfe_backward)

    @tf.autograph.experimental.do_not_convert
    def test_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        loss, nll, regs, nfe, _ = self._loss(x)
        return self._update_metrics(loss, nll, regs, nfe, tf.constant(0, tf.int32))

    @property
    def metrics(self):
        return list(self._trackers.values())

    # ----------------------------------------------------------------- saving
    def save(self, filepath, overwrite=True, zipped=None, **kwargs):
        """``keras.Model.save`` through a temporary file: a failed save keeps the old file."""
        from keras_implicit import files

        return files.save_model(self, filepath, overwrite=overwrite, zipped=zipped, **kwargs)

    def export_saved_model(self, filepath):
        """Writes an inference SavedModel (``tf.saved_model.load`` reads it back).

        Endpoints: ``log_prob_exact(x)`` and ``log_prob_hutchinson(x)`` (choose
        the estimator after loading), ``log_prob(x)`` (the one selected by
        ``trace`` at export; also the serving default) and ``sample(n, seed)``
        with ``n`` an int32 scalar and ``seed`` an int32 ``[2]``. Gradients are
        not exported: train from the ``.keras`` file.
        """
        if not self.built:
            raise ValueError("Build or fit the ContinuousFlow before exporting it.")
        spec = tf.TensorSpec((None,) + self.event_shape, self.state_dtype, name="x")

        def log_prob_with(mode):
            @tf.autograph.experimental.do_not_convert
            def log_prob(x):
                with self._trace_mode(mode):
                    return self._terms(x)[0]

            return tf.function(log_prob, input_signature=[spec], autograph=False)

        log_probs = {mode: log_prob_with(mode) for mode in ("exact", "hutchinson")}
        archive = keras.export.ExportArchive()
        archive.track(self)
        archive.add_endpoint("log_prob", log_probs[self.trace])
        for mode, fn in log_probs.items():
            archive.add_endpoint(f"log_prob_{mode}", fn)
        archive.add_endpoint(
            "sample", tf.function(
                lambda n, seed: self.sample(n, seed), autograph=False,
                input_signature=[tf.TensorSpec((), tf.int32, name="n"),
                                 tf.TensorSpec((2,), tf.int32, name="seed")]))
        # Custom gradients (the adjoint) would be traced and stored for every solve.
        options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
        # Into a temporary directory, then swapped in: a failed export keeps the old one.
        from keras_implicit import files

        with files.atomic_directory(filepath) as temporary:
            archive.write_out(temporary, options=options, verbose=False)

    def get_config(self):
        options = {k: v for k, v in self.flow_options.items() if k != "regularizers"}
        options.update(self._ode_options.get_config())
        return {
            **super().get_config(),
            "dynamics": [keras.saving.serialize_keras_object(d) for d in self.dynamics],
            **options,
            "kinetic_energy_weight": self._regularizer_weights["kinetic_energy"],
            "jacobian_frobenius_weight": self._regularizer_weights["jacobian_frobenius"],
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["dynamics"] = [keras.saving.deserialize_keras_object(d) for d in config["dynamics"]]
        return cls(**config)
