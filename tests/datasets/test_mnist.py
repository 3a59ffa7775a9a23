"""ki.datasets.mnist.load_data: the real files, synthetic IDX/npz files, and every bad file."""

import gzip
import hashlib
import shutil

import numpy as np
import pytest

import keras_implicit as ki
from keras_implicit.datasets import mnist

STEMS = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
         "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def idx_bytes(array):
    """An unsigned-byte IDX file of ``array``, written independently of the loader."""
    array = np.asarray(array, dtype=np.uint8)
    magic = bytes([0, 0, 0x08, array.ndim])
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic + dims + array.tobytes()


def synthetic(n_train=7, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_idx(directory, arrays, gz=True, overrides=None):
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, stem in STEMS.items():
        data = (overrides or {}).get(name, idx_bytes(arrays[name]))
        path = directory / (stem + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(data) if gz else data)
        paths[name] = path
    return paths


def assert_same(loaded, arrays):
    (x_train, y_train), (x_test, y_test) = loaded
    for name, got in (("x_train", x_train), ("y_train", y_train), ("x_test", x_test),
                      ("y_test", y_test)):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, arrays[name])


@pytest.fixture(scope="module")
def real(mnist_path):
    return mnist.load_data(mnist_path)


def test_real_files_have_mnist_shapes_and_known_labels(real):
    (x_train, y_train), (x_test, y_test) = real
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert x_train.dtype == y_train.dtype == np.uint8
    # Well-known first labels of MNIST's training and test sets.
    np.testing.assert_array_equal(y_train[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    np.testing.assert_array_equal(y_test[:5], [7, 2, 1, 0, 4])
    assert np.bincount(y_train, minlength=10).min() > 5000
    assert x_train.max() == 255 and x_train.min() == 0
    assert x_train.flags.writeable


def test_environment_variable_and_parent_directory(mnist_path, real, monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_IMPLICIT_DATA", mnist_path)
    (x_train, _), (_, y_test) = ki.datasets.mnist.load_data()
    np.testing.assert_array_equal(x_train[:3], real[0][0][:3])
    np.testing.assert_array_equal(y_test, real[1][1])
    # A parent directory holding mnist/ works too (symlink, no copy of the data).
    (tmp_path / "mnist").symlink_to(mnist_path)
    assert len(mnist.load_data(tmp_path)[1][1]) == 10000


def test_synthetic_idx_round_trip(tmp_path):
    arrays = synthetic()
    for gz in (True, False):
        write_idx(tmp_path / str(gz), arrays, gz=gz)
        assert_same(mnist.load_data(str(tmp_path / str(gz))), arrays)


def test_dotted_standard_names(tmp_path):
    arrays = synthetic()
    for name, stem in STEMS.items():
        dotted = stem.replace("-idx", ".idx")  # train-images.idx3-ubyte
        (tmp_path / dotted).write_bytes(idx_bytes(arrays[name]))
    assert_same(mnist.load_data(tmp_path), arrays)


def test_npz_file_and_directory(tmp_path):
    arrays = synthetic()
    np.savez(tmp_path / "mnist.npz", **arrays)
    assert_same(mnist.load_data(tmp_path / "mnist.npz"), arrays)
    assert_same(mnist.load_data(tmp_path), arrays)


def test_checksums_are_verified(tmp_path):
    arrays = synthetic()
    paths = write_idx(tmp_path, arrays)
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths.values()}
    (tmp_path / "SHA256SUMS").write_text(
        "".join(f"{digest}  {name}\n" for name, digest in sums.items()))
    assert_same(mnist.load_data(tmp_path), arrays)
    wrong = dict(sums, **{paths["y_test"].name: "0" * 64})
    (tmp_path / "SHA256SUMS").write_text(
        "".join(f"{digest} *{name}\n" for name, digest in wrong.items()))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz.*fails its checksum"):
        mnist.load_data(tmp_path)
    (tmp_path / "SHA256SUMS").write_text("not a checksum line\n")
    with pytest.raises(ValueError, match="SHA256SUMS.*line 1"):
        mnist.load_data(tmp_path)
    (tmp_path / "SHA256SUMS").write_bytes(b"\xff\xfe garbage \x80\n")  # was a bare decode error
    with pytest.raises(ValueError, match="SHA256SUMS' is not a text file"):
        mnist.load_data(tmp_path)


def test_truncated_real_gzip_is_named(mnist_path, tmp_path):
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(f"{mnist_path}/{name}", tmp_path / name)
    with open(f"{mnist_path}/train-labels-idx1-ubyte.gz", "rb") as handle:
        (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(handle.read(1000))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz.*truncated gzip"):
        mnist.load_data(tmp_path)


BAD_FILES = [
    ("x_train", idx_bytes(np.zeros((7, 28, 28)))[:-1], r"truncated.*\(7, 28, 28\)"),
    ("x_train", idx_bytes(np.zeros((7, 28, 28))) + b"\0", "longer than its header"),
    ("x_train", b"\0\0", "shorter than an IDX header"),
    ("x_train", idx_bytes(np.zeros((7, 28, 28)))[:10], "truncated inside its header"),
    ("x_test", idx_bytes(np.zeros(5)), "magic number 2049 but should hold images"),
    ("y_test", idx_bytes(np.zeros((5, 28, 28))), "magic number 2051 but should hold labels"),
    ("y_train", b"PK\x03\x04" + bytes(20), "not an unsigned-byte IDX file"),
    ("y_train", idx_bytes(np.zeros(6)), "6 labels .* but 7 images"),
    ("y_train", idx_bytes(np.full(7, 10)), "label 10 is outside 0..9"),
    ("x_train", idx_bytes(np.zeros((7, 32, 32))), r"images have shape \(7, 32, 32\)"),
    ("y_train", idx_bytes(np.zeros((7, 2))), "magic number 2050 but should hold labels"),
]


def test_bad_idx_files_name_file_and_problem(tmp_path):
    for i, (name, data, message) in enumerate(BAD_FILES):
        paths = write_idx(tmp_path / str(i), synthetic(), gz=False, overrides={name: data})
        with pytest.raises(ValueError, match=message) as info:
            mnist.load_data(tmp_path / str(i))
        assert paths[name].name in str(info.value)


def test_read_idx_checks_dimensions(tmp_path):
    (tmp_path / "cube").write_bytes(idx_bytes(np.arange(8).reshape(2, 2, 2)))
    np.testing.assert_array_equal(mnist.read_idx(tmp_path / "cube"),
                                  np.arange(8).reshape(2, 2, 2))
    with pytest.raises(ValueError, match="cube.*has 3 dimensions; expected 1"):
        mnist.read_idx(tmp_path / "cube", expected_ndim=1)


def test_gz_name_without_gzip_data(tmp_path):
    write_idx(tmp_path, synthetic(), gz=False)
    (tmp_path / "train-images-idx3-ubyte").rename(tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*not gzip data"):
        mnist.load_data(tmp_path)


def test_corrupt_gzip(tmp_path):
    write_idx(tmp_path, synthetic())
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[20:40] = bytes(20)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz.*(corrupt|truncated)"):
        mnist.load_data(tmp_path)


def test_missing_files_and_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        mnist.load_data(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="found neither"):
        mnist.load_data(tmp_path)
    paths = write_idx(tmp_path, synthetic())
    paths["y_test"].unlink()
    with pytest.raises(FileNotFoundError, match="missing: t10k-labels-idx1-ubyte"):
        mnist.load_data(tmp_path)


def test_bad_npz(tmp_path):
    arrays = synthetic()
    np.savez(tmp_path / "partial.npz", x_train=arrays["x_train"])
    with pytest.raises(ValueError, match=r"partial.npz.*lacks the arrays \['y_train'"):
        mnist.load_data(tmp_path / "partial.npz")
    np.savez(tmp_path / "floats.npz", **dict(arrays, x_test=arrays["x_test"] / 255.0))
    with pytest.raises(ValueError, match="floats.npz.*x_test has dtype float64"):
        mnist.load_data(tmp_path / "floats.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="junk.npz.*not a readable .npz"):
        mnist.load_data(tmp_path / "junk.npz")
    # A truncated archive raised zipfile.BadZipFile, which named no file.
    np.savez(tmp_path / "cut.npz", **arrays)
    whole = (tmp_path / "cut.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ValueError, match="cut.npz.*not a readable .npz"):
        mnist.load_data(tmp_path / "cut.npz")


def test_falls_back_to_keras_download(monkeypatch):
    import keras

    monkeypatch.delenv("KERAS_IMPLICIT_DATA", raising=False)
    sentinel = ((np.zeros((1, 28, 28), np.uint8), np.zeros(1, np.uint8)),) * 2
    monkeypatch.setattr(keras.datasets.mnist, "load_data", lambda: sentinel)
    assert mnist.load_data() is sentinel
