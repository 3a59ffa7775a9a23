"""The ``keras-implicit`` console script.

Each subcommand lives in ``keras_implicit.experiments.<name>`` as a module with
``add_arguments(parser)``, ``validate(args)`` and ``run(args) -> int``; this
file only dispatches. ``validate`` checks every argument, the data and the
output directory before anything is trained or created, and raises
``arguments.UsageError``, which becomes argparse's one-line ``error:`` message
and exit status 2, as a bad flag does.
"""

import argparse
import importlib
import sys

COMMANDS = {
    "table1": ("table1", "Reproduce Table 1 of the Neural ODE paper on MNIST."),
    "flow": ("flow2d", "Train an FFJORD continuous flow on a 2-D toy density."),
    "spiral": ("spiral", "Train a latent ODE on irregularly sampled spirals."),
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-implicit", description="Experiments with implicit layers for Keras 3.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"keras_implicit.experiments.{module_name}")
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(_module=module, _parser=command)
    return parser


def parse_args(argv=None):
    """Parses and validates the command line; exits with status 2 and a message if it is wrong."""
    from keras_implicit.experiments.arguments import UsageError

    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # reported with the subcommand's usage, as its other errors
        shown = " ".join(a if a.isprintable() else repr(a) for a in unknown)
        args._parser.error(f"unrecognized arguments: {shown}")
    try:
        args._module.validate(args)
    except UsageError as error:
        args._parser.error(" ".join(str(error).split()))  # one line, exit status 2
    return args


def main(argv=None):
    from keras_implicit.experiments.arguments import UsageError

    args = parse_args(argv)
    try:
        return args._module.run(args)
    except UsageError as error:  # found once the run starts (--out cannot be made, in use)
        args._parser.error(" ".join(str(error).split()))
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback (files are written whole)
        resume = (" Rerun the same command to resume after the last finished epoch."
                  if args.command == "table1" else "")
        print(f"keras-implicit {args.command}: interrupted.{resume}", file=sys.stderr)
        return 130
    finally:
        if getattr(args, "run_directory", None) is not None:
            args.run_directory.release()


if __name__ == "__main__":
    sys.exit(main())
