"""Measuring one training step: its peak memory above what was held before it, its time.

Peak memory, in order of preference:

- ``"gpu"``: with a GPU, the peak of TensorFlow's GPU allocator during the
  step (``tf.config.experimental.get_memory_info``) minus its use before.
- ``"cpu_allocator"``: host memory, the same statistic of TensorFlow's CPU
  allocator. TensorFlow keeps statistics on CPU only with its BFC allocator,
  which :func:`enable_cpu_allocator_stats` selects; it must run before the
  TensorFlow runtime starts (before the first op), as ``keras-implicit
  table1`` does. Counts every tensor of the step (activations kept for the
  backward pass, gradients, temporaries), nothing else: deterministic and
  comparable across models.
- ``"rss"``: host memory, the peak resident set size of the process
  (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident set
  before the step, after returning freed heap memory to the system
  (``malloc_trim``) so that the step has to fault in what it uses. Includes
  allocator slack and library scratch buffers; noisier.

No method needs a fresh process. None is a timing assertion: the numbers are
reported, never tested against thresholds.
"""

import ctypes
import os
import pathlib
import statistics
import time

ALLOCATOR_ENVIRONMENT_VARIABLE = "TF_CPU_ALLOCATOR_USE_BFC"
_STATUS = pathlib.Path("/proc/self/status")
_CLEAR_REFS = pathlib.Path("/proc/self/clear_refs")

DESCRIPTIONS = {
    "gpu": "GPU: peak of TensorFlow's GPU allocator during the step, above its use before",
    "cpu_allocator": ("host: peak of TensorFlow's CPU (BFC) allocator during the step, above "
                      "its use before"),
    "rss": "host: peak resident set (VmHWM) during the step, above the resident set before",
}


def enable_cpu_allocator_stats():
    """Selects TensorFlow's BFC allocator on CPU, which keeps peak statistics.

    Effective only before the TensorFlow runtime starts (before the first op
    runs in the process); :class:`StepMemoryMeter` checks whether it worked.
    """
    os.environ.setdefault(ALLOCATOR_ENVIRONMENT_VARIABLE, "true")


def gpu_available():
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def _allocator_stats(device):
    import tensorflow as tf

    try:
        return tf.config.experimental.get_memory_info(device)
    except (ValueError, tf.errors.OpError):
        return None


def _status_kib(field):
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in {_STATUS}")


def _rss_reset_available():
    try:
        _CLEAR_REFS.write_text("5")
        _status_kib("VmHWM")
        return True
    except OSError:
        return False


def _malloc_trim():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class StepMemoryMeter:
    """Peak memory of a callable above the memory held just before it, in bytes.

    Args:
        method: ``None`` picks the best available (``"gpu"``,
            ``"cpu_allocator"``, ``"rss"``), or one of them explicitly.

    Example:
        >>> meter = StepMemoryMeter()
        >>> peak_bytes = meter.measure(lambda: model.train_on_batch(x, y))
        >>> meter.description
        >>> meter.begin(); step(); peak_bytes = meter.end()  # the same, split
    """

    def __init__(self, method=None):
        available = self.available_methods()
        if method is None:
            if not available:
                raise RuntimeError(
                    "No way to measure peak memory here: no GPU, no TensorFlow CPU allocator "
                    f"statistics (set {ALLOCATOR_ENVIRONMENT_VARIABLE}=true before TensorFlow "
                    "starts) and no /proc/self/clear_refs.")
            method = available[0]
        if method not in DESCRIPTIONS:
            raise ValueError(f"Unknown `method`. Valid methods: {sorted(DESCRIPTIONS)}. "
                             f"Received: method={method!r}")
        if method not in available:
            raise ValueError(f"The memory method {method!r} is not available here (available: "
                             f"{available}). Received: method={method!r}")
        self.method = method
        self.description = DESCRIPTIONS[method]
        self.device = "GPU:0" if method == "gpu" else "CPU:0"

    @staticmethod
    def available_methods():
        methods = []
        if gpu_available() and _allocator_stats("GPU:0") is not None:
            methods.append("gpu")
        if _allocator_stats("CPU:0") is not None:
            methods.append("cpu_allocator")
        elif _rss_reset_available():
            # Not with the BFC allocator: its pool keeps freed memory resident.
            methods.append("rss")
        return methods

    def begin(self):
        """Starts a measurement: resets the peak, records the memory in use now."""
        if self.method == "rss":
            _malloc_trim()
            self._before = _status_kib("VmRSS") * 1024
            _CLEAR_REFS.write_text("5")
            return
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats(self.device)
        self._before = tf.config.experimental.get_memory_info(self.device)["current"]

    def end(self):
        """The peak bytes since :meth:`begin` above the bytes in use at ``begin``."""
        if self.method == "rss":
            peak = _status_kib("VmHWM") * 1024
        else:
            import tensorflow as tf

            peak = tf.config.experimental.get_memory_info(self.device)["peak"]
        return max(0, peak - self._before)

    def measure(self, fn):
        """Runs ``fn()`` once; returns the peak bytes above the bytes in use before it."""
        self.begin()
        fn()
        return self.end()


def median_seconds(fn, repeats=5):
    """Median wall time of ``repeats`` calls of ``fn()`` (call it once before to warm up)."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"`repeats` must be an int >= 1. Received: repeats={repeats!r}")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
