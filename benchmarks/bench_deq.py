"""Deep Equilibrium layer: solver iterations, forward vs backward time, memory vs max_iter.

The cell is ``ki.layers.deq_cells.DEQDenseCell`` (``tanh(z W + x U + b)``)
with ``W`` symmetric, eigenvalues spread evenly over [-0.5, 0.95] (a
contraction that Picard iteration solves slowly; a random orthogonal ``W``
would have its spectrum on a circle, where no Krylov-type acceleration can
beat Picard), state and input of ``DIM`` features, batch ``BATCH``, float32,
loss = mean of squares of ``z*``. Each ``setup`` traces its ``tf.function`` and runs
it once; only warm calls are timed.

- ``SolverIterations.track_*``: forward and backward (IFT) iterations to
  ``tol = 1e-5`` (relative) per solver.
- ``ForwardBackwardTime``: ``time_forward`` (the solve alone) and
  ``time_forward_backward`` (solve + implicit backward solve + VJPs); the
  backward time is their difference; per solver and ``jit_cell`` (``"auto"``
  compiles both solves of this dense cell whole; ``False`` nothing), so that a
  regression of either path shows.
- ``ConvCellTrainingStep``: a training step of the MNIST DEQ's conv cell
  (``DEQConvCell``, state 14x14x32, hidden 64, Anderson 1e-3, ``max_iter``
  30, batch 64) per ``jit_cell`` (``"auto"`` leaves it in TensorFlow's graph,
  ``True`` compiles the cell); ``compare_torchdeq.py`` times the same step
  against torchdeq.
- ``TrainingStepMemory``: host peak memory of a training step (forward,
  gradient, SGD update) that runs exactly ``max_iter`` iterations (tol 1e-30
  is never met), for ``gradient="implicit"`` (flat in ``max_iter``) and
  ``"unrolled"`` (the while loop keeps every iteration's state for the
  backward pass: grows linearly). ``peakmem_`` is asv's peak RSS of the
  process; ``track_step_memory`` the step's own peak above what was held
  before (``keras_implicit.experiments.measure``).

``SolverIterations`` and ``ForwardBackwardTime`` take the dtype policy as a
parameter (``float32``, ``mixed_bfloat16``, ``mixed_float16``: the cell runs in
the compute dtype, the solver in float32, ``tol`` floored to the compute
dtype's epsilon; float16's loss is scaled by 2**15 as ``fit`` does);
``ForwardBackwardTime`` skips ``mixed_float16`` without a GPU
(``common.check_dtype``), ``SolverIterations`` counts it everywhere.

``benchmarks/compare_torchdeq.py`` times the same cell through torchdeq.
With ``KERAS_IMPLICIT_BENCH_QUICK=1`` the sizes shrink (the suite test runs
every benchmark once that way).
"""

import os
import warnings

try:
    from .common import DTYPES, check_dtype, scaled_loss
except ImportError:  # imported alone by compare_torch*.py, with benchmarks/ on sys.path
    from common import DTYPES, check_dtype, scaled_loss
from keras_implicit.experiments import measure

# Before the TensorFlow runtime starts: allocator statistics on CPU.
measure.enable_cpu_allocator_stats()

QUICK = os.environ.get("KERAS_IMPLICIT_BENCH_QUICK") == "1"
DIM = 16 if QUICK else 256
BATCH = 8 if QUICK else 64
SOLVERS = ["anderson", "broyden", "picard"]
TOL = 1e-5


