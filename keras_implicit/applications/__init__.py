"""Ready-made architectures built from keras_implicit layers."""
