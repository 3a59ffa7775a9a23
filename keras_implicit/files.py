"""Atomic writes: a file or a directory appears complete at its path, or not at all.

Everything the library and its command-line tools write goes through here, so
that a write that fails midway (an exception in a model's ``get_config``, a
full disk, a killed process) never leaves a truncated file where a good one
was:

- :func:`atomic_path` hands out a temporary name beside the target (same
  directory, hence the same filesystem, same suffix so that tools which
  check it, like Keras' ``.keras``, accept it) and renames it over the
  target with ``os.replace`` once the caller's block succeeds.
- :func:`atomic_write` is the same for an open file object (``fsync`` before
  the rename, so the new contents are on disk before the name points at them).
- :func:`atomic_directory` does it for directories (a SavedModel): POSIX
  cannot rename a directory over a non-empty one, so the swap takes three
  steps; see its docstring for what a crash between them leaves.
- :func:`save_model` is ``keras.saving.save_model`` through the above.

Temporary names start with ``.<name>.tmp-`` (old directories set aside with
``.<name>.old-``), so they are hidden and easy to recognise.
"""

import contextlib
import os
import shutil
import tempfile


def _split(path):
    path = os.path.abspath(os.fspath(path))
    return os.path.dirname(path), os.path.basename(path)


def _suffix(name):
    """``.keras`` for ``model.keras``, ``.weights.h5`` for ``a.weights.h5``, ``""`` for ``a``."""
    core = name.lstrip(".")
    stem, dot, _ = core.partition(".")
    return core[len(stem):] if dot else ""


def _fsync_directory(directory):
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # Some filesystems cannot sync a directory; the rename is still atomic.
    finally:
        os.close(descriptor)


