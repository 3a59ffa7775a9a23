"""LatentODE: numerics against exact answers, batch = one by one, ELBO terms, Keras contract."""

import json
import math

import keras
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

import keras_implicit as ki
from keras_implicit.models.latent_ode_parts import ODEGRUCell

NAN = float("nan")


def irregular_batch():
    """Three samples: different observed times and counts, holes in the mask, NaN where
    unobserved, unobserved entries that ask for interpolation / extrapolation."""
    times = np.array([[0.0, 0.3, 0.3, 0.9, 1.4, 2.5],
                      [0.2, 0.5, 0.7, 1.1, 1.6, 2.0],
                      [0.45, 0.0, 1.2, 0.0, 0.0, 0.0]])
    mask = np.array([[1, 1, 0, 1, 1, 0],
                     [1, 1, 1, 1, 1, 1],
                     [1, 0, 0, 0, 0, 0]], dtype="float64")
    rng = np.random.default_rng(1)
    observations = rng.normal(size=(3, 6, 2))
    observations[mask == 0] = NAN
    return {"observations": observations, "times": times, "mask": mask}


def take(x, rows, cols=None):
    out = {k: v[rows] for k, v in x.items()}
    if cols is not None:
        out = {k: v[:, cols] for k, v in out.items()}
    return out


def graph(fn, dtype=tf.float64):
    """``fn(inputs)`` traced once for any batch size and length (eager solves are slow)."""
    spec = {"observations": tf.TensorSpec((None, None, 2), dtype),
            "times": tf.TensorSpec((None, None), dtype),
            "mask": tf.TensorSpec((None, None), dtype)}
    traced = tf.function(fn, input_signature=[spec])
    return lambda x: tf.nest.map_structure(lambda v: v.numpy(), traced(x))


def tight_model(**kwargs):
    options = dict(obs_dim=2, latent_dim=3, hidden_units=8, rtol=1e-10, atol=1e-10,
                   dtype="float64")
    options.update(kwargs)
    model = ki.models.LatentODE(**options)
    model.build()
    return model


def test_decode_matches_matrix_exponential_at_unsorted_per_sample_times():
    # dz/dt = z W, so z(t) = z0 expm(W t); times unsorted, repeated, at t0, per sample.
    model = tight_model(dynamics=keras.layers.Dense(3, use_bias=False, dtype="float64"))
    w = np.array([[-0.3, 1.0, 0.0], [-1.0, -0.2, 0.5], [0.0, -0.5, 0.1]])
    model.latent_ode.dynamics.kernel.assign(w)
    z0 = np.array([[1.0, 0.0, -0.5], [0.2, 0.3, 0.4]])
    times = np.array([[1.5, 0.0, 0.7, 0.7, 3.0], [0.1, 2.2, 0.0, 1.5, 0.35]])
    decode = tf.function(model.decode)
    got = decode(tf.constant(z0), tf.constant(times)).numpy()
    exact_z = np.stack([[z0[b] @ scipy.linalg.expm(w * t) for t in times[b]] for b in range(2)])
    want = model.decoder(tf.constant(exact_z)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-8)
    # A batch asking only for t0 (one distinct time) decodes z0 itself.
    at_t0 = decode(tf.constant(z0), tf.zeros((2, 2), tf.float64)).numpy()
    want_t0 = model.decoder(tf.constant(np.repeat(z0[:, None], 2, axis=1))).numpy()
    np.testing.assert_allclose(at_t0, want_t0, rtol=0, atol=1e-12)


def test_batch_equals_one_by_one_gru():
    x = irregular_batch()
    model = tight_model()
    predict = graph(model)
    batched = predict(x)
    assert np.all(np.isfinite(batched))
    for b in range(3):
        alone = predict(take(x, [b]))[0]
        np.testing.assert_allclose(alone, batched[b], rtol=0, atol=1e-7)
        observed = np.flatnonzero(x["mask"][b])  # no padding at all
        trimmed = predict(take(x, [b], observed))[0]
        np.testing.assert_allclose(trimmed, batched[b, observed], rtol=0, atol=1e-7)
    # The posterior itself does not depend on the batch or the padding (no ODE solve: exact).
    mean, log_var = model.encode(x)
    mean_1, log_var_1 = model.encode(take(x, [2], [0]))
    np.testing.assert_allclose(mean_1[0], mean[2], rtol=0, atol=1e-12)
    np.testing.assert_allclose(log_var_1[0], log_var[2], rtol=0, atol=1e-12)


