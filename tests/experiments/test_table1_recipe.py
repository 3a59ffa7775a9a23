"""table1 --recipe paper: the optimizer, the schedule and the augmentation are those the
README states (checked on the built objects), and each epoch's data is a function of
(seed, epoch) alone."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_implicit import cli
from keras_implicit.experiments import measure, table1_recipe, table1_training


def test_paper_recipe_follows_the_reference_implementation():
    settings, epochs = table1_recipe.resolve("paper")
    assert epochs == 160
    assert settings == {"optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9,
                        "lr_decay_epochs": [60, 100, 140], "lr_decay_factor": 0.1,
                        "augment": True}
    optimizer = table1_recipe.build_optimizer(settings, steps_per_epoch=10)
    assert isinstance(optimizer, keras.optimizers.SGD)
    assert optimizer.momentum == 0.9 and not optimizer.nesterov
    assert optimizer.weight_decay is None
    schedule = optimizer._learning_rate
    # The optimizer passes the number of steps done: epoch 60 starts at step 600.
    for step, rate in ((0, 0.1), (599, 0.1), (600, 0.01), (999, 0.01), (1000, 1e-3),
                       (1400, 1e-4), (10**6, 1e-4)):
        assert float(schedule(step)) == pytest.approx(rate, rel=1e-6), step
    # The learning rate is 0.1 for batch 128, scaled by batch / 128.
    assert table1_recipe.resolve("paper", batch_size=256)[0]["learning_rate"] == 0.2


def test_every_part_of_a_recipe_is_overridable():
    settings, epochs = table1_recipe.resolve(
        "paper", optimizer="sgd", learning_rate=0.05, momentum=0.5, lr_decay_epochs=[3, 5, 7],
        augment=False, epochs=8)
    assert epochs == 8 and settings["learning_rate"] == 0.05 and settings["momentum"] == 0.5
    assert settings["lr_decay_epochs"] == [3, 5, 7] and settings["augment"] is False
    quick, epochs = table1_recipe.resolve("quick")
    assert epochs == 1 and quick["optimizer"] == "adam" and quick["learning_rate"] == 1e-3
    assert quick["lr_decay_epochs"] == [] and quick["augment"] is False
    assert table1_recipe.learning_rate(quick, 10) == 1e-3
    optimizer = table1_recipe.build_optimizer(quick, 10)
    assert isinstance(optimizer, keras.optimizers.Adam)
    assert table1_recipe.resolve("quick", optimizer="sgd")[0]["learning_rate"] == 0.1
    with pytest.raises(ValueError, match="--momentum applies to --optimizer=sgd only"):
        table1_recipe.resolve("quick", momentum=0.9)
    assert table1_recipe.describe(table1_recipe.resolve("paper")[0]) == (
        "SGD (momentum 0.9), lr 0.1, /10 at epochs 60, 100, 140; random 28x28 crops of "
        "4-pixel-padded images")


def test_random_crops_shift_the_image_and_fill_zeros():
    images = np.arange(1, 2 * 5 * 5 + 1, dtype=np.float32).reshape(2, 5, 5, 1)
    crops = table1_recipe.random_crops(images, np.array([[4, 4], [0, 8]]), padding=4)
    np.testing.assert_array_equal(crops[0], images[0])  # offset (4, 4): no shift
    # offset (0, 8): shifted down by 4 rows and left by 4 columns, zeros where uncovered.
    want = np.zeros((5, 5, 1), np.float32)
    want[4, 0] = images[1, 0, 4]
    np.testing.assert_array_equal(crops[1], want)


def test_epoch_data_is_seeded_per_epoch_and_drops_the_partial_batch():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(70, 28, 28, 1)).astype(np.float32)
    y = np.arange(70, dtype=np.int32)
    a0 = table1_recipe.epoch_data(x, y, seed=1, epoch=0, batch_size=32, augment=True)
    again = table1_recipe.epoch_data(x, y, seed=1, epoch=0, batch_size=32, augment=True)
    a1 = table1_recipe.epoch_data(x, y, seed=1, epoch=1, batch_size=32, augment=True)
    np.testing.assert_array_equal(a0[0], again[0])
    assert a0[0].shape == (64, 28, 28, 1) and len(set(a0[1])) == 64
    assert not np.array_equal(a0[1], a1[1])
    plain = table1_recipe.epoch_data(x, y, seed=1, epoch=0, batch_size=32, augment=False)
    np.testing.assert_array_equal(plain[1], a0[1])  # same order, with or without crops
    np.testing.assert_array_equal(plain[0], x[plain[1]])
    # Each crop is its image moved by at most 4 pixels, with zeros filling in.
    shifted = 0
    for crop, label in zip(a0[0], a0[1]):
        padded = np.pad(x[label], ((4, 4), (4, 4), (0, 0)))
        matches = [(dy, dx) for dy in range(9) for dx in range(9)
                   if np.array_equal(padded[dy:dy + 28, dx:dx + 28], crop)]
        assert matches, label
        shifted += matches[0] != (4, 4)
    assert shifted > 50  # almost all of them moved


def test_paper_recipe_run_trains_with_sgd_the_schedule_and_crops(mnist_path, tmp_path,
                                                                 monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", {"table1": cli.COMMANDS["table1"]})
    monkeypatch.setenv(measure.ALLOCATOR_ENVIRONMENT_VARIABLE, "false")
    seen = []
    real_epoch_data = table1_recipe.epoch_data

    def spy(x, y, seed, epoch, batch_size, augment):
        seen.append((len(x), seed, epoch, batch_size, augment))
        return real_epoch_data(x, y, seed, epoch, batch_size, augment)

    monkeypatch.setattr(table1_recipe, "epoch_data", spy)
    out = tmp_path / "paper"
    assert cli.main(["table1", "--recipe", "paper", "--epochs", "1", "--models", "mlp",
                     "--train-size", "300", "--test-size", "100", "--data", mnist_path,
                     "--out", str(out), "--verbose", "0", "--no-block-memory"]) == 0
    assert seen == [(300, 0, 0, 128, True)]
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["optimizer"] == "sgd" and settings["momentum"] == 0.9
    assert settings["learning_rate"] == 0.1 and settings["lr_decay_epochs"] == [60, 100, 140]
    assert settings["augment"] is True and settings["recipe"] == "paper"
    progress = table1_training.read_progress(str(out), "mlp")
    assert [e["epoch"] for e in progress["epochs"]] == [1]
    assert progress["epochs"][0]["learning_rate"] == pytest.approx(0.1)
    # The checkpoint holds the optimizer: 2 steps of SGD with momentum.
    reader = tf.train.load_checkpoint(str(out / "checkpoints" / "mlp"))
    names = reader.get_variable_to_shape_map()
    iterations = [n for n in names if n.startswith("optimizer/") and "iteration" in n]
    assert [int(reader.get_tensor(n)) for n in iterations] == [2]
    slots = [n for n in names if n.startswith("optimizer/_variables/")]
    assert len(slots) == 4  # the momentum of two kernels and two biases
    assert all(np.abs(reader.get_tensor(n)).max() > 0 for n in slots)
    # The built model's optimizer is the recipe's.
    model = table1_training.build_model("mlp", settings)
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert model.optimizer._learning_rate.boundaries == [119, 199, 279]  # 2 steps per epoch
    assert "lr 0.1, /10 at epochs 60, 100, 140; random 28x28 crops" in \
        (out / "table1.md").read_text()
