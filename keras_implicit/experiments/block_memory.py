"""Peak memory of the residual/ODE part of a Table 1 model alone, and its growth at 4x.

The paper's memory column is O(L) for the ResNet (L blocks), O(L~) for the
RK-Net (L~ evaluations, backpropagated through) and O(1) for the ODE-Net
(adjoint). In a whole MNIST model the 64-channel stem's feature maps set the
peak of every shallow model, which hides that. Here the part that differs
(``feature_stack``: the residual blocks, or the ``NeuralODE``, on a
6x6x64 input, then pooling and ``Dense(10)`` for a loss) is measured alone,
for one SGD training step, at two sizes:

- ResNet: 6 and 24 blocks (depth x4);
- RK-Net: ``num_steps`` and 4 x ``num_steps`` RK4 steps (evaluations x4);
- ODE-Net: t in [0, 1] and [0, 4] (integration interval x4; dopri5 takes
  more steps, the adjoint keeps the memory flat).

The measurement needs TensorFlow's CPU allocator statistics, which must be
switched on before TensorFlow starts, so ``keras-implicit table1`` runs it in
a subprocess (``measure_in_subprocess``: ``python -m
keras_implicit.experiments.block_memory``). ``benchmarks/bench_memory_scaling``
builds the same stacks and train step from here.
"""

import argparse
import json
import os
import subprocess
import sys

SCALE = 4
FILTERS = 64
# The subprocess's --jit-dynamics values and NeuralODE's jit_dynamics.
_JIT_CHOICES = {"auto": "auto", "true": True, "false": False}
_JIT_CHOICES_BACK = {"auto": "auto", True: "true", False: "false"}


