"""``ki.distribute.fit`` in this process: under ``MirroredStrategy`` (two logical CPUs), its
checkpoints, and what it refuses. The processes of a real cluster are in
``test_multi_worker.py``."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
import training_cases

pytestmark = pytest.mark.plain_graph  # checkpoints and refusals; the defaults under the
# strategy: tests/layers/test_neural_ode.py, test_deq.py and the cluster (tests/conftest.py)


def keras_fit_on_one_device(name, strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model, dataset = training_cases.build(name)
    initial = training_cases.trainable_weights(model)
    history = model.fit(dataset, epochs=training_cases.EPOCHS, shuffle=False, verbose=0)
    return initial, training_cases.trainable_weights(model), history.history


def test_mirrored_training_matches_keras_fit_on_one_device(two_device_strategies):
    """An exact case (see training_cases); the models with their own train_step are
    compared in test_multi_worker.py and by the checkpoint test below."""
    name = "node_adjoint_rk4"
    one_device, mirrored = two_device_strategies
    initial, reference, reference_logs = keras_fit_on_one_device(name, one_device)
    keras.utils.set_random_seed(0)
    with mirrored.scope():
        model, dataset = training_cases.build(name)
    history = ki.distribute.fit(model, dataset, epochs=training_cases.EPOCHS, verbose=0)
    moved = training_cases.relative_difference(initial, reference)
    difference = training_cases.relative_difference(
        training_cases.trainable_weights(model), reference)
    assert moved > 1e3 * training_cases.EXACT_TOLERANCE, moved
    assert difference < training_cases.EXACT_TOLERANCE, (difference, moved)
    assert history.epoch == list(range(training_cases.EPOCHS))
    # The logged metrics are means over both replicas' samples, as fit's on one device.
    np.testing.assert_allclose(history.history["loss"], reference_logs["loss"], rtol=1e-5)
    # The solver statistics, the adjoint's included.
    assert min(history.history["neural_ode/nfe_backward"]) > 0


def dense_model(strategy):
    """For what does not depend on the layers: a plain Dense model is quicker to trace."""
    with strategy.scope():
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        training_cases.set_weights(model)
        model.compile(keras.optimizers.SGD(0.1), "mse")
    return model


def regression_data(n, batch_size, drop_remainder=False):
    x = np.random.default_rng(0).normal(size=(n, 2)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, x[:, :1] * x[:, 1:])).batch(
        batch_size, drop_remainder=drop_remainder)


@pytest.mark.parametrize("name,replicas", [("node_adjoint_rk4", 2),
                                           ("continuous_flow_exact_trace", 1)])
def test_checkpoints_resume_after_the_last_finished_epoch(two_device_strategies, tmp_path, name,
                                                          replicas):
    """1 epoch, then a new model resumes to 3: the weights of 3 epochs without a stop.

    (``tf.train.Checkpoint(model=flow)`` alone would miss the flow's dynamics;
    one replica for the flow, whose steps are slower to trace.)
    """
    strategy = two_device_strategies[replicas - 1]

    def fresh():  # a new process would start from fresh weights too
        with strategy.scope():
            return training_cases.build(name)

    uninterrupted, data = fresh()
    ki.distribute.fit(uninterrupted, data, epochs=3, verbose=0)
    expected = training_cases.trainable_weights(uninterrupted)
    first, _ = fresh()
    assert ki.distribute.fit(first, data, epochs=1, checkpoint_dir=tmp_path, verbose=0).epoch \
        == [0]
    resumed, _ = fresh()
    history = ki.distribute.fit(resumed, data, epochs=3, checkpoint_dir=tmp_path, verbose=0)
    assert history.epoch == [1, 2]
    assert resumed.optimizer.iterations.numpy() == 3 * 2  # restored, then 2 epochs of 2 steps
    assert training_cases.relative_difference(
        training_cases.trainable_weights(resumed), expected) < training_cases.EXACT_TOLERANCE
    # Everything asked for is done: nothing more is trained.
    again, _ = fresh()
    assert ki.distribute.fit(again, data, epochs=3, checkpoint_dir=tmp_path, verbose=0).epoch \
        == []
    assert training_cases.relative_difference(
        training_cases.trainable_weights(again), expected) < training_cases.EXACT_TOLERANCE
    with strategy.scope():
        other = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        other.compile("sgd", "mse")
    with pytest.raises(ValueError, match="does not fit this model and optimizer"):
        ki.distribute.fit(other, regression_data(4, 2), epochs=3, checkpoint_dir=tmp_path)


@pytest.mark.parametrize("n,batch_size,sizes", [(5, 5, r"\[3 2\]"), (9, 4, r"\[1 0\]")])
def test_replicas_given_unequal_shards_are_refused_before_any_update(
        two_device_strategies, n, batch_size, sizes):
    """The mean of each replica's mean is not the batch mean: fit raises, naming the fix."""
    model = dense_model(two_device_strategies[1])
    before = training_cases.trainable_weights(model)
    with pytest.raises(ValueError, match=f"received {sizes} samples.*drop_remainder=True"):
        ki.distribute.fit(model, regression_data(n, batch_size), verbose=0)
    if n == 5:  # the only step was refused
        assert model.optimizer.iterations.numpy() == 0
        for a, b in zip(training_cases.trainable_weights(model), before):
            np.testing.assert_array_equal(a, b)
    if n == 9:  # batches of 4 split evenly; the last one, of 1, is dropped
        model = dense_model(two_device_strategies[1])
        ki.distribute.fit(model, regression_data(n, batch_size, drop_remainder=True), verbose=0)
        assert model.optimizer.iterations.numpy() == 2


