"""Command line: ``python -m normlib <command>``.

Commands:
    info      the library version, device, size preset and registered normalizers.
    diagnose  a model's three properties at initialization, with verdicts (normlib.diagnose).
"""

from __future__ import annotations

import argparse
import sys

COMMANDS: dict[str, tuple[str, callable]] = {}


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
    # `python -m normlib` runs this file as __main__: alias it so that modules registering
    # commands with `from normlib.__main__ import command` reach this COMMANDS.
    sys.modules.setdefault("normlib.__main__", sys.modules[__name__])
    import normlib  # noqa: F401  (sub-commands register themselves on import)
    import normlib.diagnose  # noqa: F401

    parser = argparse.ArgumentParser(prog="python -m normlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (help_text, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure = getattr(fn, "configure", None)
        if configure is not None:
            configure(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
