"""Keras callbacks for implicit layers."""

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="keras_implicit")
class SolverStats(keras.callbacks.Callback):
    """Puts the solver statistics of implicit layers into Keras logs.

    Every layer of the model with a ``solver_stats()`` method (``NeuralODE``,
    ``DEQ``...) contributes entries named ``"<layer name>/<statistic>"``,
    for example ``"neural_ode/nfe_forward"``. They appear in the progress bar
    (after each batch), in ``History`` and in ``TensorBoard`` (at each epoch
    end) as long as this callback comes before ``TensorBoard`` in the list.
    The values are those of the last training batch; with validation data,
    ``"val_<layer name>/<statistic>"`` holds those of the last validation batch.

    Args:
        prefix: prepended to every entry (default ``""``).

    Example:
        >>> history = model.fit(x, y, callbacks=[ki.callbacks.SolverStats()])
        >>> history.history["neural_ode/nfe_forward"]
    """

    def __init__(self, prefix=""):
        super().__init__()
        self.prefix = prefix
        self._train = self._validation = None

    def get_config(self):
        return {"prefix": self.prefix}

    def _layers(self):
        return [layer for layer in self.model._flatten_layers(include_self=False)
                if callable(getattr(layer, "solver_stats", None))]

    def current(self):
        """The statistics of every implicit layer, as Python numbers."""
        values = {}
        for layer in self._layers():
            for name, value in layer.solver_stats().items():
                values[f"{self.prefix}{layer.name}/{name}"] = np.asarray(value).item()
        return values

    def _update(self, logs):
        if logs is not None:
            logs.update(self.current())

    def on_epoch_begin(self, epoch, logs=None):
        self._train = self._validation = None

    def on_train_batch_end(self, batch, logs=None):
        self._train = self.current()
        if logs is not None:
            logs.update(self._train)

    def on_test_batch_end(self, batch, logs=None):
        self._update(logs)

    def on_test_end(self, logs=None):
        self._validation = self.current()
        if logs is not None:
            logs.update(self._validation)

    def on_epoch_end(self, epoch, logs=None):
        # The validation pass ran last: its statistics went under the training names.
        if logs is None:
            return
        logs.update(self._train if self._train is not None else self.current())
        if self._validation is not None:
            logs.update({f"val_{name}": value for name, value in self._validation.items()})