def recurrent_kernel(dim, seed=0):
    """Symmetric ``W`` with eigenvalues evenly spread over [-0.5, 0.95]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return (q @ np.diag(np.linspace(-0.5, 0.95, dim)) @ q.T).astype("float32")


def make_deq(solver="anderson", tol=TOL, max_iter=200, gradient="implicit", dim=DIM,
             dtype="float32", **kwargs):
    import keras

    import keras_implicit as ki
    from keras_implicit.layers.deq_cells import DEQDenseCell

    keras.utils.set_random_seed(0)
    cell = DEQDenseCell(dtype=dtype)
    with warnings.catch_warnings():  # TOL below a half-precision epsilon: floored, on purpose
        warnings.filterwarnings("ignore", "DEQ .* below the machine epsilon", UserWarning)
        layer = ki.layers.DEQ(cell, solver=solver, tol=tol, max_iter=max_iter,
                              gradient=gradient, on_failure="ignore", dtype=dtype, **kwargs)
    layer.build((None, dim))
    cell.recurrent_kernel.assign(recurrent_kernel(dim))
    return layer


def make_input(batch=BATCH, dim=DIM):
    import numpy as np

    return np.random.RandomState(0).randn(batch, dim).astype("float32")


def make_steps(layer, dtype="float32"):
    """``(forward, forward_backward)`` tf.functions of the layer (a float32 loss)."""
    import tensorflow as tf

    @tf.function
    def forward(x):
        return tf.reduce_mean(tf.square(tf.cast(layer(x), tf.float32)))

    @tf.function
    def forward_backward(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(tf.cast(layer(x), tf.float32)))
            scaled = scaled_loss(loss, dtype)
        return loss, tape.gradient(scaled, layer.trainable_variables)

    return forward, forward_backward


def make_train_step(layer, loss_fn=None, learning_rate=0.01):
    """A compiled SGD step; the loss is ``loss_fn(z*)``, by default the mean of squares."""
    import keras
    import tensorflow as tf

    loss_fn = loss_fn or (lambda z: tf.reduce_mean(tf.square(z)))
    optimizer = keras.optimizers.SGD(learning_rate)
    optimizer.build(layer.trainable_variables)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = loss_fn(layer(x, training=True))
        grads = tape.gradient(loss, layer.trainable_variables)
        optimizer.apply_gradients(zip(grads, layer.trainable_variables))
        return loss

    return step


def _stat(layer, name):
    import numpy as np

    return np.asarray(layer.solver_stats()[name]).item()


class SolverIterations:
    """Iterations of each solver (forward and IFT backward) on the tanh cell."""

    params = [SOLVERS, DTYPES]
    param_names = ["solver", "dtype"]
    timeout = 120

    def setup(self, solver, dtype):
        # Iteration counts do not depend on the hardware: float16 runs on CPUs too.
        self.layer = make_deq(solver, dtype=dtype)
        _, forward_backward = make_steps(self.layer, dtype)
        forward_backward(make_input())

    def track_forward_iterations(self, solver, dtype):
        return _stat(self.layer, "iterations_forward")

    def track_backward_iterations(self, solver, dtype):
        return _stat(self.layer, "iterations_backward")

    def track_forward_residual(self, solver, dtype):
        return _stat(self.layer, "residual")

    track_forward_iterations.unit = "iterations"
    track_backward_iterations.unit = "iterations"
    track_forward_residual.unit = "relative residual"


class ForwardBackwardTime:
    """Warm time of the forward solve and of forward + implicit backward."""

    params = [SOLVERS, ["auto", False], DTYPES]
    param_names = ["solver", "jit_cell", "dtype"]
    timeout = 120

    def setup(self, solver, jit_cell, dtype):
        check_dtype(dtype)
        self.x = make_input()
        self.forward, self.forward_backward = make_steps(
            make_deq(solver, jit_cell=jit_cell, dtype=dtype), dtype)
        self.forward(self.x)
        self.forward_backward(self.x)

    def time_forward(self, solver, jit_cell, dtype):
        self.forward(self.x)

    def time_forward_backward(self, solver, jit_cell, dtype):
        self.forward_backward(self.x)


class ConvCellTrainingStep:
    """Warm training step of the MNIST DEQ's conv cell (``deq_mnist``'s solve)."""

    params = [["auto", False, True]]
    param_names = ["jit_cell"]
    timeout = 180

    def setup(self, jit_cell):
        import keras
        import numpy as np
        import tensorflow as tf

        import keras_implicit as ki
        from keras_implicit.layers.deq_cells import DEQConvCell

        keras.utils.set_random_seed(0)
        size, channels, hidden, groups, batch = (6, 8, 8, 4, 2) if QUICK else (14, 32, 64, 8, 64)
        self.layer = ki.layers.DEQ(DEQConvCell(hidden, groups=groups), tol=1e-3, max_iter=30,
                                   on_failure="ignore", jit_cell=jit_cell)
        self.layer.build((None, size, size, channels))
        rng = np.random.RandomState(0)
        self.x = rng.randn(batch, size, size, channels).astype("float32")
        # A fixed random readout (compare_torchdeq's loss): a mean of squares of z* has
        # almost no gradient through the cell's last GroupNorm.
        readout = rng.randn(*self.x.shape).astype("float32") / batch
        self.step = make_train_step(self.layer, lambda z: tf.reduce_sum(z * readout),
                                    learning_rate=1e-5)
        self.step(self.x)

    def time_train_step(self, jit_cell):
        self.step(self.x)

    def track_iterations(self, jit_cell):
        self.step(self.x)
        return _stat(self.layer, "iterations_forward") + _stat(self.layer, "iterations_backward")

    track_iterations.unit = "iterations"


class TrainingStepMemory:
    """Peak memory of a training step running exactly max_iter iterations."""

    params = [["implicit", "unrolled"], [10] if QUICK else [10, 40, 160]]
    param_names = ["gradient", "max_iter"]
    timeout = 180

    def setup(self, gradient, max_iter):
        # Wider than the timing problem so that per-iteration state is visible above
        # the process's baseline: each iteration's Anderson history is 2 x 5 x batch x dim.
        dim = 32 if QUICK else 1024
        self.x = make_input(batch=BATCH, dim=dim)
        import keras_implicit as ki

        if gradient == "implicit":
            gradient = ki.ops.Implicit(tol=1e-30)
        layer = make_deq("anderson", tol=1e-30, max_iter=max_iter, gradient=gradient, dim=dim)
        self.layer = layer
        self.step = make_train_step(layer)
        self.step(self.x)
        self.meter = measure.StepMemoryMeter()

    def peakmem_training_step(self, gradient, max_iter):
        self.step(self.x)

    def track_step_memory(self, gradient, max_iter):
        return self.meter.measure(lambda: self.step(self.x))

    def track_forward_iterations(self, gradient, max_iter):
        self.step(self.x)
        return _stat(self.layer, "iterations_forward")

    track_step_memory.unit = "bytes"
    track_forward_iterations.unit = "iterations"
