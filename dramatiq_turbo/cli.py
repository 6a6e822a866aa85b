"""The ``dramatiq-turbo`` command."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__

__all__ = ["build_parser", "main"]


# Modules that add a sub-command.  Each defines ``register(subparsers)``, which
# adds its parser and sets ``handler`` (a function of the parsed arguments that
# returns the exit code) as the parser's default.
_COMMAND_MODULES: tuple[str, ...] = ("dramatiq_turbo.presets", "dramatiq_turbo.monitor.cli")


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser, with every sub-command the suite ships."""
    parser = argparse.ArgumentParser(
        prog="dramatiq-turbo",
        description="Tools for Dramatiq deployments that use dramatiq_turbo.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (``sys.argv[1:]`` by default) and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    return int(handler(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
