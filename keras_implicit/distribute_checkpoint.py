"""The epoch checkpoint of :func:`keras_implicit.distribute.fit`: variables and finished epochs."""

import os
import shutil

import tensorflow as tf


class EpochCheckpoint:
    """The model's and the optimizer's variables and the number of finished epochs.

    The variables are saved as two lists in the order of ``model.variables``
    and ``optimizer.variables`` (weights, solver statistics, seed generator
    states; slots): ``tf.train.Checkpoint(model=model)`` would miss the
    variables Keras 3 keeps in plain lists (a ``ContinuousFlow``'s dynamics,
    a GRU's kernels). Restoring checks that the checkpoint fits exactly.
    Every worker takes part in saving; the chief writes to the directory, the
    others to a scratch subdirectory deleted at once (TensorFlow's pattern for
    ``MultiWorkerMirroredStrategy``). Every worker restores from the chief's.
    """

    def __init__(self, directory, model, strategy):
        self.directory = directory
        self.strategy = strategy
        self.chief = strategy.extended.should_checkpoint
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="finished_epochs")
        self.checkpoint = tf.train.Checkpoint(
            model_variables=[v.value for v in model.variables],
            optimizer_variables=[v.value for v in model.optimizer.variables], epoch=self.epoch)
        self.write_directory = directory
        if not self.chief:
            resolver = strategy.cluster_resolver
            self.write_directory = os.path.join(
                directory, f".scratch_{resolver.task_type}_{resolver.task_id}")
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.write_directory,
                                                  max_to_keep=1)

    def restore(self):
        """Restores the latest checkpoint, if any; returns the number of finished epochs."""
        latest = tf.train.latest_checkpoint(self.directory)
        if latest is not None:
            try:
                self.checkpoint.restore(latest).assert_consumed()
            except (AssertionError, ValueError, tf.errors.OpError) as error:
                raise ValueError(
                    f"The checkpoint {latest} does not fit this model and optimizer (another "
                    f"architecture or optimizer?): {str(error)[:300]}. Use a new directory to "
                    f"start over. Received: checkpoint_dir={self.directory!r}") from error
        epoch = int(self.epoch.numpy())
        everyone = gather_from_workers(self.strategy, epoch)
        if len(set(everyone)) > 1:
            raise ValueError(
                f"The workers found different checkpoints (finished epochs per replica: "
                f"{everyone}): `checkpoint_dir` must be one directory that every worker reads, "
                f"e.g. on a shared file system. Received: checkpoint_dir={self.directory!r}")
        return epoch

    def save(self, finished_epochs):
        self.epoch.assign(finished_epochs)
        self.manager.save(checkpoint_number=finished_epochs)
        if not self.chief:
            shutil.rmtree(self.write_directory, ignore_errors=True)


def gather_from_workers(strategy, value):
    """``value`` (a Python int, one per worker) of every replica, as a list."""
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda _: tf.constant([value], tf.int64))
    return [int(v) for v in strategy.gather(per_replica, axis=0).numpy()]
