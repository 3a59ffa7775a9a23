"""Datasets: MNIST from local files or download, generated toy densities and spirals."""

from keras_implicit.datasets import mnist  # noqa: E402,F401
from keras_implicit.datasets.spirals import spirals  # noqa: E402,F401

from keras_implicit.datasets.toy2d import toy2d