def feature_stack(kind, *, num_blocks=6, num_steps=4, t1=1.0, gradient=None,
                  jit_dynamics=None, filters=FILTERS, seed=0):
    """The part of a Table 1 model that differs between them, alone, as a Keras model.

    Args:
        kind: ``"resnet"`` (``num_blocks`` residual blocks), ``"rknet"`` (RK4,
            ``num_steps`` steps, backprop) or ``"odenet"`` (dopri5, adjoint).
        t1: end of the integration interval [0, t1] of the ODE kinds.
        gradient: overrides the ODE kinds' gradient.
        jit_dynamics: the ODE kinds' ``jit_dynamics`` (``"auto"``, ``True`` or
            ``False``); ``None``: ``NeuralODE``'s default, as ``odenet_mnist``.
        filters: channels of the 6x6 state.
        seed: weight initialisation.

    Returns:
        An uncompiled model mapping ``(batch, 6, 6, filters)`` to 10 logits.
    """
    import keras

    from keras_implicit.applications import ODEBlockDynamics, ResidualBlock
    from keras_implicit.applications.odenet_mnist import ODE_DEFAULTS
    from keras_implicit.layers import NeuralODE

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, filters))
    x = inputs
    if kind == "resnet":
        for _ in range(num_blocks):
            x = ResidualBlock(filters)(x)
    elif kind in ("rknet", "odenet"):
        settings = dict(ODE_DEFAULTS[kind])
        if kind == "rknet":
            settings["num_steps"] = num_steps
        if gradient is not None:
            settings["gradient"] = gradient
        if jit_dynamics is not None:
            settings["jit_dynamics"] = jit_dynamics
        x = NeuralODE(ODEBlockDynamics(filters), t1=t1, name="neural_ode", **settings)(x)
    else:
        raise ValueError(f"Unknown `kind`. Valid kinds: ['odenet', 'resnet', 'rknet']. "
                         f"Received: kind={kind!r}")
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def feature_batch(batch, filters=FILTERS, seed=0):
    """Random 6x6x``filters`` states and labels (float32, int32 tensors)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, 6, 6, filters)).astype("float32")
    return tf.constant(x), tf.constant(rng.integers(0, 10, batch).astype("int32"))


def make_train_step(model):
    """A ``tf.function``: forward, backward and an SGD update; returns the loss."""
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def scaled_options(kind, scale, rknet_steps=4):
    """``feature_stack`` options of ``kind`` at ``scale`` x the Table 1 size."""
    if kind == "resnet":
        return {"num_blocks": 6 * scale}
    if kind == "rknet":
        return {"num_steps": rknet_steps * scale}
    return {"t1": float(scale)}


def _nfe(model):
    for layer in model._flatten_layers(include_self=False):
        if callable(getattr(layer, "solver_stats", None)):
            stats = layer.solver_stats()
            return int(stats["nfe_forward"]), int(stats["nfe_backward"])
    return None, None


def measure(kind, batch_size, rknet_steps=4, jit_dynamics=None, scales=(1, SCALE)):
    """Peak bytes of one warm training step of ``feature_stack`` at each scale.

    Returns:
        ``{scale: {"peak_bytes", "nfe_forward", "nfe_backward", "options"}}``
        (NFE ``None`` for the ResNet).
    """
    import keras

    from keras_implicit.experiments import measure as measure_lib

    meter = measure_lib.StepMemoryMeter()
    x, y = feature_batch(batch_size)
    results = {}
    for scale in scales:
        keras.utils.clear_session(free_memory=True)
        options = scaled_options(kind, scale, rknet_steps)
        model = feature_stack(kind, jit_dynamics=jit_dynamics, **options)
        step = make_train_step(model)
        step(x, y)  # traces (and compiles)
        peak = meter.measure(lambda: step(x, y))
        nfe_forward, nfe_backward = _nfe(model)
        results[scale] = {"peak_bytes": peak, "nfe_forward": nfe_forward,
                          "nfe_backward": nfe_backward, "options": options,
                          "method": meter.method}
        model = step = None  # free before the next scale
    return results


def summary(kind, results, scale=SCALE):
    """The table's block-memory entry from :func:`measure`'s results."""
    small, large = results[1], results[scale]
    what = {"resnet": "blocks", "rknet": "RK4 steps", "odenet": "integration interval"}[kind]
    return {
        "block_memory_mb": round(small["peak_bytes"] / 2**20, 2),
        "block_memory_x4_mb": round(large["peak_bytes"] / 2**20, 2),
        "growth": round(large["peak_bytes"] / max(small["peak_bytes"], 1), 2),
        "scaled": f"{what} x{scale}",
        "method": small["method"],
        "measurements": {str(k): v for k, v in results.items()},
    }


def measure_in_subprocess(kind, settings, timeout=1800):
    """:func:`summary` of ``kind`` at the table's batch size, measured in a fresh process.

    The child selects TensorFlow's CPU (BFC) allocator before TensorFlow
    starts. Raises ``RuntimeError`` with the child's last lines if it fails.
    """
    command = [sys.executable, "-m", "keras_implicit.experiments.block_memory", "--kind", kind,
               "--batch-size", str(settings["batch_size"]),
               "--rknet-steps", str(settings["rknet_steps"])]
    if settings.get("jit_dynamics") is not None:
        command += ["--jit-dynamics", _JIT_CHOICES_BACK[settings["jit_dynamics"]]]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CPU_ALLOCATOR_USE_BFC", None)  # the child sets it (a test may have set false)
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"The block-memory measurement of {kind!r} failed "
                           f"(exit {result.returncode}):\n{tail}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    from keras_implicit.experiments import measure as measure_lib

    measure_lib.enable_cpu_allocator_stats()  # before TensorFlow starts
    parser = argparse.ArgumentParser(description="Block memory of a Table 1 model (JSON).")
    parser.add_argument("--kind", choices=("resnet", "rknet", "odenet"), required=True)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rknet-steps", type=int, default=4)
    parser.add_argument("--jit-dynamics", choices=tuple(_JIT_CHOICES), default=None)
    args = parser.parse_args(argv)
    results = measure(args.kind, args.batch_size, args.rknet_steps,
                      None if args.jit_dynamics is None else _JIT_CHOICES[args.jit_dynamics])
    print(json.dumps(summary(args.kind, results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
