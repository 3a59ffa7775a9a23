"""One training step of the Table 1 models: ResNet vs RK-Net vs ODE-Net (adjoint, backprop).

The models of ``ki.applications.odenet_mnist`` on random MNIST-shaped batches:
a ``tf.function`` doing forward, backward and an SGD update, traced and warmed
up in ``setup``. ``peakmem_`` is asv's host peak RSS of the whole benchmark
process; ``bench_memory_scaling`` isolates the step's own memory.
"""

from . import common

MODELS = ["resnet", "rknet", "odenet_adjoint", "odenet_backprop"]
ODE_MODELS = ["rknet", "odenet_adjoint", "odenet_backprop"]
BATCH = common.quick(128, 4)


class TrainingStep:
    """Time and host peak memory of a warm training step (batch 128, the paper's)."""

    params = [MODELS]
    param_names = ["model"]
    timeout = 300

    def setup(self, model):
        self.model = common.build_model(model)
        self.x, self.y = common.mnist_batch(BATCH)
        self.step = common.make_train_step(self.model)
        self.step(self.x, self.y)

    def time_training_step(self, model):
        self.step(self.x, self.y)

    def peakmem_training_step(self, model):
        self.step(self.x, self.y)


class SolverEvaluations:
    """Forward and backward NFE of a training step of the ODE models (at initialisation).

    The backward NFE is that of the adjoint ODE solve; with backprop it is 0
    (no ODE is solved backwards: each forward evaluation is differentiated once).
    """

    params = [ODE_MODELS]
    param_names = ["model"]
    timeout = 300

    def setup(self, model):
        self.model = common.build_model(model)
        self.x, self.y = common.mnist_batch(BATCH)
        self.step = common.make_train_step(self.model)
        self.step(self.x, self.y)

    def track_nfe_forward(self, model):
        self.step(self.x, self.y)
        return common.solver_stats(self.model)["nfe_forward"]

    def track_nfe_backward(self, model):
        self.step(self.x, self.y)
        return common.solver_stats(self.model)["nfe_backward"]

    track_nfe_forward.unit = "evaluations"
    track_nfe_backward.unit = "evaluations"


class Parameters:
    """Trainable parameters (paper: ResNet 0.60M, RK-Net and ODE-Net 0.22M, MLP 0.24M)."""

    params = [["mlp", "resnet", "rknet", "odenet"]]
    param_names = ["model"]

    def track_parameters(self, model):
        return common.trainable_parameters(common.build_model(model))

    track_parameters.unit = "parameters"


class GPUTrainingStep:
    """Peak GPU memory of a training step above what was held before it; skipped on CPU."""

    params = [MODELS]
    param_names = ["model"]
    timeout = 300

    def setup(self, model):
        from keras_implicit.experiments import measure

        if not measure.gpu_available():
            raise NotImplementedError("no GPU: GPU peak memory is not measured")
        self.meter = measure.StepMemoryMeter("gpu")
        self.model = common.build_model(model)
        self.x, self.y = common.mnist_batch(BATCH)
        self.step = common.make_train_step(self.model)
        self.step(self.x, self.y)

    def track_gpu_peak_memory(self, model):
        return self.meter.measure(lambda: self.step(self.x, self.y))

    track_gpu_peak_memory.unit = "bytes"
