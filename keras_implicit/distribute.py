"""Training on several machines: ``tf.distribute.MultiWorkerMirroredStrategy`` without ``fit``.

Keras 3's ``Model.fit`` does not run under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585; Keras 3.15 still fails while building the model from
the first distributed batch). :func:`fit` runs the loop ``fit`` would: the
model's own ``train_step`` inside ``strategy.run`` on ``tf.data``
auto-sharded batches, the Keras optimizer all-reducing every gradient (custom
ones included), checkpoints by ``tf.train.CheckpointManager``.
:func:`multi_worker_strategy` builds the strategy from ``TF_CONFIG`` with a
bound on the time a worker waits for its peers.
"""

import math
import os
import re

import keras
import numpy as np
import tensorflow as tf

from keras_implicit import distribute_checkpoint
from keras_implicit.callbacks import SolverStats

_UNEVEN_BATCH_MARKER = "ki.distribute.fit: uneven shards"


def multi_worker_strategy(timeout_seconds=300.0, cluster_resolver=None,
                          communication_options=None):
    """A ``tf.distribute.MultiWorkerMirroredStrategy`` whose workers wait a bounded time for peers.

    Call it at the start of the program, before any TensorFlow operation
    runs, on every worker (as ``MultiWorkerMirroredStrategy`` itself). The
    cluster and this worker's task come from ``TF_CONFIG`` (or
    ``cluster_resolver``). Every worker must register with the cluster's
    coordination service within ``timeout_seconds``; otherwise each worker
    that is up raises instead of waiting forever, which is what
    ``MultiWorkerMirroredStrategy()`` alone does. A worker that dies later
    is detected by the coordination service's heartbeats: the others then
    fail in :func:`fit` with a ``RuntimeError`` that says to restart them all.

    Args:
        timeout_seconds: how long a worker waits for all the workers of the
            cluster to start, > 0 (default 5 minutes).
        cluster_resolver: a ``tf.distribute.cluster_resolver.ClusterResolver``;
            ``None`` reads ``TF_CONFIG``.
        communication_options: ``tf.distribute.experimental.CommunicationOptions``
            of the strategy's collectives (e.g. a per-collective ``timeout_seconds``).

    Returns:
        The ``tf.distribute.MultiWorkerMirroredStrategy``. Without a cluster
        in ``TF_CONFIG`` it is the strategy's single-worker form.

    Raises:
        TimeoutError: the other workers did not all start in time.

    Example:
        >>> strategy = ki.distribute.multi_worker_strategy(timeout_seconds=60)
        >>> with strategy.scope():
        ...     model = make_model()
        ...     model.compile(keras.optimizers.Adam(1e-3), "mse")
        >>> ki.distribute.fit(model, dataset, epochs=10, checkpoint_dir="/shared/ckpt")
    """
    if isinstance(timeout_seconds, bool) or not isinstance(
            timeout_seconds, (int, float, np.integer, np.floating)) or not (
            timeout_seconds > 0 and math.isfinite(timeout_seconds)):
        raise ValueError(f"`timeout_seconds` must be a finite number > 0. "
                         f"Received: timeout_seconds={timeout_seconds!r}")
    if cluster_resolver is None:
        cluster_resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    cluster = cluster_resolver.cluster_spec().as_dict()
    if cluster:
        _configure_registration_timeout(cluster, int(timeout_seconds * 1000))
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=cluster_resolver, communication_options=communication_options)
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError) as error:
        workers = {job: cluster[job] for job in ("chief", "worker") if job in cluster}
        raise TimeoutError(
            f"Worker {cluster_resolver.task_type}:{cluster_resolver.task_id} could not reach all "
            f"the workers of its cluster within {timeout_seconds} s: start every worker of "
            f"{workers} with the same TF_CONFIG cluster and its own task, and check that each "
            f"address is reachable from every machine. Received: "
            f"timeout_seconds={timeout_seconds!r}") from error


