"""MNIST from local IDX files or an ``mnist.npz``, verified; Keras' download otherwise.

The loader reads, in this order: ``path`` (or ``$KERAS_IMPLICIT_DATA`` when
``path`` is ``None``) as a directory holding the four IDX files (gzipped or
not, under their standard names) or an ``mnist.npz``, a ``mnist/``
subdirectory of it, or an ``.npz`` file itself. With neither ``path`` nor
``$KERAS_IMPLICIT_DATA`` it falls back to ``keras.datasets.mnist.load_data()``
(which downloads). Every local file is checked: IDX magic number, dtype,
dimensions, that the file holds exactly the bytes its header announces,
labels in 0..9 and as many labels as images, and its SHA256 when a
``SHA256SUMS`` file (``sha256sum`` format) lists it. A bad file raises
``ValueError`` naming the file and what is wrong with it.
"""

import gzip
import hashlib
import os
import pathlib
import zipfile
import zlib

import numpy as np

ENVIRONMENT_VARIABLE = "KERAS_IMPLICIT_DATA"
CHECKSUM_FILE = "SHA256SUMS"
IMAGE_SIZE = (28, 28)
NUM_CLASSES = 10

# (array name, IDX magic number, number of dimensions, file stems)
_IDX_FILES = (
    ("x_train", 2051, 3, ("train-images-idx3-ubyte", "train-images.idx3-ubyte")),
    ("y_train", 2049, 1, ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte")),
    ("x_test", 2051, 3, ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte")),
    ("y_test", 2049, 1, ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte")),
)
_NPZ_NAME = "mnist.npz"
_GZIP_MAGIC = b"\x1f\x8b"


def load_data(path=None):
    """Loads MNIST as ``((x_train, y_train), (x_test, y_test))``, like ``keras.datasets.mnist``.

    Args:
        path: a directory with ``train-images-idx3-ubyte[.gz]``,
            ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``
            and ``t10k-labels-idx1-ubyte[.gz]`` (or ``mnist.npz``), a parent
            directory with a ``mnist/`` subdirectory of them, or the path of
            an ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``.
            ``None`` reads ``$KERAS_IMPLICIT_DATA``; if that is unset too,
            ``keras.datasets.mnist.load_data()`` is used.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: uint8 images
        ``(n, 28, 28)`` with values 0..255 and uint8 labels ``(n,)`` in 0..9.

    Raises:
        FileNotFoundError: no MNIST files at ``path``.
        ValueError: a file is truncated, too long, not an IDX file of the
            expected kind, not a valid gzip stream, or fails its SHA256SUMS
            checksum; the message names the file and the problem.

    Example:
        >>> (x_train, y_train), (x_test, y_test) = ki.datasets.mnist.load_data("/data/mnist")
        >>> x_train.shape, y_test.dtype
        ((60000, 28, 28), dtype('uint8'))
    """
    if path is None:
        path = os.environ.get(ENVIRONMENT_VARIABLE) or None
        if path is None:
            import keras

            return keras.datasets.mnist.load_data()
    path = pathlib.Path(os.fspath(path)).expanduser()
    if path.is_file():
        return _load_npz(path)
    if not path.is_dir():
        raise FileNotFoundError(f"MNIST: no such file or directory. Received: path={str(path)!r}")
    for directory in (path, path / "mnist"):
        found = _find_idx_files(directory)
        if found is not None:
            return _load_idx_directory(directory, found)
        if (directory / _NPZ_NAME).is_file():
            return _load_npz(directory / _NPZ_NAME)
    names = ", ".join(stems[0] + "[.gz]" for _, _, _, stems in _IDX_FILES)
    raise FileNotFoundError(
        f"MNIST: found neither the four IDX files ({names}) nor {_NPZ_NAME} in {str(path)!r} "
        f"or its 'mnist' subdirectory. Received: path={str(path)!r}")


def _find_idx_files(directory):
    """``{array name: file path}`` when all four IDX files are in ``directory``, else None."""
    if not directory.is_dir():
        return None
    found = {}
    for name, _, _, stems in _IDX_FILES:
        candidates = [directory / (stem + suffix) for stem in stems for suffix in ("", ".gz")]
        existing = [c for c in candidates if c.is_file()]
        if existing:
            found[name] = existing[0]
    if not found:
        return None
    missing = [stems[0] for name, _, _, stems in _IDX_FILES if name not in found]
    if missing:
        raise FileNotFoundError(
            f"MNIST: {str(directory)!r} holds only part of the IDX files; missing: "
            f"{', '.join(m + '[.gz]' for m in missing)}")
    return found


def _load_idx_directory(directory, files):
    checksums = _read_checksums(directory)
    arrays = {}
    for name, magic, ndim, _ in _IDX_FILES:
        file = files[name]
        _verify_checksum(file, checksums)
        arrays[name] = read_idx(file, expected_magic=magic, expected_ndim=ndim)
    _check_arrays(arrays, {name: str(files[name]) for name in arrays})
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def read_idx(file, expected_magic=None, expected_ndim=None):
    """Reads one IDX file (gzipped or not) into a uint8 array, checking its header and size.

    Args:
        file: path of the file.
        expected_magic: 2051 for images, 2049 for labels (``None`` accepts any
            unsigned-byte IDX file).
        expected_ndim: required number of dimensions, or ``None``.

    Returns:
        A writable uint8 array of the shape the header announces.
    """
    file = pathlib.Path(file)
    raw = _read_bytes(file)
    if len(raw) < 4:
        raise ValueError(f"MNIST file {str(file)!r} is truncated: {len(raw)} bytes, shorter "
                         f"than an IDX header.")
    magic = int.from_bytes(raw[:4], "big")
    zero, type_code, ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or type_code != 0x08:
        raise ValueError(
            f"MNIST file {str(file)!r} is not an unsigned-byte IDX file: its magic number is "
            f"{magic} (0x{magic:08x}); MNIST images have 2051, labels 2049.")
    if expected_magic is not None and magic != expected_magic:
        kinds = {2051: "images (magic 2051)", 2049: "labels (magic 2049)"}
        raise ValueError(
            f"MNIST file {str(file)!r} has magic number {magic} but should hold "
            f"{kinds.get(expected_magic, expected_magic)}: a foreign or misnamed file.")
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(f"MNIST file {str(file)!r} has {ndim} dimensions; expected "
                         f"{expected_ndim}.")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"MNIST file {str(file)!r} is truncated inside its header "
                         f"({len(raw)} of {header} bytes).")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "longer than its header says"
        raise ValueError(
            f"MNIST file {str(file)!r} is {problem}: its header announces shape {shape}, "
            f"i.e. {expected} bytes, but it holds {len(raw)}.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _read_bytes(file):
    with open(file, "rb") as handle:
        raw = handle.read()
    if raw[:2] != _GZIP_MAGIC:
        if file.suffix == ".gz":
            raise ValueError(f"MNIST file {str(file)!r} is named .gz but is not gzip data.")
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise ValueError(f"MNIST file {str(file)!r} is a truncated gzip stream "
                         f"({len(raw)} bytes on disk).") from None
    except (OSError, zlib.error) as error:
        raise ValueError(f"MNIST file {str(file)!r} is corrupt gzip data: {error}") from None


def _read_checksums(directory):
    """``{file name: sha256 hex}`` from ``directory/SHA256SUMS``, or ``{}`` without one."""
    sums_file = directory / CHECKSUM_FILE
    if not sums_file.is_file():
        return {}
    try:
        text = sums_file.read_text()
    except UnicodeDecodeError as error:
        raise ValueError(f"{str(sums_file)!r} is not a text file of '<sha256>  <file>' "
                         f"lines: {error}") from None
    checksums = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise ValueError(f"{str(sums_file)!r} line {number} is not '<sha256>  <file>': "
                             f"{line!r}")
        checksums[parts[1].lstrip("*").strip()] = parts[0].lower()
    return checksums


def _verify_checksum(file, checksums):
    expected = checksums.get(file.name)
    if expected is None:
        return
    actual = hashlib.sha256(file.read_bytes()).hexdigest()
    if actual != expected:
        raise ValueError(
            f"MNIST file {str(file)!r} fails its checksum in {CHECKSUM_FILE}: sha256 is "
            f"{actual}, expected {expected}. The file is damaged or not the MNIST file.")


def _load_npz(file):
    checksums = _read_checksums(file.parent)
    _verify_checksum(file, checksums)
    try:
        with np.load(file, allow_pickle=False) as data:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in data]
            if missing:
                raise ValueError(f"MNIST file {str(file)!r} lacks the arrays {missing}; it "
                                 f"holds {sorted(data.files)}.")
            arrays = {k: data[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except ValueError as error:
        if str(file) in str(error):
            raise
        raise ValueError(f"MNIST file {str(file)!r} is not a readable .npz: {error}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:  # BadZipFile: truncated
        raise ValueError(f"MNIST file {str(file)!r} is not a readable .npz: {error}") from None
    for name, array in arrays.items():
        if array.dtype != np.uint8:
            raise ValueError(f"MNIST file {str(file)!r}: {name} has dtype {array.dtype}; "
                             f"expected uint8.")
    _check_arrays(arrays, {name: f"{file}[{name}]" for name in arrays})
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _check_arrays(arrays, sources):
    """Image size, label range and label count, naming the offending source."""
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.ndim != 3 or images.shape[1:] != IMAGE_SIZE:
            raise ValueError(f"MNIST {sources[f'x_{split}']!r}: images have shape "
                             f"{images.shape}; expected (n, 28, 28).")
        if labels.ndim != 1:
            raise ValueError(f"MNIST {sources[f'y_{split}']!r}: labels have shape "
                             f"{labels.shape}; expected (n,).")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"MNIST {split} split: {labels.shape[0]} labels in {sources[f'y_{split}']!r} "
                f"but {images.shape[0]} images in {sources[f'x_{split}']!r}.")
        if labels.size and int(labels.max()) >= NUM_CLASSES:
            raise ValueError(f"MNIST {sources[f'y_{split}']!r}: label {int(labels.max())} is "
                             f"outside 0..9; not MNIST labels.")
