"""Command line: ``python -m normlib <command>`` (the commands live in :mod:`normlib.cli`).

Commands:
    info      the library version, device, size preset and registered normalizers.
    diagnose  a model's three properties at initialization, with verdicts (normlib.diagnose):
              normlib's models or ``--model package.module:factory``; exit status 1 on a failure.
"""

from __future__ import annotations

import sys

from normlib.cli import COMMANDS, build_parser, command, main

__all__ = ["COMMANDS", "build_parser", "command", "main"]

if __name__ == "__main__":
    sys.exit(main())
