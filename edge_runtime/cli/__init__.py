"""The ``edge-runtime`` console script: one parser, a module per subcommand.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (taking the parsed namespace, returning an exit code). Commands that live outside
the device half (``convert``) plug in through the ``edge_runtime.commands`` entry-point
group, so this package never imports the converter.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from edge_runtime import __version__
from edge_runtime.errors import EdgeRuntimeError

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

BUILTIN_COMMANDS: tuple[str, ...] = ("run", "bench", "serve", "ask", "doctor", "schemas")


def _registrars() -> list[Register]:
    found: list[Register] = []
    for name in BUILTIN_COMMANDS:
        module_name = f"edge_runtime.cli.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        found.append(module.register)
    for ep in entry_points(group="edge_runtime.commands"):
        found.append(ep.load())
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-runtime",
        description="Language models for field devices: convert, serve over MQTT, ask.",
    )
    parser.add_argument("--version", action="version", version=f"edge-runtime {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _registrars():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except EdgeRuntimeError as exc:
        print(f"edge-runtime: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edge-runtime: interrupted", file=sys.stderr)
        return 130


def console() -> None:
    """The ``edge-runtime`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console()
