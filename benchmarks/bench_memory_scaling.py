"""Memory of a training step as the network deepens: the paper's O(L) / O(L~) / O(1) column.

ResNet with 6, 24 and 96 residual blocks (memory O(L)), RK-Net with 6, 24 and
96 RK4 steps backpropagated through (O(L~), L~ = 4 x steps evaluations) and
the adjoint ODE-Net (O(1): its memory does not grow with its NFE), batch 16;
each as the whole MNIST model and as the differing part alone (``part``).

``track_step_memory`` is the step's own peak above the memory held before it
(``keras_implicit.experiments.measure``): TensorFlow's CPU allocator peak when
this module is imported before TensorFlow starts (as under asv, which runs
each benchmark in a fresh process), the peak resident set otherwise, the GPU
allocator's with a GPU. ``peakmem_`` is asv's peak RSS of the whole process.
The stacks and the train step come from ``keras_implicit.experiments.block_memory``,
which also measures the block-memory column of ``keras-implicit table1``.
"""

from keras_implicit.experiments import measure

from . import common

# Before the TensorFlow runtime starts: allocator statistics on CPU.
measure.enable_cpu_allocator_stats()

CONFIGS = ["resnet-6", "resnet-24", "resnet-96", "rknet-6", "rknet-24", "rknet-96",
           "odenet-adjoint"]
BATCH = common.quick(16, 2)


class TrainingStepMemory:
    """Peak memory of one warm training step per depth / number of steps.

    ``part="model"`` is the whole MNIST model, whose downsampling stem (26x26
    and 13x13 feature maps) sets the peak until the stack is deep;
    ``part="stack"`` is the part that differs, alone: the residual blocks or
    the ODE block on a 6x6x64 input, then pooling and Dense(10).
    """

    params = [CONFIGS, ["stack", "model"]]
    param_names = ["model", "part"]
    timeout = 300

    def setup(self, model, part):
        if part == "model":
            self.model = common.build_model(model)
            self.x, self.y = common.mnist_batch(BATCH)
        else:
            self.model = common.build_feature_stack(model)
            self.x, self.y = common.feature_batch(BATCH)
        self.step = common.make_train_step(self.model)
        self.step(self.x, self.y)
        self.meter = measure.StepMemoryMeter()

    def peakmem_training_step(self, model, part):
        self.step(self.x, self.y)

    def track_step_memory(self, model, part):
        return self.meter.measure(lambda: self.step(self.x, self.y))

    def track_nfe_forward(self, model, part):
        self.step(self.x, self.y)
        return common.solver_stats(self.model).get("nfe_forward", 0)

    track_step_memory.unit = "bytes"
    track_nfe_forward.unit = "evaluations"
