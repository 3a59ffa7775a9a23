"""keras-implicit table1: a tiny run end to end (files, table contents, run.json), argument
errors before anything is created, and the peak-memory meter."""

import csv
import json

import numpy as np
import pytest

from keras_implicit import cli
from keras_implicit.experiments import measure, table1, table1_report


@pytest.fixture
def table1_cli(monkeypatch):
    """The CLI with only this subcommand; run() selects TensorFlow's BFC allocator through
    the environment: keep that out of other tests' subprocesses (TensorFlow has started)."""
    monkeypatch.setattr(cli, "COMMANDS", {"table1": cli.COMMANDS["table1"]})
    monkeypatch.setenv(measure.ALLOCATOR_ENVIRONMENT_VARIABLE, "false")
    return cli.main


def usage_error(main, argv, capsys):
    """The one-line message of a command line that must exit with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(["table1"] + argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("keras-implicit table1: error: "), lines
    return lines[-1]


def test_tiny_run_writes_table(table1_cli, mnist_path, tmp_path, capsys):
    out = tmp_path / "out"
    code = table1_cli(["table1", "--models", "mlp,odenet", "--train-size", "256",
                       "--test-size", "300", "--batch-size", "64", "--eval-batch-size", "300",
                       "--data", mnist_path, "--out", str(out), "--verbose", "0",
                       "--no-block-memory"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "208,266 parameters" in printed and "238,510 parameters" in printed
    assert (out / "table1.png").stat().st_size > 10_000
    with open(out / "table1.csv") as handle:
        rows = {row["model"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"mlp", "odenet"}
    for row in rows.values():
        # 4 batches per epoch, the first (tracing) not measured.
        assert row["test_images"] == "300" and row["measured_steps"] == "3"
        assert row["epochs"] == "1" and row["block_memory_mb"] == ""
        assert 0.0 <= float(row["test_error_pct"]) <= 100.0
        assert float(row["peak_memory_mb"]) > 0 and float(row["time_per_step_ms"]) > 0
    assert rows["mlp"]["params"] == "238510" and rows["odenet"]["params"] == "208266"
    # One epoch on 256 images: the MLP already beats chance (90% error) clearly.
    assert float(rows["mlp"]["test_error_pct"]) < 80.0
    assert rows["mlp"]["nfe_forward"] == "" and rows["mlp"]["gradient"] == "backprop"
    assert rows["odenet"]["gradient"] == "adjoint"
    assert int(rows["odenet"]["nfe_forward"]) >= 8 and int(rows["odenet"]["nfe_backward"]) > 0
    markdown = (out / "table1.md").read_text()
    for text in ("| ODE-Net (adjoint) | 1 |", "| 1-Layer MLP (backprop) | 1 |", "0.42%",
                 "1.60%", "O(1)", "recipe 'quick': Adam, lr 0.001; no augmentation; 256 "
                 "training images, batch 64", "Peak memory: host"):
        assert text in markdown, text
    assert markdown.index("| 1-Layer MLP") < markdown.index("| ODE-Net")
    record = json.loads((out / "run.json").read_text())
    assert record["command"] == "table1"
    assert record["settings"] == {
        "recipe": "quick", "train_size": 256, "test_size": 300, "batch_size": 64,
        "optimizer": "adam", "learning_rate": 0.001, "momentum": None, "lr_decay_epochs": [],
        "lr_decay_factor": 0.1, "augment": False, "rknet_steps": 4, "jit_dynamics": "auto",
        "seed": 0}
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock", "checkpoints", "run.json", "table1.csv", "table1.md", "table1.png"]


def test_load_split_subsets_and_scales(mnist_path):
    (x, y), (xt, yt) = table1.load_split(mnist_path, 100, 50, seed=3)
    assert x.shape == (100, 28, 28, 1) and x.dtype == np.float32 and y.dtype == np.int32
    assert xt.shape == (50, 28, 28, 1) and 0.0 <= x.min() and x.max() <= 1.0
    again = table1.load_split(mnist_path, 100, 50, seed=3)
    np.testing.assert_array_equal(again[0][1], y)
    with pytest.raises(ValueError, match="`--train-size` must be <= 60000.*70000"):
        table1.load_split(mnist_path, 70000, None, seed=0)


@pytest.mark.parametrize("argv, message", [
    (["--models", "mlp,vgg"], "subset of mlp,resnet,rknet,odenet. Received: 'mlp,vgg'"),
    (["--models", "mlp,mlp"], "lists a model twice"),
    (["--epochs", "0"], "argument --epochs: must be an int >= 1. Received: 0"),
    (["--train-size", "ten"], "must be an int >= 1. Received: 'ten'"),
    (["--learning-rate", "-1"], "must be a finite number > 0. Received: -1.0"),
    (["--learning-rate", "inf"], "must be a finite number > 0. Received: 'inf'"),
    (["--momentum", "1"], "argument --momentum: must be a number in [0, 1). Received: 1.0"),
    (["--momentum", "0.5"], "--momentum applies to --optimizer=sgd only"),
    (["--recipe", "paper", "--lr-decay-epochs", "5,5"], "--lr-decay-epochs lists an epoch "
                                                        "twice"),
    (["--lr-decay-epochs", "0"], "must be comma-separated ints >= 1 (or 'none')"),
    (["--recipe", "slow"], "argument --recipe: invalid choice: 'slow'"),
    (["--seed", "-1"], "argument --seed: must be an int in [0, 2147483646]"),
    (["--train-size", "100", "--batch-size", "64"], "needs two full training batches"),
    (["--train-size", "70000"], "`--train-size` must be <= 60000"),
])
def test_bad_arguments_exit_2_before_anything_is_created(table1_cli, mnist_path, tmp_path,
                                                         capsys, argv, message):
    out = tmp_path / "out"
    error = usage_error(table1_cli, argv + ["--data", mnist_path, "--out", str(out)], capsys)
    assert message in error, error
    assert not out.exists()


def test_bad_data_and_out_paths(table1_cli, mnist_path, tmp_path, capsys):
    error = usage_error(table1_cli, ["--data", str(tmp_path / "absent"),
                                     "--out", str(tmp_path / "out")], capsys)
    assert "no such file or directory" in error.lower()
    (tmp_path / "results.txt").write_text("mine")
    error = usage_error(table1_cli, ["--data", mnist_path, "--out",
                                     str(tmp_path / "results.txt")], capsys)
    assert "--out must be a directory, and a file exists there" in error
    error = usage_error(table1_cli, ["--data", mnist_path, "--out",
                                     str(tmp_path / "results.txt" / "sub")], capsys)
    assert "is a file, not a directory" in error
    assert (tmp_path / "results.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]


def test_a_failed_download_is_a_usage_error(table1_cli, tmp_path, capsys, monkeypatch):
    from keras_implicit.datasets import mnist

    def offline(path=None):
        raise Exception("URL fetch failure on https://storage.googleapis.com/mnist.npz")

    monkeypatch.setattr(mnist, "load_data", offline)
    error = usage_error(table1_cli, ["--out", str(tmp_path / "out")], capsys)
    assert "could not load MNIST (Exception: URL fetch failure" in error
    assert "pass --data or set $KERAS_IMPLICIT_DATA" in error
    assert not (tmp_path / "out").exists()


def test_ctrl_c_ends_with_a_line_not_a_traceback(table1_cli, mnist_path, tmp_path, capsys,
                                                 monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(table1, "run", interrupted)
    code = table1_cli(["table1", "--data", mnist_path, "--out", str(tmp_path / "out"),
                       "--train-size", "256", "--test-size", "100"])
    assert code == 130
    assert capsys.readouterr().err.strip() == (
        "keras-implicit table1: interrupted. Rerun the same command to resume after the last "
        "finished epoch.")


def test_results_without_run_json_are_not_overwritten(table1_cli, mnist_path, tmp_path,
                                                      capsys):
    """An --out holding an older version's table (no run.json) is refused, not trained over."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "table1.csv").write_text("an earlier table\n")
    error = usage_error(table1_cli, ["--data", mnist_path, "--out", str(out)], capsys)
    assert "without a readable run.json" in error and "Pass --overwrite" in error
    assert (out / "table1.csv").read_text() == "an earlier table\n"


