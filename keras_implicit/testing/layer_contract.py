"""One check of the Keras contract for every layer of the package (like Keras's ``run_layer_test``).

``run_layer_contract(make_layer, input_shape)`` builds the layer from a
factory and checks, in order:

1. ``get_config`` / ``from_config``: the clone's config equals the original's;
2. ``Sequential`` use: one training step of a model ``Input -> layer -> Dense``
   gives a finite loss, and the model then predicts finite values;
3. ``.keras`` save and load in safe mode: the loaded model's outputs equal the
   original's (to ``rtol``), and its layer's config equals the original's;
4. SavedModel export: ``keras.layers.TFSMLayer`` (which loads it with
   ``tf.saved_model.load``) serves the same outputs (to ``export_rtol``; the
   exported graph may round differently).

Solvers, controllers and gradient strategies go through it inside the layer
that uses them (``NeuralODE``, ``DEQ``).
"""

import os
import tempfile

import numpy as np


def _same_config(a, b):
    """Configs compared as JSON would see them (tuples and lists alike)."""
    import json

    return json.loads(json.dumps(a, default=str)) == json.loads(json.dumps(b, default=str))


def run_layer_contract(make_layer, input_shape, *, dtype="float32", batch=3, rtol=1e-6,
                       export_rtol=1e-4, export=True, train=True, seed=0):
    """Checks the Keras contract of the layer ``make_layer()`` (see the module docstring).

    Args:
        make_layer: a function returning a fresh layer.
        input_shape: the shape of one sample (no batch axis).
        dtype: the dtype of the data and of the ``Dense`` head.
        batch: the batch size of the data.
        rtol: tolerance of the ``.keras`` round trip (deterministic: usually exact).
        export_rtol: tolerance of the SavedModel round trip.
        export: whether to check the SavedModel export.
        train: whether to check a training step.
        seed: seed of the data.

    Returns:
        The model built around the layer (for further checks).

    Raises:
        AssertionError: on the first broken part of the contract.
    """
    import keras
    import tensorflow as tf

    layer = make_layer()
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert _same_config(clone.get_config(), config), (clone.get_config(), config)

    x = np.random.RandomState(seed).randn(batch, *input_shape).astype(dtype)
    model = keras.Sequential([keras.Input(tuple(input_shape), dtype=dtype), layer,
                              keras.layers.Flatten(dtype=dtype),
                              keras.layers.Dense(1, dtype=dtype)])
    if train:
        # Trained first, then predicted once: ``compile`` drops the predict function, so a
        # prediction before training would be traced (and its solve compiled) twice.
        y = np.zeros((batch, 1), dtype)
        model.compile(keras.optimizers.SGD(1e-3), "mse")
        loss = model.train_on_batch(x, y)
        assert np.isfinite(loss), loss
    expected = model.predict(x, verbose=0)
    assert np.all(np.isfinite(expected)), expected

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        model.save(path)
        loaded = keras.models.load_model(path, safe_mode=True)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=rtol,
                                   atol=rtol * float(np.abs(expected).max() + 1e-30))
        loaded_layer = loaded.layers[0]
        original = {k: v for k, v in layer.get_config().items() if k != "build_config"}
        reloaded = {k: v for k, v in loaded_layer.get_config().items() if k != "build_config"}
        assert _same_config(original, reloaded), (original, reloaded)
        if export:
            exported = os.path.join(directory, "exported")
            model.export(exported, verbose=False)
            # TFSMLayer loads the SavedModel with ``tf.saved_model.load`` and calls its
            # ``serve`` endpoint: one load checks both.
            tfsm = keras.layers.TFSMLayer(exported, call_endpoint="serve", dtype=dtype)
            np.testing.assert_allclose(np.asarray(tfsm(tf.constant(x))), expected,
                                       rtol=export_rtol,
                                       atol=export_rtol * float(np.abs(expected).max()))
    return model