def _read_umask():
    umask = os.umask(0o022)  # reading the umask means setting it: once, at import
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _default_mode(requested):
    """``requested`` minus the umask: the mode ``open``/``mkdir`` would have given."""
    return requested & ~_UMASK


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside ``path``; renames it to ``path`` if the block succeeds.

    The temporary name is ``.<name>.tmp-<random><suffix>`` in ``path``'s
    directory, with ``path``'s suffix (``.keras``, ``.png``...). The block
    writes a file there; on success it is renamed over ``path`` in one
    ``os.replace`` (atomic on POSIX and Windows), so readers see either the
    old file or the new one. If the block raises, the temporary file is
    deleted, ``path`` is untouched and the exception propagates.

    Args:
        path: the target file (``str`` or ``os.PathLike``); its directory must exist.

    Raises:
        IsADirectoryError: ``path`` is an existing directory.
        FileNotFoundError: ``path``'s directory does not exist.

    Example:
        >>> with atomic_path("model.keras") as temporary:
        ...     keras.saving.save_model(model, temporary)
    """
    directory, name = _split(path)
    if os.path.isdir(os.path.join(directory, name)):
        raise IsADirectoryError(f"Cannot write a file over a directory. Received: path={path!r}")
    descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.tmp-", suffix=_suffix(name),
                                             dir=directory)
    os.close(descriptor)
    os.chmod(temporary, _default_mode(0o666))  # mkstemp creates 0o600
    try:
        yield temporary
        if not os.path.isfile(temporary):
            raise FileNotFoundError(f"Nothing was written to the temporary file {temporary!r} "
                                    f"for {path!r}.")
        with open(temporary, "rb+") as handle:  # the writer may not have synced it
            os.fsync(handle.fileno())
        os.replace(temporary, os.path.join(directory, name))
    except BaseException:
        _remove(temporary)
        raise
    _fsync_directory(directory)


@contextlib.contextmanager
def atomic_write(path, mode="w", **open_kwargs):
    """Opens a temporary file beside ``path``; renames it to ``path`` if the block succeeds.

    Args:
        path: the target file.
        mode: ``"w"`` (text, the default) or ``"wb"`` (binary); also ``"x"``/``"xb"``
            to refuse an existing ``path`` (``FileExistsError``, checked before writing).
        **open_kwargs: passed to ``open`` (``encoding``, ``newline``...).

    Example:
        >>> with atomic_write("results.csv", newline="") as handle:
        ...     csv.writer(handle).writerows(rows)
    """
    if mode not in ("w", "wb", "x", "xb", "wt", "xt"):
        raise ValueError(f"`mode` must be one of 'w', 'wb', 'x', 'xb'. Received: mode={mode!r}")
    if mode.startswith("x") and os.path.lexists(path):
        raise FileExistsError(f"The file exists already. Received: path={path!r}")
    with atomic_path(path) as temporary:
        with open(temporary, mode.replace("x", "w"), **open_kwargs) as handle:
            yield handle


@contextlib.contextmanager
def atomic_directory(path):
    """Yields a temporary directory beside ``path``; swaps it in if the block succeeds.

    The block fills the temporary directory ``.<name>.tmp-<random>`` (e.g.
    exports a SavedModel into it). On success, since a directory cannot be
    renamed over a non-empty one:

    1. an existing ``path`` is renamed aside to ``.<name>.old-<random>``;
    2. the new directory is renamed to ``path``;
    3. the old one is deleted.

    If the block raises, the temporary directory is deleted and ``path`` is
    untouched. A crash (power loss, ``SIGKILL``) leaves, depending on when:
    before step 1, ``path`` intact and a stray ``.<name>.tmp-*``; between
    steps 1 and 2, no ``path`` but the complete old directory at
    ``.<name>.old-*`` and the complete new one at ``.<name>.tmp-*`` (rename
    either back to recover); between 2 and 3, the new ``path`` and a stray
    ``.<name>.old-*``. Each rename is atomic, so no step leaves a half-written
    directory at ``path``. If step 2 fails with an error, step 1 is undone.

    Args:
        path: the target directory; its parent must exist. An existing file
            (not a directory) there is refused with ``FileExistsError``.

    Example:
        >>> with atomic_directory("flow_savedmodel") as temporary:
        ...     tf.saved_model.save(module, temporary)
    """
    directory, name = _split(path)
    target = os.path.join(directory, name)
    if os.path.lexists(target) and not os.path.isdir(target):
        raise FileExistsError(f"A file (not a directory) exists at the path. Received: "
                              f"path={path!r}")
    temporary = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=directory)
    os.chmod(temporary, _default_mode(0o777))  # mkdtemp creates 0o700
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    old = None
    try:
        if os.path.lexists(target):
            old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=directory)
            os.rmdir(old)  # reserve a unique name, then move the old directory there
            os.rename(target, old)
        os.rename(temporary, target)
    except BaseException:
        if old is not None and os.path.isdir(old) and not os.path.lexists(target):
            os.rename(old, target)
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _fsync_directory(directory)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove(path):
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def save_model(model, filepath, overwrite=True, zipped=None, **kwargs):
    """``keras.saving.save_model`` that never leaves a partial file at ``filepath``.

    Saves to a temporary name beside ``filepath`` (same suffix) and renames
    it over ``filepath`` only once the save has succeeded; an unzipped save
    (``zipped=False``, a directory) goes through :func:`atomic_directory`. A
    failed save raises its error and leaves an existing file at ``filepath``
    as it was. Arguments and behaviour are otherwise Keras' own (with
    ``overwrite=False`` it asks before replacing an existing file); paths
    that are not local files (``hf://``, file objects) are passed to Keras
    unchanged.
    """
    import keras

    if not isinstance(filepath, (str, os.PathLike)) or str(filepath).startswith("hf://"):
        return keras.saving.save_model(model, filepath, overwrite=overwrite, zipped=zipped,
                                       **kwargs)
    if os.path.exists(filepath) and not overwrite:
        from keras.src.utils import io_utils

        if not io_utils.ask_to_proceed_with_overwrite(filepath):
            return None
    if zipped is False:
        with atomic_directory(filepath) as temporary:
            return keras.saving.save_model(model, temporary, zipped=False, **kwargs)
    if not str(filepath).endswith((".keras", ".h5", ".hdf5")):
        # Keras raises its error about the extension; nothing is written.
        return keras.saving.save_model(model, filepath, zipped=zipped, **kwargs)
    with atomic_path(filepath) as temporary:
        return keras.saving.save_model(model, temporary, zipped=zipped, **kwargs)
