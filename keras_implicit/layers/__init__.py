"""Keras 3 layers: state, config and shapes; ``call`` delegates to ``ops``."""

from keras_implicit.layers.deq import DEQ
from keras_implicit.layers.deq_cells import DEQConvCell, DEQDenseCell
from keras_implicit.layers.neural_ode import NeuralODE
from keras_implicit.layers.normalization import group_norm
from keras_implicit.layers.time_dynamics import (
    ConcatConv2D, ConcatDense, ConcatMLP, takes_time)
