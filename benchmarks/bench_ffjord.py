"""FFJORD: log_prob + gradient against tfp.bijectors.FFJORD, and the cost of the trace.

``LogProbGradient``: one compiled step computing the mean negative
log-likelihood of a 2-D batch of 512 under a standard normal pushed through
one FFJORD block, and its gradient with respect to the dynamics' weights
(MLP 3 x 64 tanh with time concatenated to every layer, dopri5 at
rtol = atol = 1e-5, adjoint gradients), for ``ki.bijectors.FFJORD`` and
``tfp.bijectors.FFJORD`` sharing the same Keras network. Their ratio in one
process is printed by ``benchmarks/compare_tfp_ffjord.py``.

``TraceCost``: time of one evaluation of the augmented right-hand side
(dynamics + divergence) against one evaluation of the dynamics alone, for
state dimensions D = 2, 16, 64, 784 (batch 32, same MLP): Hutchinson's
estimator should cost a small constant times f (one extra vector-Jacobian
product), the exact trace about D times f. Evaluations are chained inside a
``tf.while_loop`` (10 per timed call, 1 for the exact trace at D = 784) so
that per-call dispatch is not counted; ``time_*`` report the whole chain.
"""


from . import common

BATCH = common.quick(512, 16)
HIDDEN = common.quick((64, 64, 64), (8,))
TOLERANCE = common.quick(1e-5, 1e-3)
TRACE_BATCH = common.quick(32, 2)
CHAINED = common.quick(10, 1)
REPEATS = common.quick(5, 1)


def chained_count(dimension, trace):
    """Evaluations per timed call: one for the exact trace of large states (~1 s each)."""
    return 1 if trace == "exact" and dimension > 64 else CHAINED


def median_seconds(fn, repeats=REPEATS):
    from keras_implicit.experiments import measure

    return measure.median_seconds(fn, repeats)


def make_log_prob_step(implementation, trace, batch=BATCH, hidden=HIDDEN, tolerance=TOLERANCE):
    """A compiled ``step(x) -> (mean NLL, gradients, forward NFE or -1)`` and its batch ``x``."""
    import keras
    import tensorflow as tf
    import tensorflow_probability as tfp

    import keras_implicit as ki
    from keras_implicit.layers import ConcatMLP

    tfd, tfb = tfp.distributions, tfp.bijectors
    keras.utils.set_random_seed(0)
    x = tf.constant(ki.datasets.toy2d("8gaussians", batch, seed=0))
    dynamics = ConcatMLP(hidden, activation="tanh")
    dynamics.build((None, 2))
    base = tfd.MultivariateNormalDiag(tf.zeros(2))
    if implementation == "keras_implicit":
        flow = ki.bijectors.FFJORD(dynamics, trace=trace, rtol=tolerance, atol=tolerance,
                                   event_shape=(2,))
    else:
        augmentation = (tfb.ffjord.trace_jacobian_exact if trace == "exact"
                        else tfb.ffjord.trace_jacobian_hutchinson)
        solver = tfp.math.ode.DormandPrince(rtol=tolerance, atol=tolerance)
        flow = tfb.FFJORD(state_time_derivative_fn=lambda t, z: dynamics(z, t=t),
                          ode_solve_fn=solver.solve, trace_augmentation_fn=augmentation)
    distribution = tfd.TransformedDistribution(base, flow)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(distribution.log_prob(x))
        return loss, tape.gradient(loss, dynamics.trainable_variables)

    return step, x


class LogProbGradient:
    """Seconds per log_prob + gradient step, ours vs TFP's FFJORD (same network)."""

    params = [["keras_implicit", "tfp"], ["hutchinson", "exact"]]
    param_names = ["implementation", "trace"]
    timeout = 300

    def setup(self, implementation, trace):
        self.step, self.x = make_log_prob_step(implementation, trace)
        self.step(self.x)  # trace and compile

    def time_log_prob_and_gradient(self, implementation, trace):
        self.step(self.x)[0].numpy()


class TraceCost:
    """Augmented right-hand side (f + divergence) vs f alone, per evaluation."""

    params = [[2, 16, 64, 784], ["hutchinson", "exact"]]
    param_names = ["dimension", "trace"]
    timeout = 300

    def setup(self, dimension, trace):
        import keras
        import tensorflow as tf

        from keras_implicit.bijectors.augmented_dynamics import augmented_fn
        from keras_implicit.layers import ConcatMLP
        from keras_implicit.ops import sample_noise

        keras.utils.set_random_seed(0)
        dynamics = ConcatMLP(HIDDEN, activation="tanh")
        dynamics.build((None, dimension))
        fn = augmented_fn(lambda t, z: dynamics(z, t=t), trace, augmented=True, kinetic=False,
                          frobenius=False)
        z = keras.random.normal((TRACE_BATCH, dimension), seed=1)
        params = {"noise": sample_noise((1, TRACE_BATCH, dimension), seed=2)}
        t = tf.constant(0.5)
        chained = chained_count(dimension, trace)

        @tf.function
        def augmented(z):
            def body(i, z, log_det):
                out = fn(t, {"z": z, "log_det": log_det}, params)
                return i + 1, tf.tanh(out["z"]), log_det + out["log_det"]

            return tf.while_loop(lambda i, *_: i < chained, body,
                                 (0, z, tf.zeros([TRACE_BATCH])))[2]

        @tf.function
        def dynamics_only(z):
            return tf.while_loop(lambda i, z: i < chained,
                                 lambda i, z: (i + 1, tf.tanh(dynamics(z, t=t))), (0, z))[1]

        self.augmented, self.dynamics_only, self.z = augmented, dynamics_only, z
        self.chained = chained
        augmented(z)
        dynamics_only(z)

    def time_augmented_evaluations(self, dimension, trace):
        self.augmented(self.z).numpy()

    def time_dynamics_evaluations(self, dimension, trace):
        self.dynamics_only(self.z).numpy()

    def track_seconds_per_augmented_evaluation(self, dimension, trace):
        return median_seconds(lambda: self.augmented(self.z).numpy()) / self.chained

    def track_cost_ratio(self, dimension, trace):
        augmented = median_seconds(lambda: self.augmented(self.z).numpy())
        plain = median_seconds(lambda: self.dynamics_only(self.z).numpy())
        return augmented / plain

    track_seconds_per_augmented_evaluation.unit = "seconds"
    track_cost_ratio.unit = "ratio"
