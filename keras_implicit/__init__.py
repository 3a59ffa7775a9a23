"""keras_implicit: implicit layers for Keras 3 on the TensorFlow backend.

Neural ODEs (``layers.NeuralODE``), Deep Equilibrium models (``layers.DEQ``),
continuous normalizing flows (``bijectors.FFJORD``, ``models.ContinuousFlow``)
and latent ODEs (``models.LatentODE``), built on a functional core in ``ops``;
``distribute.fit`` trains any of them on several machines.
"""

import os as _os

_REQUIRED_BACKEND = "tensorflow"


def _check_backend():
    requested = _os.environ.get("KERAS_BACKEND")
    if requested is not None and requested != _REQUIRED_BACKEND:
        raise ImportError(
            "keras_implicit needs the TensorFlow backend of Keras 3: its solvers are "
            "TensorFlow while-loops with custom gradients and its flows are "
            "TensorFlow Probability bijectors. Set KERAS_BACKEND=tensorflow before "
            f"importing it. Received: KERAS_BACKEND={requested!r}"
        )
    import keras

    active = keras.config.backend()
    if active != _REQUIRED_BACKEND:
        raise ImportError(
            "keras_implicit needs the TensorFlow backend of Keras 3, but Keras is "
            f"configured for {active!r} (see ~/.keras/keras.json). Set "
            "KERAS_BACKEND=tensorflow before importing it."
        )


_check_backend()

from keras_implicit import applications  # noqa: E402
from keras_implicit import bijectors  # noqa: E402
from keras_implicit import callbacks  # noqa: E402
from keras_implicit import config  # noqa: E402
from keras_implicit import datasets  # noqa: E402
from keras_implicit import distribute  # noqa: E402
from keras_implicit import files  # noqa: E402
from keras_implicit import layers  # noqa: E402
from keras_implicit import models  # noqa: E402
from keras_implicit import ops  # noqa: E402
from keras_implicit import serialization  # noqa: E402
from keras_implicit import solvers  # noqa: E402
from keras_implicit import testing  # noqa: E402
from keras_implicit import validation  # noqa: E402

__version__ = "0.1.0"
