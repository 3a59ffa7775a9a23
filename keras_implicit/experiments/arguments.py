"""Command-line argument checks shared by the ``keras-implicit`` subcommands.

Argparse ``type=`` converters (a bad value exits with status 2 and a one-line
``error: argument --steps: must be an int >= 1. Received: 0``), and
:class:`UsageError` for checks that need several arguments or the
filesystem: a subcommand's ``validate(args)`` raises it and ``cli.py`` turns
it into the same kind of one-line message. Nothing here imports TensorFlow.
"""

import argparse
import math
import os


class UsageError(Exception):
    """A user error in the command line: reported as ``error: <message>``, exit status 2."""


def _number(text, convert, kind):
    try:
        value = convert(text)
    except (TypeError, ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"must be {kind}. Received: {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {kind}. Received: {text!r}")
    return value


def int_at_least(minimum):
    """An argparse type: an int >= ``minimum``."""
    kind = f"an int >= {minimum}"

    def convert(text):
        value = _number(text, int, kind)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {kind}. Received: {value}")
        return value

    convert.__name__ = f"int >= {minimum}"
    return convert


positive_int = int_at_least(1)


def int_in_range(minimum, maximum):
    """An argparse type: an int in ``[minimum, maximum]``."""
    kind = f"an int in [{minimum}, {maximum}]"

    def convert(text):
        value = _number(text, int, kind)
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be {kind}. Received: {value}")
        return value

    convert.__name__ = kind
    return convert


# What keras.utils.set_random_seed and numpy accept, with room for seed + 1.
seed = int_in_range(0, 2**31 - 2)


def positive_float(text):
    """An argparse type: a finite number > 0."""
    value = _number(text, float, "a finite number > 0")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0. Received: {value}")
    return value


def nonnegative_float(text):
    """An argparse type: a finite number >= 0."""
    value = _number(text, float, "a finite number >= 0")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0. Received: {value}")
    return value


def fraction(text):
    """An argparse type: a number in [0, 1)."""
    value = _number(text, float, "a number in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1). Received: {value}")
    return value


def int_list(text):
    """An argparse type: comma-separated ints >= 1 (``"60,100,140"``), or ``"none"`` for ``[]``."""
    if text.strip().lower() == "none":
        return []
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated ints >= 1 (or 'none'). Received: {text!r}")
    return values


def check_solver(flag, name, num_steps=None):
    """Raises :class:`UsageError` unless ``keras_implicit.solvers.get(name)`` accepts the name.

    Also refuses ``num_steps`` with an adaptive solver, which would ignore it.
    """
    from keras_implicit import solvers

    try:
        solver = solvers.get(name)
    except (ValueError, TypeError) as error:
        raise UsageError(f"{flag}: {error}") from None
    if num_steps is not None and getattr(solver, "adaptive", False):
        raise UsageError(f"--num-steps applies to fixed-grid solvers only, and {name!r} is "
                         f"adaptive. Received: --num-steps={num_steps}, {flag}={name!r}")


def check_output_directory(out, flag="--out"):
    """Raises :class:`UsageError` unless ``out`` is, or can be created as, a writable directory.

    Checks without creating anything: ``out`` is an existing directory or
    does not exist, its nearest existing ancestor is a directory, and we may
    write there.
    """
    if not out or not str(out).strip():
        raise UsageError(f"{flag} must name a directory. Received: {flag}={out!r}")
    if "\0" in str(out):
        raise UsageError(f"{flag} must not contain a NUL character. Received: {flag}={out!r}")
    path = os.path.abspath(os.fspath(out))
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} must be a directory, and a file exists there. "
                         f"Received: {flag}={out!r}")
    existing = path
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"{flag} cannot be created: {existing!r} is a file, not a directory. "
                         f"Received: {flag}={out!r}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} is not writable: no permission to write in {existing!r}. "
                         f"Received: {flag}={out!r}")
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = 255
    missing = os.path.relpath(path, existing).split(os.sep) if path != existing else []
    if any(len(part.encode(errors="surrogateescape")) > name_max for part in missing):
        raise UsageError(f"{flag} has a name longer than the filesystem allows ({name_max} "
                         f"bytes). Received: {flag}={out!r}")


#: Arguments that do not change a run's results (a rerun with other values continues it).
NOT_SETTINGS = ("out", "overwrite", "verbose")


def check_run(args, command, build, result_names):
    """The end of a command's ``validate``: the library's own checks of the argument
    combination (``build(args)``, e.g. bdf with backprop), ``--out``, and a rerun's
    settings against the ones recorded there (every argument but ``NOT_SETTINGS``).

    Sets ``args.run_directory``. Raises :class:`UsageError`; creates nothing.
    """
    from keras_implicit.experiments import run_directory

    try:
        build(args)
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from None
    check_output_directory(args.out)
    settings = {key: list(value) if isinstance(value, tuple) else value
                for key, value in sorted(vars(args).items())
                if not key.startswith("_") and key not in NOT_SETTINGS}
    args.run_directory = run_directory.RunDirectory(args.out, command, settings, result_names)
    args.run_directory.check(args.overwrite)