def test_bad_arguments(two_device_strategies, tmp_path):
    mirrored = two_device_strategies[1]
    model = dense_model(mirrored)
    data = regression_data(8, 4)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("the user's")
    x = np.zeros((8, 2), "float32")
    for kwargs, error, match in [
        ({"model": "model"}, TypeError, "Received: model='model'"),
        ({"dataset": np.zeros((4, 2))}, TypeError, "Received: dataset of type ndarray"),
        ({"dataset": data.repeat()}, ValueError, "dataset.take"),
        ({"dataset": data.take(0)}, ValueError, "gave no batch. Received: an empty dataset"),
        ({"epochs": 0}, ValueError, "Received: epochs=0"),
        ({"verbose": 3}, ValueError, "Received: verbose=3"),
        ({"callbacks": [print]}, TypeError, "Received: callbacks="),
        ({"checkpoint_dir": 3}, TypeError, "Received: checkpoint_dir=3"),
        # These three trained an epoch, or failed deep in Keras or TensorFlow, before.
        ({"checkpoint_dir": a_file}, ValueError, "must be a directory .*it is a file"),
        ({"dataset": tf.data.Dataset.from_tensor_slices((x, x[:, 0]))}, ValueError,
         r"global batches \(`dataset.batch\(global_batch_size\)`\); its elements hold scalars"),
        ({"dataset": tf.data.Dataset.from_tensor_slices((x, x[:, :1]))}, ValueError,
         r"refused one sample .*Invalid input shape.*must give global batches"),
        ({"strategy": two_device_strategies[0]}, ValueError,
         "under `with strategy.scope\\(\\):`.*Received: strategy=OneDeviceStrategy"),
    ]:
        arguments = {"model": model, "dataset": data, "verbose": 0, **kwargs}
        with pytest.raises(error, match=match):
            ki.distribute.fit(arguments.pop("model"), arguments.pop("dataset"), **arguments)
    uncompiled = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="Compile the model"):
        ki.distribute.fit(uncompiled, data)
    outside = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])  # default strategy
    outside.compile("sgd", "mse")
    with pytest.raises(ValueError, match="these variables are not"):
        ki.distribute.fit(outside, data, strategy=mirrored)
    assert a_file.read_text() == "the user's" and model.optimizer.iterations.numpy() == 0
    history = ki.distribute.fit(model, data, callbacks=keras.callbacks.CSVLogger(
        str(tmp_path / "log.csv")), verbose=0)  # one callback alone, as Model.fit takes it
    assert (tmp_path / "log.csv").exists() and len(history.history["loss"]) == 1
    for timeout in (0, -1.0, True, "60", float("inf"), float("nan")):
        with pytest.raises(ValueError, match=f"Received: timeout_seconds={timeout!r}"):
            ki.distribute.multi_worker_strategy(timeout_seconds=timeout)
