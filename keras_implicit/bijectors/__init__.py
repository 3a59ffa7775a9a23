"""TensorFlow Probability bijectors for continuous normalizing flows."""
