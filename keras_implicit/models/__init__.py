"""``keras.Model`` subclasses built from keras_implicit layers."""
