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
  backward time is their difference.
- ``TrainingStepMemory``: host peak memory of a training step (forward,
  gradient, SGD update) that runs exactly ``max_iter`` iterations (tol 1e-30
  is never met), for ``gradient="implicit"`` (flat in ``max_iter``) and
  ``"unrolled"`` (the while loop keeps every iteration's state for the
  backward pass: grows linearly). ``peakmem_`` is asv's peak RSS of the
  process; ``track_step_memory`` the step's own peak above what was held
  before (``keras_implicit.experiments.measure``).

``benchmarks/compare_torchdeq.py`` times the same cell through torchdeq.
With ``KERAS_IMPLICIT_BENCH_QUICK=1`` the sizes shrink (the suite test runs
every benchmark once that way).
"""

import os

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


def make_deq(solver="anderson", tol=TOL, max_iter=200, gradient="implicit", dim=DIM, **kwargs):
    import keras

    import keras_implicit as ki
    from keras_implicit.layers.deq_cells import DEQDenseCell

    keras.utils.set_random_seed(0)
    cell = DEQDenseCell()
    layer = ki.layers.DEQ(cell, solver=solver, tol=tol, max_iter=max_iter, gradient=gradient,
                          on_failure="ignore", **kwargs)
    layer.build((None, dim))
    cell.recurrent_kernel.assign(recurrent_kernel(dim))
    return layer


def make_input(batch=BATCH, dim=DIM):
    import numpy as np

    return np.random.RandomState(0).randn(batch, dim).astype("float32")


def make_steps(layer):
    """``(forward, forward_backward)`` tf.functions of the layer."""
    import tensorflow as tf

    @tf.function
    def forward(x):
        return tf.reduce_mean(tf.square(layer(x)))

    @tf.function
    def forward_backward(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(layer(x)))
        return loss, tape.gradient(loss, layer.trainable_variables)

    return forward, forward_backward


def make_train_step(layer):
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(layer.trainable_variables)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(layer(x, training=True)))
        grads = tape.gradient(loss, layer.trainable_variables)
        optimizer.apply_gradients(zip(grads, layer.trainable_variables))
        return loss

    return step


def _stat(layer, name):
    import numpy as np

    return np.asarray(layer.solver_stats()[name]).item()


class SolverIterations:
    """Iterations of each solver (forward and IFT backward) on the tanh cell."""

    params = [SOLVERS]
    param_names = ["solver"]
    timeout = 120

    def setup(self, solver):
        self.layer = make_deq(solver)
        _, forward_backward = make_steps(self.layer)
        forward_backward(make_input())

    def track_forward_iterations(self, solver):
        return _stat(self.layer, "iterations_forward")

    def track_backward_iterations(self, solver):
        return _stat(self.layer, "iterations_backward")

    def track_forward_residual(self, solver):
        return _stat(self.layer, "residual")

    track_forward_iterations.unit = "iterations"
    track_backward_iterations.unit = "iterations"
    track_forward_residual.unit = "relative residual"


class ForwardBackwardTime:
    """Warm time of the forward solve and of forward + implicit backward."""

    params = [SOLVERS]
    param_names = ["solver"]
    timeout = 120

    def setup(self, solver):
        self.x = make_input()
        self.forward, self.forward_backward = make_steps(make_deq(solver))
        self.forward(self.x)
        self.forward_backward(self.x)

    def time_forward(self, solver):
        self.forward(self.x)

    def time_forward_backward(self, solver):
        self.forward_backward(self.x)


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
