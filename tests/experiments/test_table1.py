"""keras-implicit table1: a tiny run end to end (files, table contents), argument errors,
and the peak-memory meter."""

import argparse
import csv

import numpy as np
import pytest

from keras_implicit.experiments import measure, table1, table1_report


def parse(argv):
    parser = argparse.ArgumentParser(prog="keras-implicit table1")
    table1.add_arguments(parser)
    return parser.parse_args(argv)


def test_tiny_run_writes_table(mnist_path, tmp_path, capsys, monkeypatch):
    # run() selects TensorFlow's BFC allocator through the environment; keep that
    # out of other tests' subprocesses (here TensorFlow has started already).
    monkeypatch.setenv(measure.ALLOCATOR_ENVIRONMENT_VARIABLE, "false")
    out = tmp_path / "out"
    args = parse(["--models", "mlp,odenet", "--train-size", "256", "--test-size", "300",
                  "--epochs", "1", "--batch-size", "64", "--eval-batch-size", "300",
                  "--data", mnist_path, "--out", str(out), "--verbose", "0"])
    assert table1.run(args) == 0
    printed = capsys.readouterr().out
    assert "208,266 parameters" in printed and "238,510 parameters" in printed
    assert (out / "table1.png").stat().st_size > 10_000
    with open(out / "table1.csv") as handle:
        rows = {row["model"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"mlp", "odenet"}
    for row in rows.values():
        assert row["test_images"] == "300" and row["measured_steps"] == "3"
        assert 0.0 <= float(row["test_error_pct"]) <= 100.0
        assert float(row["peak_memory_mb"]) > 0 and float(row["time_per_step_ms"]) > 0
    assert rows["mlp"]["params"] == "238510" and rows["odenet"]["params"] == "208266"
    # One epoch on 256 images: the MLP already beats chance (90% error) clearly.
    assert float(rows["mlp"]["test_error_pct"]) < 80.0
    assert rows["mlp"]["nfe_forward"] == "" and rows["mlp"]["gradient"] == "backprop"
    assert rows["odenet"]["gradient"] == "adjoint"
    assert int(rows["odenet"]["nfe_forward"]) >= 8 and int(rows["odenet"]["nfe_backward"]) > 0
    markdown = (out / "table1.md").read_text()
    for text in ("| ODE-Net (adjoint) |", "| 1-Layer MLP (backprop) |", "0.42%", "1.60%",
                 "O(1)", "256 training images, 1 epoch(s), batch 64", "Peak memory: host"):
        assert text in markdown, text
    assert markdown.index("| 1-Layer MLP") < markdown.index("| ODE-Net")


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
    (["--epochs", "0"], "must be an int >= 1. Received: 0"),
    (["--train-size", "ten"], "must be an int >= 1. Received: 'ten'"),
    (["--learning-rate", "-1"], "must be a number > 0. Received: -1.0"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse(argv)
    assert message in capsys.readouterr().err


def test_run_reports_bad_data_and_budget(mnist_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(measure.ALLOCATOR_ENVIRONMENT_VARIABLE, "false")
    args = parse(["--data", str(tmp_path / "absent"), "--out", str(tmp_path / "out")])
    assert table1.run(args) == 2
    assert "no such file or directory" in capsys.readouterr().err
    args = parse(["--data", mnist_path, "--train-size", "100", "--batch-size", "64",
                  "--out", str(tmp_path / "out")])
    assert table1.run(args) == 2
    assert "needs two full training batches" in capsys.readouterr().err


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


def test_markdown_shows_dashes_without_solver():
    rows = [{"model": "resnet", "test_error_pct": 1.0, "params": 576778, "peak_memory_mb": 12.5,
             "time_per_step_ms": 30.0, "measured_steps": 4, "nfe_forward": "", "nfe_backward": "",
             "gradient": "backprop", "test_images": 10, "fit_seconds": 1.0}]
    settings = {"train_size": 10, "test_size": 10, "epochs": 1, "batch_size": 5,
                "learning_rate": 0.001, "seed": 0, "memory_method": "rss",
                "memory_description": measure.DESCRIPTIONS["rss"], "device": "CPU (2 cores)",
                "tensorflow": "x", "wall_seconds": 3.0}
    line = table1_report.markdown(rows, settings).split("\n")[2]
    assert line == ("| ResNet (backprop) | 1.00% | 0.577M | 12.5 MB | 30 ms | - | - | 0.41% "
                    "| 0.60M | O(L) |")
    assert "compiled by XLA" not in table1_report.markdown(rows, settings)
    settings["jit_dynamics"] = True
    assert "seed 0; ODE dynamics compiled by XLA;" in table1_report.markdown(rows, settings)
