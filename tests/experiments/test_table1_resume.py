"""table1 --out: a run continued with a larger --epochs trains only the missing epochs and
ends with the weights of an uninterrupted run; a rerun with other settings is refused and
leaves the earlier results untouched; the block-memory column shows O(L) against O(1)."""

import concurrent.futures
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_implicit import cli
from keras_implicit.experiments import block_memory, measure, table1_training


@pytest.fixture
def run_table1(monkeypatch, mnist_path):
    """Runs ``keras-implicit table1`` in this process; returns the epochs it trained."""
    monkeypatch.setattr(cli, "COMMANDS", {"table1": cli.COMMANDS["table1"]})
    monkeypatch.setenv(measure.ALLOCATOR_ENVIRONMENT_VARIABLE, "false")
    trained = []
    real_train_epoch = table1_training.ModelTraining.train_epoch

    def spy(self, *args, **kwargs):
        trained.append((self.kind, self.epochs_done + 1))
        return real_train_epoch(self, *args, **kwargs)

    monkeypatch.setattr(table1_training.ModelTraining, "train_epoch", spy)

    def run(out, *argv):
        trained.clear()
        # The paper recipe (SGD with momentum, crops) with the learning rate divided at
        # epoch 1, so that the resumed epoch also crosses the schedule's step.
        assert cli.main(["table1", "--recipe", "paper", "--lr-decay-epochs", "1",
                         "--models", "mlp", "--train-size", "384", "--test-size", "100",
                         "--data", mnist_path, "--out", str(out), "--verbose", "0",
                         "--no-block-memory", *argv]) == 0
        return list(trained)

    return run


def checkpoint_values(out, kind="mlp"):
    reader = tf.train.load_checkpoint(os.path.join(out, "checkpoints", kind))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith(("model/", "optimizer/", "epoch/"))}


def snapshot(directory):
    return {os.path.relpath(os.path.join(root, name), directory):
            open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(directory) for name in names}


def test_resumed_run_equals_an_uninterrupted_one(run_table1, tmp_path):
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    assert run_table1(resumed, "--epochs", "1") == [("mlp", 1)]
    table_after_one = (resumed / "table1.csv").read_text()
    assert "mlp,1," in table_after_one  # the partial table, written after the epoch
    first_epoch = table1_training.read_progress(str(resumed), "mlp")["epochs"][0]

    assert run_table1(resumed, "--epochs", "2") == [("mlp", 2)]  # one more epoch only
    assert run_table1(straight, "--epochs", "2") == [("mlp", 1), ("mlp", 2)]
    a, b = checkpoint_values(resumed), checkpoint_values(straight)
    assert sorted(a) == sorted(b) and len(a) > 8
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert int(a["epoch/.ATTRIBUTES/VARIABLE_VALUE"]) == 2
    progress = table1_training.read_progress(str(resumed), "mlp")
    assert progress["epochs"][0] == first_epoch
    assert [e["learning_rate"] for e in progress["epochs"]] == pytest.approx([0.1, 0.01])
    assert progress["epochs"][1]["test_error_pct"] == \
        table1_training.read_progress(str(straight), "mlp")["epochs"][1]["test_error_pct"]

    # Finished: the same command (even with other --verbose) trains nothing.
    assert run_table1(resumed, "--epochs", "2", "--verbose", "2") == []
    assert run_table1(resumed, "--epochs", "1") == []
    np.testing.assert_array_equal(checkpoint_values(resumed)["epoch/.ATTRIBUTES/VARIABLE_VALUE"],
                                  2)


def test_resume_drops_progress_beyond_the_checkpoint(run_table1, tmp_path):
    """A crash between saving the checkpoint and progress.json: the checkpoint wins."""
    out = tmp_path / "out"
    run_table1(out, "--epochs", "1")
    progress = table1_training.read_progress(str(out), "mlp")
    progress["epochs"].append(dict(progress["epochs"][0], epoch=2))  # not in any checkpoint
    table1_training.write_progress(str(out), "mlp", progress)
    assert run_table1(out, "--epochs", "2") == [("mlp", 2)]
    assert [e["epoch"] for e in table1_training.read_progress(str(out), "mlp")["epochs"]] == \
        [1, 2]


def test_rerun_with_other_settings_is_refused_and_leaves_results(run_table1, tmp_path,
                                                                 capsys):
    out = tmp_path / "out"
    run_table1(out, "--epochs", "1")
    before = snapshot(out)
    with pytest.raises(SystemExit) as exit_info:
        run_table1(out, "--epochs", "1", "--learning-rate", "0.05", "--no-augment")
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("keras-implicit table1: error: --out ")
    assert ("holds results of other settings (augment: True there, False here; "
            "learning_rate: 0.1 there, 0.05 here). Pass --overwrite to discard them") in error
    assert snapshot(out) == before

    # --overwrite starts over with the new settings.
    assert run_table1(out, "--epochs", "1", "--learning-rate", "0.05", "--overwrite") == \
        [("mlp", 1)]
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["learning_rate"] == 0.05
    progress = table1_training.read_progress(str(out), "mlp")
    assert [e["learning_rate"] for e in progress["epochs"]] == pytest.approx([0.05])


@pytest.mark.slow
def test_block_memory_grows_with_resnet_depth_but_not_with_the_ode_interval():
    """Measured in subprocesses (the allocator statistics must be on before TensorFlow
    starts); ratios, not bytes. The adjoint ODE-Net takes more steps over [0, 4] than
    over [0, 1] but holds no more memory; four times the ResNet blocks hold about four
    times the activations."""
    # Uncompiled: XLA's compilation of the dynamics would add 15 s and not change the ratios.
    # Batch 32: the blocks' activations outweigh the allocator's fixed overheads more than at
    # 8 (same run time).
    settings = {"batch_size": 32, "rknet_steps": 4, "jit_dynamics": False}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        resnet, odenet = pool.map(lambda kind: block_memory.measure_in_subprocess(kind, settings),
                                  ("resnet", "odenet"))
    for summary in (resnet, odenet):
        assert summary["method"] == "cpu_allocator"
        assert summary["block_memory_mb"] > 0
    assert resnet["scaled"] == "blocks x4" and odenet["scaled"] == "integration interval x4"
    assert resnet["growth"] > 2.5, resnet
    # The adjoint's peak does not grow with the interval, but it is noisy: 1.02-1.24 alone
    # (batch 8 and 32, three runs each), 1.44 once under the full suite on 2 cores. Four
    # times the ResNet's blocks give > 2.5.
    assert odenet["growth"] < 1.6, odenet
    nfe = {scale: odenet["measurements"][scale]["nfe_forward"] for scale in ("1", "4")}
    assert nfe["4"] > nfe["1"], nfe  # more work over the longer interval
