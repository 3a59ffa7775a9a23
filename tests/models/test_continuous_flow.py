"""ContinuousFlow: training logs, agreement with the TFP distribution, normalisation,
.keras and SavedModel round trips, estimator switching, bad input; and (slow) a trained
8-gaussians flow whose test NLL approaches the true entropy."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.special import logsumexp

import keras_implicit as ki
from keras_implicit.datasets.toy2d import EIGHT_GAUSSIANS_STD, eight_gaussians_centers

pytestmark = pytest.mark.plain_graph  # numerics in TensorFlow's graph (tests/conftest.py)


# Fixed-grid RK4 keeps the compiled graphs small; the numerics of adaptive solves are
# tested in tests/bijectors/test_ffjord.py.
SMALL = {"hidden_units": (16, 16), "solver": "rk4", "num_steps": 4, "seed": 0}


def trained_flow(**kwargs):
    flow = ki.models.ContinuousFlow(**{**SMALL, **kwargs})
    flow.compile(optimizer=keras.optimizers.Adam(1e-2), run_eagerly=True)
    history = flow.fit(ki.datasets.toy2d("pinwheel", 256, seed=0), batch_size=128, epochs=1,
                       verbose=0)
    return flow, history


def grid_mass(log_prob, limit, points):
    axis = np.linspace(-limit, limit, points)
    grid = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2).astype(np.float32)
    density = np.exp(np.concatenate([log_prob(tf.constant(grid[i:i + 8192])).numpy()
                                     for i in range(0, len(grid), 8192)]))
    return density.sum() * (axis[1] - axis[0]) ** 2


def test_fit_logs_nll_bits_per_dim_regularisers_and_nfe():
    flow, history = trained_flow(num_blocks=2, kinetic_energy_weight=0.1,
                                 jacobian_frobenius_weight=0.1)
    logs = {name: values[-1] for name, values in history.history.items()}
    assert set(logs) == {"loss", "nll", "bits_per_dim", "kinetic_energy", "jacobian_frobenius",
                         "nfe_forward", "nfe_backward"}
    assert logs["bits_per_dim"] == pytest.approx(logs["nll"] / (2 * np.log(2.0)), rel=1e-5)
    assert logs["loss"] == pytest.approx(
        logs["nll"] + 0.1 * (logs["kinetic_energy"] + logs["jacobian_frobenius"]), rel=1e-5)
    assert logs["kinetic_energy"] > 0 and logs["jacobian_frobenius"] > 0
    assert logs["nfe_forward"] == 2 * 4 * 4  # two blocks, four RK4 steps of four stages
    assert logs["nfe_backward"] > 0
    assert {"nfe_forward", "nfe_backward"} <= set(flow.solver_stats())


def test_log_prob_agrees_with_the_tfp_distribution_and_integrates_to_one():
    flow, _ = trained_flow(num_blocks=2)
    flow.trace = "exact"
    x = ki.datasets.toy2d("pinwheel", 16, seed=1)
    distribution = ki.bijectors.flow_distribution(flow.bijectors, (2,))
    np.testing.assert_allclose(flow.log_prob(x).numpy(), distribution.log_prob(x).numpy(),
                               rtol=1e-5, atol=1e-5)
    assert grid_mass(tf.function(flow.log_prob, autograph=False), 6.0, 201) == \
        pytest.approx(1.0, abs=0.02)
    samples = flow.sample(5, seed=3)
    assert samples.shape == (5, 2)
    np.testing.assert_array_equal(samples.numpy(), flow.sample(5, seed=3).numpy())


def test_keras_round_trip_keeps_weights_and_the_estimator_is_switchable(tmp_path):
    flow, _ = trained_flow()
    x = ki.datasets.toy2d("pinwheel", 8, seed=2)
    flow.trace = "exact"
    expected = flow.log_prob(x).numpy()
    flow.trace = "hutchinson"
    flow.save(tmp_path / "flow.keras")
    loaded = keras.models.load_model(tmp_path / "flow.keras")
    assert loaded.trace == "hutchinson"
    assert loaded.get_config()["num_steps"] == 4
    hutchinson = loaded.log_prob(x, seed=1).numpy()
    assert np.all(np.isfinite(hutchinson)) and np.any(np.abs(hutchinson - expected) > 1e-6)
    loaded.trace = "exact"
    np.testing.assert_allclose(loaded.log_prob(x).numpy(), expected, rtol=1e-6)


def test_saved_model_export_serves_log_prob_and_sample(tmp_path):
    flow, _ = trained_flow()
    flow.trace = "exact"
    x = ki.datasets.toy2d("pinwheel", 8, seed=2)
    expected = flow.log_prob(x).numpy()
    flow.export_saved_model(str(tmp_path / "saved"))
    restored = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(restored.log_prob(tf.constant(x)).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(restored.log_prob_exact(tf.constant(x)).numpy(), expected,
                               rtol=1e-5)
    assert np.all(np.isfinite(restored.log_prob_hutchinson(tf.constant(x)).numpy()))
    seed = tf.constant([4, 2], tf.int32)
    samples = restored.sample(tf.constant(6, tf.int32), seed).numpy()
    assert samples.shape == (6, 2)
    np.testing.assert_allclose(samples, flow.sample(6, seed=seed).numpy(), rtol=1e-5, atol=1e-6)
    # The same endpoints as serving signatures (keyword inputs, dict outputs).
    assert {"log_prob", "log_prob_exact", "log_prob_hutchinson", "sample"} <= set(
        restored.signatures)
    served = restored.signatures["sample"](n=tf.constant(6, tf.int32), seed=seed)
    np.testing.assert_allclose(next(iter(served.values())).numpy(), samples, rtol=1e-6)
    served = restored.signatures["log_prob"](x=tf.constant(x))
    np.testing.assert_allclose(next(iter(served.values())).numpy(), expected, rtol=1e-5)
    # Keras' own export of the fitted model (it failed on the TensorShape that fit built
    # the flow with), served by TFSMLayer.
    flow.export(str(tmp_path / "exported"), verbose=False)
    layer = keras.layers.TFSMLayer(str(tmp_path / "exported"), call_endpoint="serve")
    np.testing.assert_allclose(layer(tf.constant(x)).numpy(), expected, rtol=1e-5)


def test_bad_inputs_name_the_argument_and_value():
    with pytest.raises(ValueError, match="trace='sometimes'"):
        ki.models.ContinuousFlow(trace="sometimes")
    with pytest.raises(ValueError, match="num_probes=0"):
        ki.models.ContinuousFlow(num_probes=0)
    with pytest.raises(ValueError, match="kinetic_energy_weight=-1"):
        ki.models.ContinuousFlow(kinetic_energy_weight=-1)
    with pytest.raises(ValueError, match="num_blocks=0"):
        ki.models.ContinuousFlow(num_blocks=0)
    for dynamics in (2, "mlp", [], [keras.layers.Dense(2), 3]):  # 2: the data's dimension
        with pytest.raises(TypeError, match=re.escape(f"Received: dynamics={dynamics!r}")):
            ki.models.ContinuousFlow(dynamics)
    flow = ki.models.ContinuousFlow(**SMALL)
    with pytest.raises(TypeError, match="x with dtype=int64"):
        flow.log_prob(np.zeros((3, 2), np.int64))
    flow.log_prob(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"event shape \(3,\).*event_shape=\(2,\)"):
        flow.log_prob(np.zeros((3, 3), np.float32))
    # sample(2.7) gave 2 samples; -1 and "3" failed in TensorFlow's ops.
    for n in (2.7, -1, "3", True):
        with pytest.raises(ValueError, match=re.escape(f"`n` must be an int >= 0. Received: "
                                                       f"n={n!r}")):
            flow.sample(n)
    assert flow.sample(0).shape == (0, 2) and flow.sample(np.int64(3)).shape == (3, 2)
    assert flow.sample(tf.Variable(2)).shape == (2, 2)
    sample = tf.function(flow.sample, input_signature=[tf.TensorSpec((), tf.int32)])
    assert sample(tf.constant(4)).shape == (4, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="`n` must be an int >= 0"):
        sample(tf.constant(-1))


def eight_gaussians_entropy(n=200_000, seed=123):
    """Monte Carlo entropy (nats) of the known 8-gaussians mixture: -E[log p(x)]."""
    x = ki.datasets.toy2d("8gaussians", n, seed=seed).astype(np.float64)
    centers, std = eight_gaussians_centers(), EIGHT_GAUSSIANS_STD
    squared = np.sum((x[:, None, :] - centers[None]) ** 2, axis=-1)
    log_p = logsumexp(-0.5 * squared / std**2, axis=1) - np.log(8 * 2 * np.pi * std**2)
    return -log_p.mean()


@pytest.mark.slow
def test_trained_8gaussians_flow_approaches_the_true_entropy():
    steps, batch = 200, 256
    entropy = eight_gaussians_entropy()
    assert entropy == pytest.approx(2.83, abs=0.01)  # log 8 + log(2 pi e std^2), nearly
    flow = ki.models.ContinuousFlow(hidden_units=(64, 64, 64), trace="exact", rtol=1e-3,
                                    atol=1e-3, seed=0)
    flow.compile(optimizer=keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(1e-2, steps, alpha=0.05)))
    flow.fit(ki.datasets.toy2d("8gaussians", steps * batch, seed=0), batch_size=batch,
             epochs=1, verbose=0, shuffle=False)
    log_prob = tf.function(flow.log_prob, autograph=False)
    test_nll = -np.mean(log_prob(tf.constant(ki.datasets.toy2d("8gaussians", 5000, seed=1))))
    assert entropy <= test_nll + 0.05  # the cross-entropy cannot beat the entropy (3 sigma)
    assert test_nll - entropy < 0.2
    assert grid_mass(log_prob, 6.0, 241) == pytest.approx(1.0, abs=0.02)
