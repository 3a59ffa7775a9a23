"""TensorFlow Probability bijectors for continuous normalizing flows."""

from keras_implicit.bijectors.augmented_dynamics import FlowSolution
from keras_implicit.bijectors.ffjord import FFJORD, flow_distribution
