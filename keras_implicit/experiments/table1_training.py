"""Resumable training of one Table 1 model: checkpoints and measurements in ``--out``.

Per model, ``OUT/checkpoints/<model>/`` holds

- the TensorFlow checkpoints (``tf.train.CheckpointManager``, the last two
  kept) of the model's weights, the optimizer's state (its step counter
  drives the learning-rate schedule) and the number of epochs done;
- ``progress.json``: per finished epoch, its test error and what was
  measured (time and peak memory of the training steps, NFE, seconds), and
  the block memory of the model (measured once).

A checkpoint is saved after every epoch, then ``progress.json`` is
rewritten (atomically). The checkpoint's epoch counter is the truth: on
resume, epochs that ``progress.json`` lists beyond it (a crash between the
two writes) are dropped, and training continues at the checkpoint's epoch
with that epoch's data (``table1_recipe.epoch_data``), so the result equals
an uninterrupted run's.
"""

import json
import os
import statistics
import time

from keras_implicit import files

CHECKPOINTS = "checkpoints"
PROGRESS_FILE = "progress.json"


def model_directory(out, kind):
    return os.path.join(out, CHECKPOINTS, kind)


def read_progress(out, kind):
    """The model's ``progress.json`` as a dict, or ``None``."""
    try:
        with open(os.path.join(model_directory(out, kind), PROGRESS_FILE)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def write_progress(out, kind, progress):
    os.makedirs(model_directory(out, kind), exist_ok=True)
    with files.atomic_write(os.path.join(model_directory(out, kind), PROGRESS_FILE)) as handle:
        json.dump(progress, handle, indent=1)
        handle.write("\n")


def build_model(kind, settings):
    """The model of the table's settings, compiled with the recipe's optimizer."""
    import keras

    from keras_implicit import applications
    from keras_implicit.experiments import table1_recipe

    keras.utils.set_random_seed(settings["seed"])
    options = {}
    if kind == "rknet":
        options["num_steps"] = settings["rknet_steps"]
    if kind in ("rknet", "odenet"):
        options["jit_dynamics"] = settings["jit_dynamics"]
    model = applications.odenet_mnist(kind, **options)
    steps_per_epoch = settings["train_size"] // settings["batch_size"]
    model.compile(optimizer=table1_recipe.build_optimizer(settings, steps_per_epoch),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.optimizer.build(model.trainable_variables)
    return model


def _ode_layers(model):
    return [layer for layer in model._flatten_layers(include_self=False)
            if callable(getattr(layer, "solver_stats", None))]


def _gradient(model):
    for layer in _ode_layers(model):
        return layer.gradient.name  # a gradient strategy (ki.ops.Adjoint, Backprop, ...)
    return "backprop"


class ModelTraining:
    """Trains one model epoch by epoch into ``out``, resuming from its last checkpoint.

    Args:
        kind: ``"mlp"``, ``"resnet"``, ``"rknet"`` or ``"odenet"``.
        settings: the table's settings (``run.json``'s, plus nothing else).
        out: the output directory.
        meter: a ``measure.StepMemoryMeter``.
    """

    def __init__(self, kind, settings, out, meter):
        import tensorflow as tf

        self.kind = kind
        self.settings = settings
        self.out = out
        self.meter = meter
        self.model = build_model(kind, settings)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer,
                                              epoch=self.epoch)
        self.manager = tf.train.CheckpointManager(self.checkpoint, model_directory(out, kind),
                                                  max_to_keep=2)
        if self.manager.latest_checkpoint:
            self.checkpoint.restore(self.manager.latest_checkpoint).assert_consumed()
        import numpy as np

        params = sum(int(np.prod(w.shape)) for w in self.model.trainable_weights)
        progress = read_progress(out, kind) or {}
        epochs = [e for e in progress.get("epochs", []) if e["epoch"] <= self.epochs_done]
        self.progress = {"model": kind, "params": params, "gradient": _gradient(self.model),
                         "block_memory": progress.get("block_memory"), "epochs": epochs}

    @property
    def epochs_done(self):
        return int(self.epoch.numpy())

    def set_block_memory(self, block_memory):
        self.progress["block_memory"] = block_memory
        write_progress(self.out, self.kind, self.progress)

    def train_epoch(self, x_train, y_train, x_test, y_test, verbose=1, eval_batch_size=500):
        """Trains the next epoch, evaluates, saves the checkpoint and the progress.

        Returns:
            The epoch's record (also appended to ``self.progress["epochs"]``).
        """
        import numpy as np

        from keras_implicit import callbacks
        from keras_implicit.experiments import table1_recipe
        from keras_implicit.experiments.step_callback import TrainingStepMeter

        settings, epoch = self.settings, self.epochs_done
        batch = settings["batch_size"]
        x_epoch, y_epoch = table1_recipe.epoch_data(x_train, y_train, settings["seed"], epoch,
                                                    batch, settings["augment"])
        step_meter = TrainingStepMeter(self.meter, len(x_epoch) // batch)
        rate = float(np.asarray(self.model.optimizer.learning_rate))  # this epoch's, scheduled
        start = time.perf_counter()
        history = self.model.fit(x_epoch, y_epoch, batch_size=batch, epochs=epoch + 1,
                                 initial_epoch=epoch, shuffle=False, verbose=verbose,
                                 callbacks=[step_meter, callbacks.SolverStats()])
        fit_seconds = time.perf_counter() - start
        # The last training step's statistics; evaluation overwrites them.
        stats = [{name: int(np.asarray(value)) for name, value in layer.solver_stats().items()}
                 for layer in _ode_layers(self.model)]
        start = time.perf_counter()
        _, accuracy = self.model.evaluate(x_test, y_test, batch_size=eval_batch_size,
                                          verbose=verbose)
        eval_seconds = time.perf_counter() - start
        peak = step_meter.max_peak_bytes()
        seconds = step_meter.median_seconds()
        record = {
            "epoch": epoch + 1,
            "test_error_pct": round(100.0 * (1.0 - float(accuracy)), 3),
            "train_loss": float(history.history["loss"][-1]),
            "train_accuracy": float(history.history["accuracy"][-1]),
            "learning_rate": rate,
            "peak_bytes": peak,
            "step_seconds": seconds,
            "measured_steps": len(step_meter.seconds),
            "nfe_forward": stats[0].get("nfe_forward") if stats else None,
            "nfe_backward": stats[0].get("nfe_backward") if stats else None,
            "fit_seconds": round(fit_seconds, 1),
            "eval_seconds": round(eval_seconds, 1),
        }
        self.epoch.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)
        self.progress["epochs"].append(record)
        write_progress(self.out, self.kind, self.progress)
        return record


def table_row(progress, test_images):
    """The table's row of a model from its ``progress.json`` (``None`` before its first epoch)."""
    epochs = progress.get("epochs") or []
    if not epochs:
        return None
    last = epochs[-1]
    peaks = [e["peak_bytes"] for e in epochs if e.get("peak_bytes") is not None]
    seconds = [e["step_seconds"] for e in epochs if e.get("step_seconds") is not None]
    block = progress.get("block_memory") or {}
    row = {
        "model": progress["model"],
        "epochs": last["epoch"],
        "test_error_pct": last["test_error_pct"],
        "test_images": test_images,
        "params": progress["params"],
        "peak_memory_mb": round(max(peaks) / 2**20, 2) if peaks else "",
        "time_per_step_ms": round(1000.0 * statistics.median(seconds), 1) if seconds else "",
        "measured_steps": sum(e["measured_steps"] for e in epochs),
        "nfe_forward": "" if last.get("nfe_forward") is None else last["nfe_forward"],
        "nfe_backward": "",
        "gradient": progress["gradient"],
        "block_memory_mb": block.get("block_memory_mb", ""),
        "block_memory_x4_mb": block.get("block_memory_x4_mb", ""),
        "block_memory_growth": block.get("growth", ""),
        "block_scaled": block.get("scaled", ""),
        "train_seconds": round(sum(e["fit_seconds"] + e["eval_seconds"] for e in epochs), 1),
    }
    # Under backprop no ODE is solved backwards: the reverse pass differentiates each
    # forward evaluation once, which the table shows as "-".
    if progress["gradient"] == "adjoint" and last.get("nfe_backward") is not None:
        row["nfe_backward"] = last["nfe_backward"]
    return row
