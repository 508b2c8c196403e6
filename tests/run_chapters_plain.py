"""Run chapters without Jupyter: every code cell, hidden ones too, in one Python process.

    python tests/run_chapters_plain.py notebooks/*.ipynb [--size full] [--report out.json]

For a machine that has torch, numpy, matplotlib, pandas and sympy but no Jupyter stack (a
GPU server, say): it reads chapters already converted to ``.ipynb`` (``make notebooks``),
executes their code cells in order in a fresh namespace per chapter, and reports each
chapter's time and its first failing cell. Where ``myst_nb`` or ``IPython`` is missing, small
stand-ins record ``glue`` values and print what ``display`` shows; a cell that needs a live
kernel (widgets) is reported as such. The exit status is non-zero if any chapter failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import types
from pathlib import Path


def _install_stand_ins() -> None:
    try:
        import myst_nb  # noqa: F401
    except ImportError:
        glued: dict = {}
        mod = types.ModuleType("myst_nb")

        def glue(name, variable, display=True):
            glued[name] = variable

        mod.glue = glue
        mod.glued = glued
        sys.modules["myst_nb"] = mod
    try:
        import IPython.display  # noqa: F401
    except ImportError:
        ipy = types.ModuleType("IPython")
        disp = types.ModuleType("IPython.display")

        class _Shown:
            def __init__(self, data=None, *args, **kwargs):
                self.data = data

        for name in ("HTML", "Markdown", "Math", "SVG", "Image", "Latex", "JSON"):
            setattr(disp, name, type(name, (_Shown,), {}))
        disp.display = lambda *objs, **kw: None
        ipy.display = disp
        ipy.get_ipython = lambda: None
        ipy.version_info = (0, 0, 0)  # matplotlib reads it when it looks for a kernel
        sys.modules["IPython"] = ipy
        sys.modules["IPython.display"] = disp


def _code_cells(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    cells = []
    for cell in nb["cells"]:
        if cell.get("cell_type") != "code":
            continue
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        # IPython magics and shell escapes have no meaning here.
        lines = [ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))]
        cells.append("\n".join(lines))
    return cells


def run(path: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns: dict = {"__name__": "__main__", "display": lambda *a, **k: None}
    start = time.perf_counter()
    result = {"chapter": path.stem, "cells": 0, "status": "ok"}
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        for i, src in enumerate(_code_cells(path)):
            t0 = time.perf_counter()
            try:
                exec(compile(src, f"{path.stem}[cell {i}]", "exec"), ns)
            except ModuleNotFoundError as err:
                if err.name and err.name.split(".")[0] in ("ipywidgets", "IPython", "ipykernel"):
                    result.setdefault("needs_kernel", []).append(i)
                    continue
                raise
            finally:
                plt.close("all")
            result["cells"] = i + 1
            result.setdefault("slowest", []).append((round(time.perf_counter() - t0, 2), i))
    except BaseException as err:  # report and go on with the next chapter
        result["status"] = "failed"
        result["error"] = "".join(traceback.format_exception_only(type(err), err)).strip()[-2000:]
        result["traceback"] = traceback.format_exc()[-4000:]
    finally:
        os.chdir(cwd)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["slowest"] = sorted(result.get("slowest", []), reverse=True)[:3]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--size", choices=["small", "full"], default=None)
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args()
    if args.size:
        os.environ["NORMLIB_SIZE"] = args.size
    _install_stand_ins()
    results = []
    for nb in args.notebooks:
        r = run(nb.resolve())
        results.append(r)
        line = f"{r['chapter']:22s} {r['status']:6s} {r['seconds']:7.1f} s  cells {r['cells']}"
        if r["status"] != "ok":
            line += f"\n    {r['error']}"
        print(line, flush=True)
        if args.report:
            args.report.write_text(json.dumps(results, indent=1))
    return 1 if any(r["status"] != "ok" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
