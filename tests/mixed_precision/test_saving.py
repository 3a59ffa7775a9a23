""".keras and SavedModel round trips keep the dtype policy.

Models are saved under a mixed policy and loaded with the global policy back at
float32: what the loaded layers compute in must come from the file. The .keras
model runs the same operations (eagerly, both): its outputs are identical; the
SavedModel's traced graph may round differently, by a few eps of the compute dtype.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
import precision_cases as pc


def _check_policy(model, policy):
    for layer in model._flatten_layers():
        if isinstance(layer, (ki.layers.NeuralODE, ki.layers.DEQ)):
            assert layer.dtype_policy.name == policy, layer.name
            assert layer.compute_dtype == pc.COMPUTE[policy]
    assert all(v.dtype == "float32" for v in model.trainable_variables)


@pytest.mark.filterwarnings("ignore:.*below the machine epsilon:UserWarning")
def test_sequential_round_trips(policy, tmp_path):
    """NeuralODE (adjoint) and DEQ in one model: .keras (safe mode) and SavedModel."""
    x, _ = pc.data()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(8),
        ki.layers.NeuralODE(ki.layers.ConcatDense(8, activation="tanh"), jit_dynamics=False,
                            name="ode"),
        ki.layers.DEQ(ki.layers.DEQDenseCell(), name="deq"), keras.layers.Dense(1)])
    expected = np.asarray(model(x))
    assert expected.dtype == pc.COMPUTE[policy]
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    exported = os.path.join(tmp_path, "exported")
    model.export(exported, verbose=False)

    keras.mixed_precision.set_global_policy("float32")
    loaded = keras.models.load_model(path, safe_mode=True)
    _check_policy(loaded, policy)
    np.testing.assert_array_equal(np.asarray(loaded(x)), expected)

    restored = tf.saved_model.load(exported)  # kept: it owns the variables
    served = restored.serve(tf.constant(x))
    assert served.dtype == pc.COMPUTE[policy]
    pc.assert_close_in_eps(np.asarray(served, np.float64), expected.astype(np.float64), policy,
                           pc.STATE_RTOL, "SavedModel output")


@pytest.mark.filterwarnings("ignore:.*below the machine epsilon:UserWarning")
def test_models_round_trip(policy, tmp_path):
    """ContinuousFlow (log_prob, float32) and LatentODE (.keras; its SavedModel export)."""
    flow = ki.models.ContinuousFlow(hidden_units=(8,), trace="exact", rtol=1e-2, atol=1e-2,
                                    jit_dynamics=False)
    points = np.random.default_rng(0).normal(size=(8, 2)).astype("float32")
    flow(points)
    expected = np.asarray(flow.log_prob(points))
    data = ki.datasets.spirals(4, num_points=12, seed=0)
    series = {k: data[k] for k in ("observations", "times", "mask")}
    latent = ki.models.LatentODE(2, 2, 8, rtol=1e-2, atol=1e-2, jit_dynamics=False)
    predicted = np.asarray(latent(series))
    for model in (flow, latent):
        model.save(os.path.join(tmp_path, f"{model.name}.keras"))
    latent.export(os.path.join(tmp_path, "latent"), verbose=False)

    keras.mixed_precision.set_global_policy("float32")
    flow2 = keras.models.load_model(os.path.join(tmp_path, "continuous_flow.keras"))
    assert flow2.dtype_policy.name == policy
    assert [d.compute_dtype for d in flow2.dynamics] == [pc.COMPUTE[policy]]
    np.testing.assert_array_equal(np.asarray(flow2.log_prob(points)), expected)
    latent2 = keras.models.load_model(os.path.join(tmp_path, "latent_ode.keras"))
    _check_policy(latent2, policy)
    np.testing.assert_array_equal(np.asarray(latent2(series)), predicted)
    restored = tf.saved_model.load(os.path.join(tmp_path, "latent"))  # kept: owns the variables
    served = restored.serve({k: tf.constant(v, tf.float32) for k, v in series.items()})
    assert served.dtype == predicted.dtype
    pc.assert_close_in_eps(np.asarray(served, np.float64), predicted.astype(np.float64),
                           policy, pc.STATE_RTOL, "LatentODE SavedModel output")
