"""TensorFlow Probability bijectors for continuous normalizing flows.

``FFJORD`` and ``flow_distribution`` are loaded on first use: they import TensorFlow
Probability, which takes about 2 s of a process's start, and ``import keras_implicit``
does not (nor do NeuralODE, DEQ and LatentODE).
"""

from keras_implicit.bijectors.augmented_dynamics import FlowSolution  # noqa: F401

_LAZY = ("FFJORD", "flow_distribution")


def __getattr__(name):
    if name in _LAZY:
        from keras_implicit.bijectors import ffjord

        return getattr(ffjord, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
