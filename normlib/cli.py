"""The command registry and the parser of ``python -m normlib <command>``.

A command is a function ``fn(args) -> int`` registered with :func:`command`; its optional
``fn.configure(parser)`` adds its arguments. The modules that define commands
(:mod:`normlib.diagnose`) import this module, and the entry point ``normlib/__main__.py``
imports it too, so the registry is one object however the program was started and no
module imports the entry point.

Commands:

- ``info``: the library version, device, size preset and registered normalizers.
- ``diagnose``: a model's three properties at initialization, with verdicts
  (:mod:`normlib.diagnose`), for normlib's models or ``--model package.module:factory``;
  exit status 1 on a failure.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["COMMANDS", "build_parser", "command", "main"]

COMMANDS: dict[str, tuple[str, Callable]] = {}

# The modules whose import registers commands; imported when the parser is built.
COMMAND_MODULES = ("normlib.diagnose",)


def command(name: str, help: str):
    """Register ``fn(args)`` as a sub-command; ``fn.configure(parser)`` adds its arguments."""

    def decorator(fn):
        COMMANDS[name] = (help, fn)
        return fn

    return decorator


@command("info", "print the version, device, size preset and registered normalizers")
def _info(args) -> int:
    import normlib
    from normlib.device import default_device, size_preset

    print(f"normlib {normlib.__version__}")
    print(f"device: {default_device()}  size preset: {size_preset()}")
    print("normalizers: " + ", ".join(normlib.available_norms()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    import importlib

    import normlib  # noqa: F401  (fills the registry of normalizers the commands list)

    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog="python -m normlib", description="normlib on the command line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (help_text, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure = getattr(fn, "configure", None)
        if configure is not None:
            configure(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; a user's error (a bad option, environment variable or file, a missing
    optional package) is one line on standard error naming it, and exit status 2, as argparse
    does for its own errors. A command returns its own status otherwise (``diagnose``: 1 when a
    verdict fails)."""
    import sys

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, ImportError, MemoryError) as err:
        message = str(err) or type(err).__name__
        print(f"{parser.prog} {args.command}: error: {message.splitlines()[0]}", file=sys.stderr)
        return 2
