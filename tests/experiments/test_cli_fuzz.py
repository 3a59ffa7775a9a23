"""Property-based test of the three CLIs' argument parsing and validation (issue 10).

Random flags with random values (numbers of every size and sign, NaN, infinities,
text, solver names, model lists, missing values, unknown flags) and random ``--out``
paths (new, an existing file, below a file, empty): parsing and validating either
succeeds or exits with status 2 and a one-line ``keras-implicit <command>: error: ...``
message, never another exception or a traceback, and never creates ``--out``.
Nothing is trained: only ``cli.parse_args`` runs.

The example count is small for CI; run it longer with e.g.
``KERAS_IMPLICIT_FUZZ_EXAMPLES=2000 pytest tests/experiments/test_cli_fuzz.py -n 0``.
"""

import argparse
import contextlib
import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_implicit import cli
from keras_implicit.experiments import measure

EXAMPLES = int(os.environ.get("KERAS_IMPLICIT_FUZZ_EXAMPLES", "25"))
SPECIAL = ["", "0", "-0", "1", "-1", "2", "3", "8", "64", "128", "1e-3", "0.5", "1.5", "nan",
           "inf", "-inf", "1e309", "2147483647", "2147483648", str(2**64), "none", "bogus",
           "64,x", "64,64", "0,1", "5,5", "3,5,7", "mlp", "mlp,odenet", "mlp,mlp", "resnet,vgg",
           "dopri5", "rk4", "euler", "bdf", "tfp_dopri5", "adam", "sgd", "quick", "paper",
           "adjoint", "backprop", "gru", "ode_rnn", "moons", "exact", "--", "-x", "--steps",
           "\u00e9", " 7 "]
# Valid-looking values, so that many command lines parse.
PLAUSIBLE = st.one_of(st.integers(1, 300).map(str), st.floats(1e-6, 0.99).map(repr))
VALUES = st.one_of(st.sampled_from(SPECIAL), PLAUSIBLE, PLAUSIBLE,
                   st.integers(-2**70, 2**70).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.text(max_size=12))


def options(command):
    """``{flag: takes_a_value}`` of a subcommand, from its parser (no --help, --out, --data)."""
    parser = argparse.ArgumentParser(prog=f"keras-implicit {command}")
    module = __import__(f"keras_implicit.experiments.{cli.COMMANDS[command][0]}",
                        fromlist=["add_arguments"])
    module.add_arguments(parser)
    flags = {}
    for action in parser._actions:
        for flag in action.option_strings:
            if flag not in ("-h", "--help", "--out", "--data"):
                flags[flag] = action.nargs != 0
    return flags


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory):
    """A small .npz in MNIST's format, so that table1's data check takes milliseconds."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "mnist.npz"
    np.savez(path, x_train=rng.integers(0, 256, (600, 28, 28), dtype=np.uint8),
             y_train=rng.integers(0, 10, 600, dtype=np.uint8),
             x_test=rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
             y_test=rng.integers(0, 10, 100, dtype=np.uint8))
    return str(path)


@st.composite
def command_lines(draw, command):
    flags = options(command)
    argv = []
    for flag in draw(st.lists(st.sampled_from(sorted(flags) + ["--bogus-flag"]), max_size=5)):
        argv.append(flag)
        if flags.get(flag, draw(st.booleans())):
            if draw(st.integers(0, 9)):  # sometimes the value is missing
                argv.append(draw(VALUES))
    out_kind = draw(st.sampled_from(["new", "new", "new", "file", "below_file", "empty"]))
    return argv, out_kind


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_argument_parsing_never_raises_anything_but_a_usage_error(command, tiny_mnist,
                                                                  tmp_path, monkeypatch):
    monkeypatch.setenv(measure.ALLOCATOR_ENVIRONMENT_VARIABLE, "false")
    (tmp_path / "a_file").write_text("mine")
    outs = {"new": str(tmp_path / "new" / "out"), "file": str(tmp_path / "a_file"),
            "below_file": str(tmp_path / "a_file" / "out"), "empty": ""}
    outcomes = {"parsed": 0, "usage error": 0}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(command_lines(command))
    def check(case):
        argv, out_kind = case
        argv = [command] + argv + ["--out", outs[out_kind]]
        if command == "table1":
            argv += ["--data", tiny_mnist]
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                args = cli.parse_args(argv)
        except SystemExit as exit_info:
            text = stderr.getvalue()
            assert exit_info.code == 2, (argv, text)
            assert "Traceback" not in text, (argv, text)
            last = text.rstrip("\n").splitlines()[-1]
            assert last.startswith(f"keras-implicit {command}: error: "), (argv, text)
            assert text.rstrip("\n").splitlines()[0].startswith("usage: "), (argv, text)
            outcomes["usage error"] += 1
        else:
            assert isinstance(args, argparse.Namespace) and args.command == command
            assert out_kind == "new", argv  # the others must be refused
            outcomes["parsed"] += 1
        assert not (tmp_path / "new").exists(), argv  # validation creates nothing
        assert (tmp_path / "a_file").read_text() == "mine"

    check()
    print(command, outcomes)
    assert outcomes["usage error"] > 0
