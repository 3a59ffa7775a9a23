"""Runnable experiments behind ``keras-implicit`` subcommands.

Each module defines ``add_arguments(parser)`` (argparse, no heavy imports at
module level) and ``run(args) -> int``.
"""