def _configure_registration_timeout(cluster, timeout_ms):
    """Makes the coordination service's registration a barrier with a timeout.

    ``MultiWorkerMirroredStrategy`` configures the coordination service only
    when nobody has (same leader and jobs as here), with no registration
    timeout: the first task then waits forever for an absent peer. TensorFlow
    has no public switch for this, so the one private call lives here.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    leader_job = "chief" if "chief" in cluster else "worker"
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=f"/job:{leader_job}/replica:0/task:0",
        cluster_register_timeout_in_ms=timeout_ms,
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(tasks))
                          for job, tasks in cluster.items() if job in ("chief", "worker")])
    context.context().coordination_service.cluster_register_with_barrier = True


def fit(model, dataset, epochs=1, *, strategy=None, checkpoint_dir=None, callbacks=None,
        solver_stats=True, verbose="auto"):
    """Trains a compiled model on a dataset under a ``tf.distribute`` strategy, as ``fit`` would.

    Every worker runs the same call. Each step runs the model's own
    ``train_step`` on every replica's shard of a global batch (inside
    ``strategy.run``), so the loss, its division by the number of replicas
    (every replica's mean over its shard, over the number of replicas: the
    global batch mean), the optimizer (which sums the gradients of all
    replicas, custom gradients included) and the metrics are those of
    ``Model.fit``. The logs hold the model's metrics over all replicas of all
    workers, and with ``solver_stats`` the statistics of the implicit layers
    (``ki.callbacks.SolverStats``: on each worker, its first replica's).

    Args:
        model: a compiled ``keras.Model``, created and compiled under
            ``strategy.scope()``.
        dataset: a ``tf.data.Dataset`` of global batches: ``x``, ``(x, y)``
            or ``(x, y, sample_weight)`` as for ``fit``. Every worker builds
            the same dataset; ``tf.data`` auto-sharding gives each replica its
            part (with ``AutoShardPolicy.DATA``, replica ``k`` of ``n`` gets
            the ``k``-th ``1/n`` of every global batch, so training is that of
            one process on the same batches). Every replica must receive as
            many samples as the others at every step (for the last batch too:
            use ``drop_remainder=True`` if its size does not divide among the
            replicas); otherwise ``fit`` raises before updating. One epoch is
            one pass; it must be finite.
        epochs: total number of epochs, >= 1 (counting those a checkpoint
            already holds).
        strategy: the ``tf.distribute.Strategy`` the model was created
            under; ``None`` takes it from the model.
        checkpoint_dir: a directory every worker can read (on several
            machines, a shared file system), or ``None``. After each epoch
            the model, the optimizer and the epoch number are saved there
            (``tf.train.CheckpointManager``, the chief writes); a new call
            with the same directory resumes after the last finished epoch
            (the dataset starts over: shuffling with a fixed seed repeats
            the order of the first epoch).
        callbacks: ``keras.callbacks.Callback`` instances (epoch and train
            batch hooks are called; there is no validation).
        solver_stats: add a ``ki.callbacks.SolverStats`` (unless one is in
            ``callbacks``) so the logs show NFE, iterations and residuals.
        verbose: ``"auto"`` (a progress bar on the chief, nothing elsewhere),
            0, 1 or 2, as for ``fit``.

    Returns:
        The ``keras.callbacks.History`` of the epochs trained by this call.

    Raises:
        ValueError: bad arguments, a model created or compiled outside
            ``strategy``, an empty or infinite dataset, replicas given
            shards of different sizes, a checkpoint of another model, or
            workers that found different checkpoints.
        RuntimeError: another worker stopped answering (it died or its
            machine did); restart every worker, with ``checkpoint_dir`` to
            resume.

    Example:
        >>> strategy = ki.distribute.multi_worker_strategy()
        >>> with strategy.scope():
        ...     model = keras.Sequential([keras.Input((2,)), ki.layers.NeuralODE(
        ...         ki.layers.ConcatDense(2, activation="tanh")), keras.layers.Dense(1)])
        ...     model.compile(keras.optimizers.Adam(1e-3), "mse")
        >>> dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
        >>> history = ki.distribute.fit(model, dataset, epochs=5, checkpoint_dir="ckpt")
        >>> history.history["loss"], history.history["neural_ode/nfe_forward"]
    """
    strategy = _check_fit_arguments(model, dataset, epochs, strategy, checkpoint_dir, callbacks,
                                    verbose)
    chief = strategy.extended.should_checkpoint
    if verbose == "auto":
        verbose = 1 if chief else 0
    callbacks = _as_list(callbacks)
    if solver_stats and not any(isinstance(c, SolverStats) for c in callbacks):
        callbacks.append(SolverStats())
    _build(model, strategy, dataset)
    initial_epoch = 0
    checkpoint = None
    if checkpoint_dir is not None:
        checkpoint = distribute_checkpoint.EpochCheckpoint(
            os.fspath(checkpoint_dir), model, strategy)
        initial_epoch = checkpoint.restore()
    train_function = _make_train_function(model, strategy)
    cardinality = int(dataset.cardinality())
    callback_list = keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=verbose != 0, model=model, verbose=verbose,
        epochs=epochs, steps=cardinality if cardinality >= 0 else None)
    distributed = strategy.experimental_distribute_dataset(dataset)
    model.stop_training = False
    callback_list.on_train_begin()
    logs = {}
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        try:
            logs = _run_epoch(train_function, distributed, callback_list, epoch)
            callback_list.on_epoch_end(epoch, logs)
            if checkpoint is not None:
                checkpoint.save(epoch + 1)
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as error:
            resume = (f"it resumes after the last finished epoch saved in "
                      f"checkpoint_dir={checkpoint_dir!r}" if checkpoint_dir is not None else
                      "pass `checkpoint_dir` to resume after the last finished epoch")
            raise RuntimeError(
                f"Training stopped in epoch {epoch}: another worker is unreachable "
                f"(TensorFlow: {_summary(error)}). Restart every worker with the same "
                f"command; {resume}.") from error
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return model.history


def _check_fit_arguments(model, dataset, epochs, strategy, checkpoint_dir, callbacks, verbose):
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: model={model!r}")
    if getattr(model, "optimizer", None) is None:
        raise ValueError(f"Compile the model (under strategy.scope()) before training it. "
                         f"Received: model={model.name!r} without an optimizer")
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(f"`dataset` must be a tf.data.Dataset of global batches. "
                        f"Received: dataset of type {type(dataset).__name__}")
    if int(dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise ValueError("An epoch is one pass over `dataset`, which is infinite: bound it, "
                         "e.g. dataset.take(steps_per_epoch). Received: dataset with infinite "
                         "cardinality")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"`epochs` must be an int >= 1. Received: epochs={epochs!r}")
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise TypeError(f"`checkpoint_dir` must be a path or None. "
                        f"Received: checkpoint_dir={checkpoint_dir!r}")
    if checkpoint_dir is not None and os.path.exists(checkpoint_dir) and not os.path.isdir(
            checkpoint_dir):  # found before training, not at the first epoch's save
        raise ValueError(f"`checkpoint_dir` must be a directory (or a path to create one); "
                         f"it is a file. Received: checkpoint_dir={checkpoint_dir!r}")
    if callbacks is not None and not all(
            isinstance(c, keras.callbacks.Callback) for c in _as_list(callbacks)):
        raise TypeError(f"`callbacks` must be a list of keras.callbacks.Callback. "
                        f"Received: callbacks={callbacks!r}")
    if verbose not in ("auto", 0, 1, 2) or isinstance(verbose, bool):
        raise ValueError(f"`verbose` must be 'auto', 0, 1 or 2. Received: verbose={verbose!r}")
    if strategy is None:
        strategy = model.distribute_strategy
    if not isinstance(strategy, tf.distribute.Strategy):
        raise TypeError(f"`strategy` must be a tf.distribute.Strategy or None. "
                        f"Received: strategy={strategy!r}")
    variables = list(model.variables)
    if model.optimizer.built:
        variables += list(model.optimizer.variables)
    foreign = [v.path for v in variables
               if not strategy.extended.variable_created_in_scope(getattr(v, "value", v))]
    if foreign:
        raise ValueError(
            f"Create and compile the model (and its optimizer) under `with strategy.scope():` "
            f"of the strategy it trains with; these variables are not: {foreign[:5]}. "
            f"Received: strategy={type(strategy).__name__}")
    return strategy


def _as_list(callbacks):
    """``callbacks`` as a list: one callback alone is taken, as ``Model.fit`` takes it."""
    if isinstance(callbacks, keras.callbacks.Callback):
        return [callbacks]
    try:
        return list(callbacks or [])
    except TypeError:
        return [callbacks]


def _build(model, strategy, dataset):
    """Creates every variable before the loop: ``strategy.run`` cannot create them.

    One sample of the first batch goes eagerly through the model, its
    compiled loss and metrics (which Keras builds on first use); the metrics
    are then reset and the optimizer built.
    """
    with strategy.scope():
        data = next(iter(dataset.take(1)), None)
        if data is None:
            raise ValueError(f"The dataset gave no batch. Received: an empty dataset with "
                             f"element_spec={dataset.element_spec}")
        unbatched = "`dataset` must give global batches (`dataset.batch(global_batch_size)`)"
        received = f"Received: dataset with element_spec={dataset.element_spec}"
        if any(t.shape.rank == 0 for t in tf.nest.flatten(data)):
            raise ValueError(f"{unbatched}; its elements hold scalars. {received}")
        sample = tf.nest.map_structure(lambda t: t[:1], data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(sample)
        try:
            y_pred = model(x)
        except ValueError as error:  # e.g. Keras' "Invalid input shape": is it a batch?
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).split("Arguments received")[0]
            raise ValueError(f"The model refused one sample of the dataset's first element "
                             f"({' '.join(text.split())}). {unbatched}. {received}") from error
        if getattr(model, "loss", None) is not None:
            model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                               training=False)
        model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        model.reset_metrics()
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)


def _make_train_function(model, strategy):
    def replica_step(data):
        size = tf.shape(tf.nest.flatten(data)[0])[:1]
        sizes = tf.distribute.get_replica_context().all_gather(size, axis=0)
        check = tf.debugging.Assert(
            tf.equal(tf.reduce_min(sizes), tf.reduce_max(sizes)),
            [f"{_UNEVEN_BATCH_MARKER}; samples per replica:", sizes])
        with tf.control_dependencies([check]):
            model.train_step(data)

    @tf.function(reduce_retracing=True)
    def train_function(data):
        strategy.run(replica_step, args=(data,))
        return model.get_metrics_result()

    return train_function


def _summary(error):
    """The first two lines of a TensorFlow error, without its ``{{function_node ...}}`` tag."""
    lines = re.sub(r"\{\{[^}]*\}\}\s*", "", str(error)).strip().splitlines()
    return " ".join(line.strip() for line in lines[:2])[:400]


def _run_epoch(train_function, distributed, callback_list, epoch):
    """One pass over the distributed dataset; returns the last step's logs."""
    logs, steps = {}, 0
    for steps, batch in enumerate(distributed, start=1):
        callback_list.on_train_batch_begin(steps - 1)
        logs = _run_step(train_function, batch, epoch, steps - 1)
        callback_list.on_train_batch_end(steps - 1, logs)
    if steps == 0:
        raise ValueError(f"The dataset gave no batch in epoch {epoch}. Received: an empty "
                         f"dataset")
    return dict(logs)


def _run_step(train_function, batch, epoch, step):
    try:
        logs = train_function(batch)
    except tf.errors.InvalidArgumentError as error:
        if _UNEVEN_BATCH_MARKER not in str(error):
            raise
        found = re.search(r"samples per replica:\]?\s*(\[[0-9 ]*\])", str(error))
        sizes = found.group(1) if found else "unequal numbers of"
        raise ValueError(
            f"At step {step} of epoch {epoch} the replicas received {sizes} samples. Each "
            f"replica's loss is the mean over its shard divided by the number of replicas, "
            f"which is the global batch mean only when the shards are equal: batch the "
            f"dataset with drop_remainder=True, or use a global batch size and a dataset size "
            f"that divide among the replicas. Received: a global batch split into shards of "
            f"{sizes} samples") from None
    return {name: np.asarray(value).item() for name, value in logs.items()}
