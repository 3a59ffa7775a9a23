"""run.json and the lock: the same settings may continue, others are refused unless
--overwrite, which deletes only the command's own files."""

import json
import os

import pytest

from keras_implicit.experiments import run_directory
from keras_implicit.experiments.arguments import UsageError

NAMES = ("metrics.json", "figure.png", "checkpoints")


def prepared(out, settings, overwrite=False):
    directory = run_directory.RunDirectory(out, "demo", settings, NAMES)
    directory.check(overwrite)
    directory.prepare(overwrite)
    return directory


def test_same_settings_continue_other_settings_are_refused(tmp_path):
    out = tmp_path / "out"
    first = prepared(out, {"lr": 0.1, "seed": 0})
    (out / "metrics.json").write_text("{}")
    (out / "checkpoints").mkdir()
    (out / "notes.txt").write_text("the user's own file")
    first.release()
    record = json.loads((out / "run.json").read_text())
    assert record["settings_hash"] == run_directory.settings_hash({"seed": 0, "lr": 0.1})

    again = prepared(out, {"seed": 0, "lr": 0.1})  # key order does not matter
    assert again.earlier == "same" and (out / "metrics.json").exists()
    with pytest.raises(UsageError, match="in use by another keras-implicit run"):
        run_directory.RunDirectory(out, "demo", {"seed": 0, "lr": 0.1}, NAMES).check(False)
    again.release()

    other = run_directory.RunDirectory(out, "demo", {"lr": 0.2, "seed": 0, "new": 1}, NAMES)
    with pytest.raises(UsageError) as error:
        other.check(overwrite=False)
    assert str(error.value) == (
        f"--out {str(out)!r} holds results of other settings (lr: 0.1 there, 0.2 here; "
        "new: '<unset>' there, 1 here). Pass --overwrite to discard them, or choose another "
        "--out.")
    # Another command's run.json: refused even with --overwrite, which used to replace the
    # record and so leave the first command's checkpoints impossible to resume.
    for overwrite in (False, True):
        with pytest.raises(UsageError, match="holds the results of keras-implicit 'demo' "
                           r"\(its run.json\); --overwrite would discard only other's own"):
            run_directory.RunDirectory(out, "other", {"lr": 0.1}, ("other.csv",)).check(overwrite)
    assert json.loads((out / "run.json").read_text())["command"] == "demo"
    run_file = out / "run.json"
    record = run_file.read_text()
    run_file.write_text("{}")  # names no command: unreadable, so --overwrite may replace it
    with pytest.raises(UsageError, match="without a readable run.json"):
        run_directory.RunDirectory(out, "other", {}, ("other.csv",)).check(False)
    run_directory.RunDirectory(out, "other", {}, ("other.csv",)).check(True)
    run_file.write_text(record)

    replaced = prepared(out, {"lr": 0.2, "seed": 0, "new": 1}, overwrite=True)
    replaced.release()
    assert sorted(os.listdir(out)) == [".lock", "notes.txt", "run.json"]
    assert json.loads((out / "run.json").read_text())["settings"]["lr"] == 0.2


def test_check_creates_nothing_and_prepare_needs_it(tmp_path):
    out = tmp_path / "a" / "b"
    directory = run_directory.RunDirectory(out, "demo", {}, NAMES)
    with pytest.raises(RuntimeError, match="Call check"):
        directory.prepare(False)
    directory.check(False)
    assert directory.earlier == "none" and not (tmp_path / "a").exists()
    directory.prepare(False)
    directory.release()
    assert sorted(os.listdir(out)) == [".lock", "run.json"]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_out_that_passes_the_checks_but_cannot_be_made_is_a_usage_error(capsys):
    # /proc/...: the nearest existing directory is writable by its permissions (as root),
    # yet nothing can be created there; the command used to end in a FileNotFoundError
    # traceback from os.makedirs.
    from keras_implicit import cli

    out = "/proc/keras_implicit_cannot_exist"
    directory = run_directory.RunDirectory(out, "demo", {}, NAMES)
    try:
        directory.check(False)
    except UsageError:  # not root: /proc's permissions already refuse it
        expected = "--out is not writable"
    else:
        with pytest.raises(UsageError, match=r"cannot be created or written: .*another --out"):
            directory.prepare(False)
        expected = f"--out {out!r} cannot be created or written"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["flow", "--out", out, "--steps", "1"])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err
