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


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "argument --steps: must be an int >= 1. Received: 0"),
    (["--batch-size", "-1"], "argument --batch-size: must be an int >= 1. Received: -1"),
    (["--learning-rate", "0"], "argument --learning-rate: must be a finite number > 0"),
    (["--noise", "inf"], "argument --noise: must be a finite number >= 0. Received: 'inf'"),
    (["--num-points", "1"], "argument --num-points: must be an int in [2, 100000]"),
    (["--solver", "bogus"], "--solver: Unknown ODE solver. Valid names: ["),
    (["--solver", "rk4"], "The fixed-grid solver 'rk4' needs `num_steps`"),
    (["--seed", "-3"], "argument --seed: must be an int in [0, 2147483646]. Received: -3"),
])
def test_bad_flags_exit_2_with_one_line_and_create_nothing(spiral_only, tmp_path, capsys,
                                                           argv, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        spiral_only(["spiral", "--out", str(out)] + argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("keras-implicit spiral: error: ") and message in error, error
    assert not out.exists()


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
    assert metrics["settings"] == json.loads((out / "run.json").read_text())["settings"]
    extrapolation = metrics["extrapolation_rmse"]
    assert extrapolation["model"] < extrapolation["last_velocity"]
    assert extrapolation["model"] < extrapolation["last_value"]
    assert metrics["interpolation_rmse"]["model"] < extrapolation["model"]
    elbo = metrics["test_negative_elbo"]
    assert elbo["after"] < 0.05 * elbo["before"]
    assert metrics["train"]["loss_last"] < 0.2 * metrics["train"]["loss_first"]


def test_a_tiny_run_writes_its_files_and_refuses_other_settings(spiral_only, tmp_path):
    out = tmp_path / "run"
    argv = ["spiral", "--steps", "2", "--batch-size", "8", "--train-size", "16",
            "--test-size", "4", "--num-points", "12", "--hidden-units", "8", "--out", str(out)]
    assert spiral_only(argv) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [".lock", "latent_traversal.png", "metrics.json", "reconstruction.png",
                     "run.json", "training.png"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"] == json.loads((out / "run.json").read_text())["settings"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit) as exit_info:  # other settings: refused, nothing touched
        spiral_only(argv + ["--noise", "0.2"])
    assert exit_info.value.code == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
