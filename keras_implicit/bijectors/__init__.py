"""TensorFlow Probability bijectors for continuous normalizing flows."""

from keras_implicit.bijectors.augmented_dynamics import FlowSolution  # noqa: F401
from keras_implicit.bijectors.ffjord import FFJORD, flow_distribution  # noqa: F401
