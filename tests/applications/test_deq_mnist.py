"""The MNIST DEQ example trains with fit: held-out accuracy well above chance after a
few steps on a small subset, solver statistics in History."""

import keras
import numpy as np
import pytest

import keras_implicit as ki


def test_deq_mnist_trains_with_fit(mnist_path):
    (x_train, y_train), (x_test, y_test) = ki.datasets.mnist.load_data(mnist_path)
    x_train = x_train[:256, ..., None].astype("float32") / 255.0
    x_test = x_test[:256, ..., None].astype("float32") / 255.0
    y_train, y_test = y_train[:256], y_test[:256]
    model = ki.applications.deq_mnist(channels=8, hidden_channels=16, groups=4, tol=1e-3,
                                      max_iter=15, on_failure="ignore")
    assert model.output_shape == (None, 10)
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x_train, y_train, epochs=1, batch_size=16, verbose=0,
                        callbacks=[ki.callbacks.SolverStats()])
    assert history.history["deq/iterations_forward"][-1] > 1
    assert history.history["deq/iterations_backward"][-1] > 1
    # Eagerly (no second trace): 0.61 measured after these 16 steps; chance is 0.1.
    logits = model(x_test, training=False)
    accuracy = float(np.mean(np.argmax(np.asarray(logits), axis=1) == y_test))
    assert accuracy > 0.4, accuracy


def test_deq_mnist_rejects_bad_arguments():
    with pytest.raises(ValueError, match="Received: channels=0"):
        ki.applications.deq_mnist(channels=0)
    with pytest.raises(ValueError, match="`groups` must divide"):
        ki.applications.deq_mnist(channels=12, hidden_channels=16, groups=8)
