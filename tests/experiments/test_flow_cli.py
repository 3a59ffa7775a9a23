"""``keras-implicit flow``: trains with fit, writes the figure, the metrics and the model."""

import json

import matplotlib.image
import numpy as np
import pytest

from keras_implicit import cli
from keras_implicit.datasets.toy2d import NAMES
from keras_implicit.experiments import flow2d


@pytest.fixture
def flow_only(monkeypatch):
    """The CLI with only this subcommand (the others import their own experiments)."""
    monkeypatch.setattr(cli, "COMMANDS", {"flow": cli.COMMANDS["flow"]})
    return cli.main


def test_dataset_choices_are_the_toy_densities():
    assert set(flow2d.DATASETS) == set(NAMES)


@pytest.mark.parametrize("argv, match", [
    (["--steps", "0"], "--steps=0"),
    (["--batch-size", "-1"], "--batch-size=-1"),
    (["--rtol", "0"], "--rtol=0"),
    (["--kinetic-weight", "-0.5"], "--kinetic-weight=-0.5"),
    (["--hidden", "64,x"], "--hidden='64,x'"),
])
def test_bad_flags_are_named(flow_only, tmp_path, argv, match):
    with pytest.raises(ValueError, match=match):
        flow_only(["flow", "--out", str(tmp_path)] + argv)


def test_trains_and_writes_figure_metrics_and_model(flow_only, tmp_path, capsys):
    out = tmp_path / "pinwheel"
    code = flow_only(["flow", "--dataset", "pinwheel", "--steps", "3", "--out", str(out),
                      "--batch-size", "64", "--solver", "rk4", "--num-steps", "3",
                      "--hidden", "8,8", "--test-size", "300", "--grid", "24",
                      "--kinetic-weight", "0.01", "--verbose", "0"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "pinwheel" and metrics["steps"] == 3
    assert np.isfinite(metrics["test_nll"])
    assert metrics["test_bits_per_dim"] == pytest.approx(metrics["test_nll"] / (2 * np.log(2)))
    assert metrics["nfe_forward"] == 12  # three RK4 steps of four stages
    assert f"{metrics['test_nll']:.4f} nats" in capsys.readouterr().out
    image = matplotlib.image.imread(out / "flow2d.png")
    assert image.shape[0] > 100 and image.shape[1] > 2.5 * image.shape[0]  # three panels
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert (out / "flow.keras").stat().st_size > 0
