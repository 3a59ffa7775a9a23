"""The ``keras-implicit`` console script.

Each subcommand lives in ``keras_implicit.experiments.<name>`` as a module with
``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches.
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
        command.set_defaults(_module=module)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args._module.run(args)


if __name__ == "__main__":
    sys.exit(main())