def test_ode_gru_cell_evolves_like_odeint_in_real_time():
    cell = ODEGRUCell(4, solver="dopri5", rtol=1e-9, atol=1e-9, dtype="float64")
    cell.build((None, 3))
    h = tf.constant(np.random.default_rng(2).normal(size=(2, 4)))
    evolved = cell.evolve(h, tf.constant([[-0.7], [0.4]], tf.float64)).numpy()
    f = lambda t, y: cell.dynamics(y)  # noqa: E731
    back = ki.ops.odeint(f, h[:1], tf.constant([1.0, 0.3], tf.float64), rtol=1e-9,
                         atol=1e-9).states[-1]
    forward = ki.ops.odeint(f, h[1:], tf.constant([0.0, 0.4], tf.float64), rtol=1e-9,
                            atol=1e-9).states[-1]
    np.testing.assert_allclose(evolved, np.concatenate([back, forward]), atol=1e-7)


def test_ode_rnn_batch_equals_one_by_one_and_rubanova_recursion():
    x = irregular_batch()
    model = tight_model(encoder="ode_rnn", encoder_solver="rk4", encoder_num_steps=3)
    encode = graph(model.encode)
    mean, log_var = encode(x)
    for b in range(3):
        observed = np.flatnonzero(x["mask"][b])
        mean_b, log_var_b = encode(take(x, [b], observed))
        np.testing.assert_allclose(mean_b[0], mean[b], rtol=0, atol=1e-10)
        np.testing.assert_allclose(log_var_b[0], log_var[b], rtol=0, atol=1e-10)
    # h = 0 at the last observation; going back: evolve by the ODE to the earlier time,
    # GRU update; at the end evolve to t0 (Rubanova et al. 2019, run backwards).
    times, obs = x["times"][0][x["mask"][0] == 1], x["observations"][0][x["mask"][0] == 1]
    cell = model.encoder.cell
    h = tf.zeros((1, 8), tf.float64)
    later = times[-1]
    for t_i, x_i in zip(times[::-1], obs[::-1]):
        h = cell.evolve(h, tf.constant([[t_i - later]], tf.float64))
        h = cell.gru_cell(tf.constant(x_i[None]), [h])[0]
        later = t_i
    h = cell.evolve(h, tf.constant([[0.0 - times[0]]], tf.float64))
    want = model.encoder.head(h).numpy()[0]
    np.testing.assert_allclose(np.concatenate([mean[0], log_var[0]]), want, atol=1e-12)


def test_elbo_terms_are_the_gaussian_nll_and_kl():
    x = irregular_batch()
    model = tight_model(observation_std=0.3, learn_observation_std=True, solver="bosh3",
                        rtol=1e-3, atol=1e-3)
    assert any(w is model.log_observation_std for w in model.trainable_weights)
    reconstruction, kl = (v.numpy() for v in model.elbo_terms(x, training=False))
    predicted = model(x).numpy()
    mean, log_var = (v.numpy() for v in model.encode(x))
    observed = x["mask"] == 1
    sq = np.where(observed[..., None], (x["observations"] - predicted) ** 2, 0.0)
    nll = (sq / (2 * 0.09) + observed[..., None] * (math.log(0.3) + 0.5 * math.log(2 * math.pi)))
    np.testing.assert_allclose(reconstruction, nll.sum(axis=(1, 2)), rtol=1e-10)
    np.testing.assert_allclose(kl, 0.5 * (mean ** 2 + np.exp(log_var) - 1 - log_var).sum(1),
                               rtol=1e-10)
    # NaN at unobserved entries reaches neither the loss nor its gradient.
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model.elbo_terms(x, training=True)[0])
    grads = tape.gradient(loss, model.trainable_weights)
    assert all(np.all(np.isfinite(g)) for g in grads if g is not None)


