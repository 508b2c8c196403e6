"""One matplotlib style for the whole book.

Chapters call :func:`use_book_style` once and :func:`norm_color` so that a
normalizer has the same color in every figure of the book.
"""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt

__all__ = ["use_book_style", "norm_color", "NORM_COLORS", "subplots"]

# A stable color per normalizer name, shared by every chapter.
NORM_COLORS = {
    "bn": "#1f77b4",
    "ln": "#d62728",
    "in": "#2ca02c",
    "gn": "#9467bd",
    "bgn": "#8c564b",
    "pn": "#e377c2",
    "rms": "#7f7f7f",
    "vn": "#bcbd22",
    "frn": "#17becf",
    "evonorm_b0": "#ff7f0e",
    "evonorm_s0": "#aec7e8",
    "wn": "#ff9896",
    "sws": "#98df8a",
    "ws": "#c5b0d5",
    "none": "#000000",
    # whitening methods (Review II and Analysis)
    "zca": "#393b79",
    "pca": "#e6550d",
    "cd": "#31a354",
    "iternorm": "#fd8d3c",
}
_FALLBACK = plt.get_cmap("tab20").colors

_STYLE = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "lines.linewidth": 1.6,
    "font.family": "DejaVu Sans",
    "figure.constrained_layout.use": True,
}


def use_book_style() -> None:
    """Apply the book's matplotlib style (idempotent).

    Inside a Jupyter kernel it also selects the inline backend, so that figures
    are shown (and rendered into the book) even when ``MPLBACKEND=Agg`` is set in
    the environment.
    """
    shell = _kernel_shell()
    if shell is not None and "inline" not in mpl.get_backend():
        shell.run_line_magic("matplotlib", "inline")
    mpl.rcParams.update(_STYLE)


def _kernel_shell():
    """The IPython shell if running inside a Jupyter kernel, else ``None``."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return shell if shell is not None and getattr(shell, "kernel", None) is not None else None


def norm_color(name: str) -> str:
    """The book's color for a normalizer name; unknown names get a stable fallback color."""
    key = name.lower()
    if key in NORM_COLORS:
        return NORM_COLORS[key]
    idx = sum(ord(ch) for ch in key) % len(_FALLBACK)
    return mpl.colors.to_hex(_FALLBACK[idx])


def subplots(nrows: int = 1, ncols: int = 1, *, width: float = 3.4, height: float = 3.0, **kw):
    """``plt.subplots`` with panel-sized figures in the book style."""
    use_book_style()
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kw)
