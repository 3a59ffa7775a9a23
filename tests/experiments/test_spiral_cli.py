"""``keras-implicit spiral``: trains, beats the dynamics-free baselines, writes the figures."""

import json

import numpy as np
import pytest

from keras_implicit import cli
from keras_implicit.experiments.spiral import last_velocity_extrapolation


@pytest.fixture
def spiral_only(monkeypatch):
    """The CLI with only this subcommand (the others import their own experiments)."""
    monkeypatch.setattr(cli, "COMMANDS", {"spiral": cli.COMMANDS["spiral"]})
    return cli.main


def test_last_velocity_baseline_is_exact_on_straight_lines():
    times = np.array([[0.0, 0.5, 1.0, 1.0], [0.2, 0.4, 0.4, 0.4]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    velocity = np.array([[1.0, -2.0], [0.5, 3.0]])
    observations = velocity[:, None, :] * times[..., None] + 1.0
    query = np.array([1.5, 3.0])
    got = last_velocity_extrapolation(observations, times, mask, query)
    np.testing.assert_allclose(got, velocity[:, None, :] * query[None, :, None] + 1.0)


@pytest.mark.parametrize("argv, match", [
    (["--steps", "0"], "--steps=0"),
    (["--batch-size", "-1"], "--batch-size=-1"),
    (["--learning-rate", "0"], "--learning-rate=0"),
])
def test_bad_flags_are_named(spiral_only, tmp_path, argv, match):
    with pytest.raises(ValueError, match=match):
        spiral_only(["spiral", "--out", str(tmp_path)] + argv)


@pytest.mark.slow
def test_trains_beats_baselines_and_writes_figures(spiral_only, tmp_path):
    out = tmp_path / "run"
    code = spiral_only(["spiral", "--steps", "300", "--batch-size", "32", "--train-size", "512",
                        "--test-size", "64", "--out", str(out)])
    assert code == 0
    for name in ("reconstruction.png", "latent_traversal.png", "training.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    print(json.dumps(metrics, indent=1))
    extrapolation = metrics["extrapolation_rmse"]
    assert extrapolation["model"] < extrapolation["last_velocity"]
    assert extrapolation["model"] < extrapolation["last_value"]
    assert metrics["interpolation_rmse"]["model"] < extrapolation["model"]
    elbo = metrics["test_negative_elbo"]
    assert elbo["after"] < 0.05 * elbo["before"]
    assert metrics["train"]["loss_last"] < 0.2 * metrics["train"]["loss_first"]
