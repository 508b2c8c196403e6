"""Execute one chapter outside the book build, for quick iteration.

    .venv/bin/python tests/run_chapter.py chapters/motivation.md [--size small]

It converts the MyST notebook with jupytext, runs every cell (hidden ones too)
and reports each cell's time; a failing cell exits non-zero with its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jupytext
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_ext"))
import kernel_client  # noqa: E402  (the book's fix for missed wake-ups of the kernel client)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("chapter", type=Path)
    parser.add_argument("--size", choices=["small", "full"], default=None)
    parser.add_argument("--timeout", type=int, default=300)
    args = parser.parse_args()
    if args.size:
        os.environ["NORMLIB_SIZE"] = args.size
    nb = jupytext.read(args.chapter)
    kernel_client.apply()
    client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(args.chapter.parent)}})
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as err:
        print(err, file=sys.stderr)
        return 1
    finally:
        total = time.perf_counter() - start
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        meta = cell.metadata.get("execution", {})
        t0, t1 = meta.get("iopub.execute_input"), meta.get("shell.execute_reply")
        if t0 and t1:
            from datetime import datetime
            dt = (datetime.fromisoformat(t1.rstrip("Z")) - datetime.fromisoformat(t0.rstrip("Z")))
            if dt.total_seconds() > 2:
                print(f"cell {i}: {dt.total_seconds():.1f}s  {cell.source.splitlines()[0][:60]}")
    print(f"{args.chapter}: all cells ran in {total:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