def test_samples_concentrate_on_the_mean_path_and_call_extrapolates_the_same():
    x = irregular_batch()
    model = tight_model(rtol=1e-7, atol=1e-7)
    query = np.array([[0.0, 0.6, 2.0, 4.0, 1.0], [3.0, 0.1, 0.1, 0.0, 2.5],
                      [1.0, 2.0, 3.0, 4.0, 5.0]])
    spread = model.sample_trajectories(x, query, num_samples=4).numpy()
    assert spread.shape == (4, 3, 5, 2) and np.std(spread, axis=0).min() > 0
    # Collapse q(z_t0 | x) onto its mean: the samples must then be the mean path, which
    # the call path gives at unobserved (mask 0) entries.
    kernel, bias = model.encoder.head.kernel, model.encoder.head.bias
    kernel.assign(np.concatenate([kernel.numpy()[:, :3], np.zeros((8, 3))], axis=1))
    bias.assign(np.concatenate([bias.numpy()[:3], np.full(3, -60.0)]))
    samples = model.sample_trajectories(x, query, num_samples=2).numpy()
    extended = {"observations": np.concatenate([x["observations"], np.zeros((3, 5, 2))], 1),
                "times": np.concatenate([x["times"], query], 1),
                "mask": np.concatenate([x["mask"], np.zeros((3, 5))], 1)}
    mean_path = graph(model)(extended)[:, 6:]
    np.testing.assert_allclose(samples[0], mean_path, atol=1e-5)
    np.testing.assert_allclose(samples[1], mean_path, atol=1e-5)
    np.testing.assert_allclose(samples[0], samples[1], atol=1e-12)


def test_fit_logs_negative_elbo_reconstruction_kl_and_solver_stats():
    data = ki.datasets.spirals(16, num_points=20, seed=0, min_observations=3,
                               max_observations=6)
    x = {k: data[k] for k in ("observations", "times", "mask")}
    model = ki.models.LatentODE(2, 2, 8, kl_weight=0.5, seed=1, solver="bosh3",
                                gradient="backprop")
    model.compile(keras.optimizers.Adam(1e-2))
    history = model.fit(x, batch_size=8, epochs=1, verbose=0,
                        callbacks=[ki.callbacks.SolverStats()]).history
    loss, rec, kl = history["loss"][-1], history["reconstruction"][-1], history["kl"][-1]
    assert np.isfinite(loss) and kl > 0
    np.testing.assert_allclose(loss, rec + 0.5 * kl, rtol=1e-5)
    assert history["latent_ode/nfe_forward"][-1] > 0


