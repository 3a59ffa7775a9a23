"""A Keras callback measuring the training steps of ``fit`` themselves: time and peak memory."""

import statistics
import time

import keras


class TrainingStepMeter(keras.callbacks.Callback):
    """Times every training batch of ``fit`` and measures its peak memory.

    The first batch (tracing) and partial batches (a retrace for their shape)
    are left out of the statistics. Put this callback first in the list so
    that other callbacks' work is not counted.

    Args:
        meter: a ``measure.StepMemoryMeter``.
        full_batches: number of full batches per epoch; batch indices at or
            beyond it are partial.
    """

    def __init__(self, meter, full_batches):
        super().__init__()
        self.meter = meter
        self.full_batches = full_batches
        self.seconds = []
        self.peak_bytes = []
        self._first = True
        self._start = None

    def _measured(self, batch):
        return not self._first and batch < self.full_batches

    def on_train_batch_begin(self, batch, logs=None):
        if self._measured(batch):
            self.meter.begin()
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        elapsed = time.perf_counter() - self._start
        if self._measured(batch):
            self.peak_bytes.append(self.meter.end())
            self.seconds.append(elapsed)
        self._first = False

    def median_seconds(self):
        return statistics.median(self.seconds) if self.seconds else None

    def max_peak_bytes(self):
        return max(self.peak_bytes) if self.peak_bytes else None
