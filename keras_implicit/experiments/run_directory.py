"""The output directory of a ``keras-implicit`` run: whose results it holds, and a lock.

A run writes ``run.json`` beside its results: the command, the settings that
change results, and their hash. A later run into the same ``--out``
compares:

- no earlier results: go ahead;
- the same command and settings hash: the same run, which may continue
  (``table1`` resumes from its checkpoints) or redo its results;
- other settings, or results without a ``run.json``: refused with a
  message naming the settings that differ, unless ``--overwrite`` is given,
  which deletes the earlier results of the command (only the files it
  writes, never other files in the directory);
- another command's ``run.json``: refused even with ``--overwrite``, which
  would replace that record and leave the other command's results (e.g.
  ``table1``'s checkpoints) impossible to resume.

:meth:`RunDirectory.check` only reads, so that ``validate(args)`` can run it
before anything is created; :meth:`RunDirectory.prepare` then creates the
directory, takes the lock (``fcntl.flock`` on ``.lock``, released when the
process exits, so two runs never write into one directory at once), clears
earlier results when asked, and writes ``run.json`` atomically.
"""

import hashlib
import json
import os
import shutil

from keras_implicit import files
from keras_implicit.experiments.arguments import UsageError

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
FORMAT = 1


def settings_hash(settings):
    """A short SHA-256 of the settings as canonical JSON (sorted keys)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _show(value):
    return json.dumps(value) if isinstance(value, (list, dict)) else repr(value)


def describe_differences(earlier, now):
    """``"learning_rate: 0.1 there, 0.001 here; ..."`` for the keys whose values differ."""
    parts = []
    for key in sorted(set(earlier) | set(now)):
        if earlier.get(key, "<unset>") != now.get(key, "<unset>"):
            parts.append(f"{key}: {_show(earlier.get(key, '<unset>'))} there, "
                         f"{_show(now.get(key, '<unset>'))} here")
    return "; ".join(parts)


class RunDirectory:
    """The results of one command in ``out``.

    Args:
        out: the output directory (``--out``).
        command: the subcommand, e.g. ``"table1"``.
        settings: JSON-serialisable dict of everything that changes results.
        result_names: the files and directories the command writes in ``out``
            (``run.json`` is added); only these are deleted by ``--overwrite``.
    """

    def __init__(self, out, command, settings, result_names):
        self.out = os.fspath(out)
        self.command = command
        self.settings = settings
        self.hash = settings_hash(settings)
        self.result_names = tuple(result_names) + (RUN_FILE,)
        self.earlier = None  # "none", "same" or "different", set by check()
        self._lock = None

    def _path(self, name):
        return os.path.join(self.out, name)

    def earlier_results(self):
        """The names of this command's results already in ``out``."""
        if not os.path.isdir(self.out):
            return []
        return [name for name in self.result_names if os.path.lexists(self._path(name))]

    def read_record(self):
        """``run.json`` as a dict, or ``None`` if absent, unreadable or naming no command."""
        try:
            with open(self._path(RUN_FILE)) as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            return None
        # A record that names no command is as unreadable as a broken one.
        named = isinstance(record, dict) and isinstance(record.get("command"), str)
        return record if named else None

    def check(self, overwrite):
        """Decides whether the run may write here; raises :class:`UsageError` if not.

        Reads only. Sets ``self.earlier`` to ``"none"``, ``"same"`` or ``"different"``.
        """
        found = self.earlier_results()
        if not found:
            self.earlier = "none"
            return
        record = self.read_record()
        if record is None:
            reason = (f"results of keras-implicit {self.command} ({', '.join(found)}) without a "
                      f"readable {RUN_FILE} to say which settings made them")
        elif record.get("command") != self.command:
            # --overwrite discards this command's results only: the other command's
            # run.json (and so its resumable checkpoints) would be lost with it.
            raise UsageError(f"--out {self.out!r} holds the results of keras-implicit "
                             f"{record.get('command')!r} (its {RUN_FILE}); --overwrite would "
                             f"discard only {self.command}'s own results. Choose another "
                             f"--out.")
        elif record.get("settings_hash") != self.hash:
            differences = describe_differences(record.get("settings") or {}, self.settings)
            reason = f"results of other settings ({differences or 'their hash differs'})"
        else:
            self.earlier = "same"
            self._check_lock()
            return
        self.earlier = "different"
        if not overwrite:
            raise UsageError(f"--out {self.out!r} holds {reason}. Pass --overwrite to discard "
                             f"them, or choose another --out.")
        self._check_lock()

    def _check_lock(self):
        import fcntl

        path = self._path(LOCK_FILE)
        if not os.path.exists(path):
            return
        try:
            with open(path) as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
        except BlockingIOError:
            raise UsageError(f"--out {self.out!r} is in use by another keras-implicit run "
                             f"(it holds {path!r} locked); wait for it or choose another "
                             f"--out.") from None
        except OSError:
            pass

    def release(self):
        """Releases the lock taken by :meth:`prepare` (also released when the process exits)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def prepare(self, overwrite):
        """Creates ``out``, locks it, deletes earlier results if asked, writes ``run.json``.

        Call :meth:`check` first. With ``overwrite``, the command's earlier
        results are deleted even when their settings are the same (the run
        starts over); without it, results of the same settings are kept.
        """
        import fcntl

        if self.earlier is None:
            raise RuntimeError("Call check() before prepare().")
        try:
            os.makedirs(self.out, exist_ok=True)
            self._lock = open(self._path(LOCK_FILE), "a")
        except OSError as error:  # what check() cannot see: /proc, a read-only mount, ...
            raise UsageError(f"--out {self.out!r} cannot be created or written: "
                             f"{error.strerror or error}. Choose another --out.") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"--out {self.out!r} is in use by another keras-implicit run.") \
                from None
        if overwrite or self.earlier == "different":
            for name in self.earlier_results():
                path = self._path(name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
        record = {"command": self.command, "format": FORMAT, "settings": self.settings,
                  "settings_hash": self.hash}
        with files.atomic_write(self._path(RUN_FILE)) as handle:
            json.dump(record, handle, indent=2, sort_keys=True)
            handle.write("\n")
        self.earlier = "same"