def test_keras_round_trip_and_config(tmp_path):
    x = irregular_batch()
    for kwargs in (dict(dynamics=keras.layers.Dense(3, activation="tanh", dtype="float64"),
                        learn_observation_std=True, kl_weight=0.2),
                   dict(encoder="ode_rnn", encoder_solver="euler", encoder_num_steps=1)):
        model = tight_model(solver="rk4", num_steps=10, **kwargs)
        model.log_observation_std.assign([0.1, -0.2])
        want = model(x).numpy()
        path = str(tmp_path / f"latent_{kwargs.get('encoder', 'gru')}.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert as_json(loaded.get_config()) == as_json(model.get_config())
        np.testing.assert_allclose(loaded(x).numpy(), want, atol=1e-12)
        np.testing.assert_allclose(loaded.observation_std, np.exp([0.1, -0.2]), atol=1e-12)
        assert all(w.dtype == "float64" for w in loaded.weights if w.dtype != "int32")
        for layer in (model, model.encoder, getattr(model.encoder, "cell", model.encoder)):
            clone = type(layer).from_config(layer.get_config())
            assert as_json(clone.get_config()) == as_json(layer.get_config())


def test_saved_model_export_of_the_prediction_path(tmp_path):
    x = irregular_batch()
    x = {k: v.astype("float32") for k, v in x.items()}
    model = ki.models.LatentODE(2, 3, 8, solver="bosh3", gradient="backprop")
    model(take(x, [0, 1], [0, 1, 2]))  # first call with other shapes than the exported ones
    model.export(str(tmp_path / "saved"), verbose=False)
    restored = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(restored.serve(x).numpy(), model(x).numpy(), atol=1e-5)
    bad = dict(x, times=x["times"][:, ::-1].copy())  # decreasing: checked inside the graph
    with pytest.raises(tf.errors.InvalidArgumentError, match="strictly increasing"):
        restored.serve(bad)


def as_json(config):
    return json.loads(json.dumps(config))


def _bad(**changes):
    x = irregular_batch()
    x.update(changes)
    return x


BAD_INPUTS = [
    (_bad(times=np.array([[0.0, 0.3, 0.3, 0.2, 1.4, 2.5]] * 3)),
     r"strictly increasing.*times\[0\]"),
    (_bad(mask=np.ones((3, 5))), r"`mask` must have shape \(batch, T\).*mask.shape=\(3, 5\)"),
    (_bad(mask=np.ones((3, 6, 2))), r"mask.shape=\(3, 6, 2\)"),
    (_bad(times=np.zeros((3, 6, 1))), r"`times` must have shape.*times.shape=\(3, 6, 1\)"),
    (_bad(observations=np.zeros((3, 6, 3))), r"obs_dim=2.*observations.shape=\(3, 6, 3\)"),
    ({"observations": np.zeros((2, 0, 2)), "times": np.zeros((2, 0)), "mask": np.zeros((2, 0))},
     r"empty sequence.*observations.shape=\(2, 0, 2\)"),
    (_bad(mask=np.array([[1, 0, 0, 0, 0, 0], [0] * 6, [1] * 6])), r"sample 1 has none"),
    (_bad(times=np.full((3, 6), -1.0)), r"times\[0, 0\]=-1.0"),
    (_bad(times=np.full((3, 6), NAN)), r"finite and >= t0"),
    ({"observations": np.zeros((1, 2, 2)), "times": np.zeros((1, 2))},
     r"keys.*'observations', 'times'"),
]


def test_bad_inputs_are_named():
    model = ki.models.LatentODE(2, 3, 8, dtype="float64")
    for inputs, match in BAD_INPUTS:  # one model for all cases: each raises before solving
        with pytest.raises(ValueError, match=match):
            model(inputs)


def test_bad_query_times_and_training_data():
    x = irregular_batch()
    model = ki.models.LatentODE(2, 3, 8, dtype="float64")
    with pytest.raises(ValueError, match=r"times\[1, 0\]=-0.5"):
        model.sample_trajectories(x, np.array([[0.0, 1.0], [-0.5, 1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="num_samples"):
        model.sample_trajectories(x, np.array([1.0]), num_samples=0)
    with pytest.raises(ValueError, match=r"T >= 1.*times.shape=\(0,\)"):
        model.predict_trajectories(x, np.zeros((0,)))
    model.compile("adam")
    with pytest.raises(ValueError, match="no y"):
        model.fit(x, np.zeros((3, 1)), verbose=0)


BAD_ARGUMENTS = [
    (dict(obs_dim=0), "obs_dim=0"),
    (dict(latent_dim=2.5), "latent_dim=2.5"),
    (dict(encoder="lstm"), "encoder='lstm'"),
    (dict(observation_std=0.0), "observation_std=0.0"),
    (dict(kl_weight=-1), "kl_weight=-1"),
    (dict(t0="zero"), "t0='zero'"),
    (dict(solver="nope"), "solver='nope'"),
    (dict(encoder="ode_rnn", encoder_solver="bdf"), "encoder_solver='bdf'"),
    (dict(encoder="ode_rnn", encoder_num_steps=0), "encoder_num_steps=0"),
    (dict(encoder_num_steps=2.5), "encoder_num_steps=2.5"),  # GRU: it was kept unchecked
]


def test_bad_constructor_arguments_are_named():
    for kwargs, match in BAD_ARGUMENTS:
        options = dict(obs_dim=2, latent_dim=3, hidden_units=8)
        options.update(kwargs)
        with pytest.raises(ValueError, match=match):
            ki.models.LatentODE(**options)


def test_an_empty_batch_gives_an_empty_prediction():
    """The union of an empty batch's times is empty: indexing its first entry failed, as
    NeuralODE's empty batch does not."""
    model = ki.models.LatentODE(obs_dim=2, latent_dim=4, hidden_units=8)
    empty = {"observations": np.zeros((0, 5, 2), "float32"),
             "times": np.zeros((0, 5), "float32"), "mask": np.zeros((0, 5), "float32")}
    assert model(empty).shape == (0, 5, 2)
    assert tf.function(model)(empty).shape == (0, 5, 2)
