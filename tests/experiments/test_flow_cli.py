"""``keras-implicit flow``: trains with fit, writes the figure, the metrics and the model;
bad flags exit with status 2 and a one-line message before anything is created."""

import functools
import json

import matplotlib.image
import numpy as np
import pytest

from keras_implicit import cli
from keras_implicit.datasets.toy2d import NAMES
from keras_implicit.experiments import flow2d

TINY = ["--steps", "3", "--batch-size", "64", "--solver", "rk4", "--num-steps", "3",
        "--hidden", "8,8", "--test-size", "300", "--grid", "24", "--verbose", "0"]


@pytest.fixture
def flow_only(monkeypatch):
    """The CLI with only this subcommand (the others import their own experiments)."""
    monkeypatch.setattr(cli, "COMMANDS", {"flow": cli.COMMANDS["flow"]})
    return cli.main


@pytest.fixture
def uncompiled_flow(monkeypatch):
    """The command's ContinuousFlow with jit_dynamics=False. Under the default 'auto' XLA
    compiles the solves, 14 s of this test's 20 s for three training steps; the compile
    policy has its own tests (tests/ops/test_compile_policy.py)."""
    import keras_implicit as ki

    monkeypatch.setattr(ki.models, "ContinuousFlow",
                        functools.partial(ki.models.ContinuousFlow, jit_dynamics=False))


def test_dataset_choices_are_the_toy_densities():
    assert set(flow2d.DATASETS) == set(NAMES)


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "argument --steps: must be an int >= 1. Received: 0"),
    (["--batch-size", "-1"], "argument --batch-size: must be an int in [1, 200000]. "
                             "Received: -1"),
    (["--rtol", "0"], "argument --rtol: must be a finite number > 0. Received: 0.0"),
    (["--atol", "nan"], "argument --atol: must be a finite number > 0. Received: 'nan'"),
    (["--kinetic-weight", "-0.5"], "argument --kinetic-weight: must be a finite number >= 0. "
                                   "Received: -0.5"),
    (["--hidden", "64,x"], "argument --hidden: must be comma-separated ints >= 1"),
    (["--solver", "bogus"], "--solver: Unknown ODE solver. Valid names: ["),
    (["--solver", "dopri5", "--num-steps", "4"], "--num-steps applies to fixed-grid solvers"),
    (["--solver", "rk4"], "The fixed-grid solver 'rk4' needs `num_steps`"),
    (["--solver", "bdf", "--gradient", "backprop"], "cannot be differentiated through"),
])
def test_bad_flags_exit_2_with_one_line_and_create_nothing(flow_only, tmp_path, capsys, argv,
                                                           message):
    out = tmp_path / "new" / "out"
    with pytest.raises(SystemExit) as exit_info:
        flow_only(["flow", "--out", str(out)] + argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("keras-implicit flow: error: ") and message in error, error
    assert not (tmp_path / "new").exists()


def test_out_must_be_a_writable_directory(flow_only, tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    for out, message in ((tmp_path / "file", "a file exists there"),
                         (tmp_path / "file" / "sub", "is a file, not a directory"),
                         ("", "--out must name a directory")):
        with pytest.raises(SystemExit) as exit_info:
            flow_only(["flow", "--out", str(out)])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "mine"


def test_an_unwritable_out_is_refused(flow_only, tmp_path, capsys, monkeypatch):
    from keras_implicit.experiments import arguments

    # Tests may run as root, for whom every directory is writable: simulate a read-only one.
    monkeypatch.setattr(arguments.os, "access", lambda path, mode: False)
    with pytest.raises(SystemExit) as exit_info:
        flow_only(["flow", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert f"--out is not writable: no permission to write in {str(tmp_path)!r}" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_trains_writes_results_and_refuses_other_settings(flow_only, uncompiled_flow, tmp_path,
                                                          capsys):
    out = tmp_path / "pinwheel"
    code = flow_only(["flow", "--dataset", "pinwheel", "--out", str(out),
                      "--kinetic-weight", "0.01"] + TINY)
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
    record = json.loads((out / "run.json").read_text())
    assert record["command"] == "flow" and record["settings"]["kinetic_weight"] == 0.01
    assert "verbose" not in record["settings"] and "out" not in record["settings"]
    assert sorted(p.name for p in out.iterdir()) == [".lock", "flow.keras", "flow2d.png",
                                                     "metrics.json", "run.json"]

    # Other settings into the same --out: refused, the results untouched.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit) as exit_info:
        flow_only(["flow", "--dataset", "moons", "--out", str(out)] + TINY)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "other settings (dataset: 'pinwheel' there, 'moons' here; kinetic_weight: 0.01 " \
           "there, 0.0 here). Pass --overwrite" in error, error
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