def test_memory_meter_sees_a_large_allocation():
    """Whatever method is available, a 64 MB temporary shows as at least 64 MB."""
    import tensorflow as tf

    meter = measure.StepMemoryMeter()

    def allocate():
        x = tf.ones([16 * 2**20], tf.float32) * 2.0
        return float(tf.reduce_sum(x))

    assert meter.measure(allocate) >= 64 * 2**20
    assert meter.description == measure.DESCRIPTIONS[meter.method]
    with pytest.raises(ValueError, match="Unknown `method`.*Received: method='disk'"):
        measure.StepMemoryMeter("disk")
    with pytest.raises(ValueError, match="`repeats` must be an int >= 1"):
        measure.median_seconds(lambda: None, 0)


def report_settings(**changes):
    settings = {"recipe": "quick", "training": "Adam, lr 0.001; no augmentation",
                "train_size": 10, "test_size": 10, "batch_size": 5, "seed": 0,
                "memory_method": "rss", "memory_description": measure.DESCRIPTIONS["rss"],
                "device": "CPU (2 cores)", "tensorflow": "x", "wall_seconds": 3.0}
    return {**settings, **changes}


def test_markdown_shows_dashes_without_solver_and_the_block_memory():
    rows = [{"model": "resnet", "epochs": 3, "test_error_pct": 1.0, "params": 576778,
             "peak_memory_mb": 12.5, "time_per_step_ms": 30.0, "measured_steps": 4,
             "nfe_forward": "", "nfe_backward": "", "gradient": "backprop", "test_images": 10,
             "train_seconds": 1.0, "block_memory_mb": 4.37, "block_memory_x4_mb": 14.97,
             "block_memory_growth": 3.43, "block_scaled": "blocks x4"}]
    text = table1_report.markdown(rows, report_settings())
    assert text.split("\n")[2] == (
        "| ResNet (backprop) | 3 | 1.00% | 0.577M | 12.5 MB | 4.4 MB, x3.43 at blocks x4 "
        "| 30 ms | - | - | 0.41% | 0.60M | O(L) |")
    assert "compiled by XLA" not in text
    assert "seed 0; ODE dynamics compiled by XLA (jit_dynamics=True);" in \
        table1_report.markdown(rows, report_settings(jit_dynamics=True))
    assert "seed 0; jit_dynamics='auto' (XLA compiles the convolutional ODE dynamics " \
        "alone);" in table1_report.markdown(rows, report_settings(jit_dynamics="auto"))
    rows[0].update(block_memory_mb="", peak_memory_mb="", time_per_step_ms="")
    assert "| ResNet (backprop) | 3 | 1.00% | 0.577M | - MB | - | - ms |" in \
        table1_report.markdown(rows, report_settings())
