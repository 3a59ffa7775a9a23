"""Atomic writes: a write that fails midway leaves the earlier file or directory intact and
no temporary litter; a successful one replaces it whole. Also the models' save/export."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_implicit as ki
from keras_implicit import files

pytestmark = pytest.mark.plain_graph  # what is written, and how (tests/conftest.py)


class Interrupted(Exception):
    pass


def listing(directory):
    return sorted(os.listdir(directory))


def test_atomic_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("old\n")
    with files.atomic_write(path) as handle:
        handle.write("new\n")
        assert path.read_text() == "old\n"  # not visible before the block ends
    assert path.read_text() == "new\n"
    assert listing(tmp_path) == ["table.csv"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600


@pytest.mark.parametrize("mode, data", [("w", "partial"), ("wb", b"\x89PNG partial")])
def test_atomic_write_failing_midway_keeps_the_old_file(tmp_path, mode, data):
    path = tmp_path / "figure.png"
    path.write_bytes(b"old contents")
    with pytest.raises(Interrupted):
        with files.atomic_write(path, mode) as handle:
            handle.write(data)
            handle.flush()
            raise Interrupted
    assert path.read_bytes() == b"old contents"
    assert listing(tmp_path) == ["figure.png"]


def test_atomic_path_keeps_the_suffix_and_refuses_directories(tmp_path):
    with files.atomic_path(tmp_path / "model.weights.h5") as temporary:
        name = os.path.basename(temporary)
        assert name.startswith(".model.weights.h5.tmp-") and name.endswith(".weights.h5")
        assert os.path.dirname(temporary) == str(tmp_path)
        with open(temporary, "wb") as handle:
            handle.write(b"x")
    assert (tmp_path / "model.weights.h5").read_bytes() == b"x"
    (tmp_path / "adir").mkdir()
    with pytest.raises(IsADirectoryError, match="adir"):
        with files.atomic_path(tmp_path / "adir"):
            pass
    with pytest.raises(FileExistsError, match="exists already"):
        with files.atomic_write(tmp_path / "model.weights.h5", "xb"):
            pass
    with pytest.raises(ValueError, match="Received: mode='a'"):
        with files.atomic_write(tmp_path / "x", "a"):
            pass
    assert listing(tmp_path) == ["adir", "model.weights.h5"]


def test_atomic_directory_swaps_and_keeps_the_old_one_on_failure(tmp_path):
    target = tmp_path / "saved"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(Interrupted):
        with files.atomic_directory(target) as temporary:
            (open(os.path.join(temporary, "half.txt"), "w")).close()
            raise Interrupted
    assert listing(target) == ["old.txt"] and listing(tmp_path) == ["saved"]

    with files.atomic_directory(target) as temporary:
        with open(os.path.join(temporary, "new.txt"), "w") as handle:
            handle.write("new")
    assert listing(target) == ["new.txt"] and listing(tmp_path) == ["saved"]

    with files.atomic_directory(tmp_path / "fresh") as temporary:
        os.mkdir(os.path.join(temporary, "variables"))
    assert listing(tmp_path / "fresh") == ["variables"]

    (tmp_path / "a_file").write_text("keep me")
    with pytest.raises(FileExistsError, match="a_file"):
        with files.atomic_directory(tmp_path / "a_file"):
            pass
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_atomic_directory_undoes_the_move_aside_if_the_swap_fails(tmp_path, monkeypatch):
    target = tmp_path / "saved"
    target.mkdir()
    (target / "old.txt").write_text("old")
    renames = []
    real_rename = os.rename

    def rename(source, destination):
        renames.append((source, destination))
        if len(renames) == 2:  # 1: old aside, 2: new in
            raise OSError("disk on fire")
        real_rename(source, destination)

    monkeypatch.setattr(files.os, "rename", rename)
    with pytest.raises(OSError, match="disk on fire"):
        with files.atomic_directory(target) as temporary:
            (open(os.path.join(temporary, "new.txt"), "w")).close()
    assert listing(target) == ["old.txt"] and listing(tmp_path) == ["saved"]


def small_flow():
    flow = ki.models.ContinuousFlow(hidden_units=(4,), solver="rk4", num_steps=2, seed=0)
    flow(np.zeros((3, 2), np.float32))
    return flow


def test_flow_save_that_fails_keeps_the_earlier_keras_file(tmp_path, monkeypatch):
    """Issue 10, item 4: a save whose get_config raises used to truncate the file to 0 bytes."""
    flow = small_flow()
    path = tmp_path / "flow.keras"
    flow.save(path)
    before = path.read_bytes()
    assert len(before) > 1000

    def broken_config(self):
        raise Interrupted("get_config failed")

    monkeypatch.setattr(ki.models.ContinuousFlow, "get_config", broken_config)
    with pytest.raises(Interrupted):
        flow.save(path)
    assert path.read_bytes() == before
    assert listing(tmp_path) == ["flow.keras"]
    monkeypatch.undo()
    x = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.log_prob(x, seed=[1, 2]), flow.log_prob(x, seed=[1, 2]),
                               atol=1e-6)


def test_flow_export_that_fails_keeps_the_earlier_saved_model(tmp_path, monkeypatch):
    flow = small_flow()
    flow.trace = "exact"
    path = tmp_path / "flow_savedmodel"
    flow.export_saved_model(str(path))
    x = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    exported = tf.saved_model.load(str(path))  # kept alive: its functions need its variables
    want = exported.log_prob(x).numpy()

    archive_class = type(keras.export.ExportArchive())  # the backend's subclass
    real_write_out = archive_class.write_out

    def write_half_then_fail(self, filepath, **kwargs):
        real_write_out(self, filepath, **kwargs)
        os.remove(os.path.join(filepath, "saved_model.pb"))
        raise Interrupted("export failed")

    monkeypatch.setattr(archive_class, "write_out", write_half_then_fail)
    with pytest.raises(Interrupted):
        flow.export_saved_model(str(path))
    assert listing(tmp_path) == ["flow_savedmodel"]
    reloaded = tf.saved_model.load(str(path))
    np.testing.assert_allclose(reloaded.log_prob(x).numpy(), want)


def test_latent_ode_save_that_fails_keeps_the_earlier_file(tmp_path, monkeypatch):
    model = ki.models.LatentODE(2, 3, 4, solver="rk4", num_steps=2, seed=0)
    path = tmp_path / "latent.keras"
    path.write_bytes(b"an earlier model")

    def broken_config(self):
        raise Interrupted("get_config failed")

    monkeypatch.setattr(ki.models.LatentODE, "get_config", broken_config)
    with pytest.raises(Interrupted):
        model.save(path)
    assert path.read_bytes() == b"an earlier model"
    assert listing(tmp_path) == ["latent.keras"]


def test_a_failed_save_of_any_model_keeps_the_earlier_file(tmp_path):
    """The README's Quick start: Keras's own model.save truncates the earlier file."""

    @keras.saving.register_keras_serializable(package="test_files")
    class Flaky(keras.layers.Layer):
        fail = False

        def call(self, x):
            return x

        def get_config(self):
            if Flaky.fail:
                raise RuntimeError("get_config failed")
            return super().get_config()

    model = keras.Sequential([keras.Input((2,)), Flaky(), keras.layers.Dense(1)])
    path = tmp_path / "model.keras"
    ki.files.save_model(model, path)
    saved = path.read_bytes()
    Flaky.fail = True
    with pytest.raises(RuntimeError, match="get_config failed"):
        ki.files.save_model(model, path)
    assert path.read_bytes() == saved and listing(tmp_path) == ["model.keras"]


def test_save_model_passes_keras_errors_through_without_writing(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="Invalid filepath extension"):
        files.save_model(model, tmp_path / "model.txt")
    assert listing(tmp_path) == []
    files.save_model(model, tmp_path / "model.keras")
    files.save_model(model, tmp_path / "unzipped", zipped=False)
    assert listing(tmp_path) == ["model.keras", "unzipped"]
    assert keras.saving.load_model(tmp_path / "model.keras").count_params() == 3
