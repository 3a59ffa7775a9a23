"""The ODE block of the MNIST ODE-Net: forward + backward time, NFE and memory.

State 6x6x64, dynamics GroupNorm -> ReLU -> ConcatConv2D -> GroupNorm -> ReLU ->
ConcatConv2D -> GroupNorm, dopri5 at rtol = atol = 1e-3, loss = mean of squares
of the output. Our NeuralODE with the continuous adjoint and with backprop,
and the same block through raw ``tfp.math.ode.DormandPrince`` (its built-in
adjoint). ``benchmarks/compare_torchdiffeq.py`` runs the torchdiffeq side.

``ODEBlockTrainStep`` takes the dtype policy as a parameter (``float32``,
``mixed_bfloat16``, ``mixed_float16``; the block is created under it, the
loss is float32 and scaled by 2**15 under float16, as ``fit`` does):
``mixed_float16`` is skipped without a GPU (``common.check_dtype``).

With KERAS_IMPLICIT_BENCH_QUICK=1 the batch shrinks to 8 and the block to 16
channels (the suite test runs every benchmark once that way).
"""

import os
import warnings

try:
    from .common import DTYPES, check_dtype, scaled_loss
except ImportError:  # imported alone by compare_torch*.py, with benchmarks/ on sys.path
    from common import DTYPES, check_dtype, scaled_loss

QUICK = os.environ.get("KERAS_IMPLICIT_BENCH_QUICK") == "1"
CHANNELS = 16 if QUICK else 64
GROUPS = 8 if QUICK else 32
SIZE = 6


def batch_sizes():
    return [8] if QUICK else [64, 128]


def make_block(gradient="adjoint", t1=1.0, solver="dopri5", jit_dynamics=False,
               dtype="float32"):
    import keras

    import keras_implicit as ki

    keras.utils.set_random_seed(0)
    dynamics = ki.applications.ODEBlockDynamics(CHANNELS, groups=GROUPS, dtype=dtype)
    with warnings.catch_warnings():  # rtol=1e-3 under bfloat16: floored, on purpose
        warnings.filterwarnings("ignore", "NeuralODE .* below the machine epsilon", UserWarning)
        layer = ki.layers.NeuralODE(dynamics, t1=t1, solver=solver, rtol=1e-3, atol=1e-3,
                                    gradient=gradient, jit_dynamics=jit_dynamics, dtype=dtype)
    layer.build((None, SIZE, SIZE, CHANNELS))
    return layer


def make_input(batch):
    import numpy as np

    return np.random.RandomState(0).randn(batch, SIZE, SIZE, CHANNELS).astype("float32")


def make_train_step(layer, dtype="float32"):
    import tensorflow as tf

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(tf.cast(layer(x), tf.float32)))
            scaled = scaled_loss(loss, dtype)
        return loss, tape.gradient(scaled, layer.trainable_variables)

    return step


def make_raw_tfp_step(layer):
    """The same dynamics through tfp.math.ode.DormandPrince and its own adjoint."""
    import tensorflow as tf
    import tensorflow_probability as tfp

    dynamics = layer.dynamics
    solver = tfp.math.ode.DormandPrince(rtol=1e-3, atol=1e-3)
    counter = {}

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            results = solver.solve(lambda t, y: dynamics(y, t=t), 0.0, x, solution_times=[1.0])
            loss = tf.reduce_mean(tf.square(results.states[-1]))
        counter["nfe"] = results.diagnostics.num_ode_fn_evaluations
        return loss, tape.gradient(loss, dynamics.trainable_variables), counter["nfe"]

    return step


class ODEBlockTrainStep:
    """Forward + backward of the ODE block (what one training step costs), with the
    dynamics as the default "auto" plan runs them, in TensorFlow's graph (False) or
    compiled by XLA (True)."""

    params = ([8] if QUICK else [64, 128], ["adjoint", "backprop"], ["auto", False, True], DTYPES)
    param_names = ["batch", "gradient", "jit_dynamics", "dtype"]
    timeout = 300

    def setup(self, batch, gradient, jit_dynamics, dtype):
        check_dtype(dtype)
        self.layer = make_block(gradient, jit_dynamics=jit_dynamics, dtype=dtype)
        self.x = make_input(batch)
        self.step = make_train_step(self.layer, dtype)
        self.step(self.x)  # trace, compile and warm up

    def time_train_step(self, batch, gradient, jit_dynamics, dtype):
        self.step(self.x)

    def peakmem_train_step(self, batch, gradient, jit_dynamics, dtype):
        self.step(self.x)

    def track_nfe_forward(self, batch, gradient, jit_dynamics, dtype):
        self.step(self.x)
        return int(self.layer.solver_stats()["nfe_forward"])

    def track_nfe_backward(self, batch, gradient, jit_dynamics, dtype):
        self.step(self.x)
        return int(self.layer.solver_stats()["nfe_backward"])


class RawTFPBlockTrainStep:
    """The baseline: the same block through raw tfp.math.ode with TFP's adjoint."""

    params = [8] if QUICK else [64, 128]
    param_names = ["batch"]
    timeout = 300

    def setup(self, batch):
        self.layer = make_block()
        self.x = make_input(batch)
        self.step = make_raw_tfp_step(self.layer)
        self.step(self.x)

    def time_train_step(self, batch):
        self.step(self.x)

    def track_nfe_forward(self, batch):
        return int(self.step(self.x)[2])


class ODEBlockIntervalMemory:
    """Host peak memory as the integration interval grows 8x (and NFE with it):
    flat for the adjoint, growing for backprop."""

    params = ([1.0, 8.0], ["adjoint", "backprop"])
    param_names = ["t1", "gradient"]
    timeout = 300

    def setup(self, t1, gradient):
        self.layer = make_block(gradient, t1=t1)
        self.x = make_input(8 if QUICK else 64)
        self.step = make_train_step(self.layer)
        self.step(self.x)

    def peakmem_train_step(self, t1, gradient):
        self.step(self.x)

    def track_nfe_forward(self, t1, gradient):
        self.step(self.x)
        return int(self.layer.solver_stats()["nfe_forward"])
