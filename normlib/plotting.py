"""One matplotlib style for the whole book.

Chapters call :func:`use_book_style` once, draw with :func:`figure` (sized for
the book's content column) and style every normalizer with :func:`norm_style`,
so that a normalizer has the same color *and* marker in every figure of the
book. Theory curves use :data:`THEORY` so that they stand out from data.

Sizes: a figure is drawn at :data:`COLUMN_WIDTH` inches, which the book shows
at its natural size (1 inch = 96 CSS pixels, SVG output in a kernel), so that
tick and legend text (8 pt) is about 11 CSS pixels on the page. Multi-panel
figures use at most three panels a row.

>>> norm_style("bn")["marker"], norm_style("BN")["color"] == norm_color("bn")
('o', True)
"""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt

__all__ = [
    "use_book_style", "norm_color", "norm_marker", "norm_style", "norm_label", "NORM_COLORS",
    "NORM_MARKERS", "THEORY", "THEORY_BAND", "COLUMN_WIDTH", "figure", "subplots", "glue_figure",
]

#: Width of the book's content column, in inches (shown at 96 CSS pixels an inch).
COLUMN_WIDTH = 6.6
#: Largest number of panels in one row of a column-wide figure.
MAX_PANELS_PER_ROW = 3

# One color and one marker per normalizer name, shared by every chapter. Colors are
# distinct within each family that is plotted together (activation normalizers,
# whitening, weight normalizers); no two names share both color and marker.
NORM_COLORS = {
    "none": "#000000",
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
    "evonorm_s0": "#8dd3c7",
    "population": "#6a3d9a",
    "switchable": "#b15928",
    "mode_norm": "#fb9a99",
    "lrn": "#636363",
    "divisive": "#a6761d",
    "local_contrast": "#e7298a",
    "local_context": "#66a61e",
    "attentive": "#7570b3",
    "ln2d": "#fdbf6f",
    "rms2d": "#b2df8a",
    # whitening methods (Review II and Analysis)
    "zca": "#393b79",
    "pca": "#e6550d",
    "cholesky": "#31a354",
    "cd": "#31a354",
    "iternorm": "#d6616b",
    "gw": "#3182bd",
    "switchable_whitening": "#843c39",
    # weight normalizers (Review III)
    "wn": "#e6ab02",
    "cwn": "#8c6d31",
    "own": "#637939",
    "oni": "#7b4173",
    "ws": "#c51b7d",
    "sws": "#1b9e77",
    "sn": "#00441b",
    "normprop": "#bd9e39",
}
NORM_MARKERS = {
    "none": "x",
    "bn": "o",
    "ln": "s",
    "in": "^",
    "gn": "D",
    "bgn": "v",
    "pn": "P",
    "rms": "*",
    "vn": "<",
    "frn": ">",
    "evonorm_b0": "h",
    "evonorm_s0": "H",
    "population": "p",
    "switchable": "X",
    "mode_norm": "d",
    "lrn": "1",
    "divisive": "2",
    "local_contrast": "3",
    "local_context": "4",
    "attentive": "8",
    "ln2d": "s",
    "rms2d": "*",
    "zca": "o",
    "pca": "s",
    "cholesky": "^",
    "cd": "^",
    "iternorm": "D",
    "gw": "v",
    "switchable_whitening": "X",
    "wn": "o",
    "cwn": "s",
    "own": "^",
    "oni": "D",
    "ws": "v",
    "sws": "P",
    "sn": "*",
    "normprop": "h",
}
# Names a reader sees in legends.
_LABELS = {
    "none": "no norm", "bn": "BatchNorm", "ln": "LayerNorm", "in": "InstanceNorm",
    "gn": "GroupNorm", "bgn": "BatchGroupNorm", "pn": "PositionalNorm", "rms": "RMSNorm",
    "vn": "VarianceNorm", "frn": "FRN", "evonorm_b0": "EvoNorm-B0", "evonorm_s0": "EvoNorm-S0",
    "population": "PopulationNorm", "switchable": "SwitchableNorm", "mode_norm": "ModeNorm",
    "lrn": "LRN", "local_contrast": "local contrast", "divisive": "divisive",
    "local_context": "local context", "attentive": "attentive", "ln2d": "LayerNorm2d",
    "rms2d": "RMSNorm2d", "zca": "ZCA", "pca": "PCA",
    "cholesky": "Cholesky", "cd": "Cholesky",
    "iternorm": "IterNorm", "gw": "group whitening", "switchable_whitening": "switchable whitening",
    "wn": "WeightNorm", "cwn": "centered WN", "own": "orthogonal WN", "oni": "ONI",
    "ws": "WS", "sws": "scaled WS", "sn": "spectral norm", "normprop": "NormProp",
}
_FALLBACK = plt.get_cmap("tab20").colors
_FALLBACK_MARKERS = "os^Dv<>PX*hH"

#: Line style of a theoretical prediction: drawn on top, dashed, in a color no normalizer uses.
THEORY = {"color": "#222222", "linestyle": "--", "linewidth": 2.0, "zorder": 5}
#: Style of a theoretical band (``fill_between``): light grey hatching behind the data.
THEORY_BAND = {"facecolor": "#bbbbbb", "alpha": 0.45, "edgecolor": "none", "zorder": 0}

_STYLE = {
    "figure.figsize": (COLUMN_WIDTH, 3.0),
    "figure.dpi": 96,
    "savefig.dpi": 96,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "lines.linewidth": 1.6,
    "lines.markersize": 5,
    "font.family": "DejaVu Sans",
    "figure.constrained_layout.use": True,
    "svg.fonttype": "path",
}


def use_book_style(fmt: str = "svg") -> None:
    """Apply the book's matplotlib style (idempotent).

    Inside a Jupyter kernel it also selects the inline backend (so that figures
    are shown and rendered into the book even when ``MPLBACKEND=Agg`` is set) and
    the inline output format: ``"svg"`` (default; sharp and light for line plots)
    or ``"png"`` (for figures with many thousands of points or images).
    """
    if fmt not in ("svg", "png"):
        raise ValueError(f"fmt must be 'svg' or 'png', got {fmt!r}")
    shell = _kernel_shell()
    if shell is not None:
        if "inline" not in mpl.get_backend():
            shell.run_line_magic("matplotlib", "inline")
        try:
            from matplotlib_inline.backend_inline import set_matplotlib_formats
        except ImportError:  # pragma: no cover - matplotlib-inline ships with ipykernel
            pass
        else:
            set_matplotlib_formats(fmt)
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


def norm_marker(name: str) -> str:
    """The book's marker for a normalizer name; unknown names get a stable fallback marker."""
    key = name.lower()
    if key in NORM_MARKERS:
        return NORM_MARKERS[key]
    return _FALLBACK_MARKERS[sum(ord(ch) for ch in key) % len(_FALLBACK_MARKERS)]


def norm_label(name: str) -> str:
    """The name a reader sees in a legend (``"bn"`` -> ``"BatchNorm"``); unknown names pass through."""
    return _LABELS.get(name.lower(), name)


def norm_style(name: str, *, label: bool = True) -> dict:
    """Keyword arguments for ``ax.plot`` that draw normalizer ``name`` in the book's style.

    ``ax.plot(x, y, **norm_style("gn"))`` gives GroupNorm its color, marker and
    legend label; pass ``label=False`` to leave the label out.
    """
    style = {"color": norm_color(name), "marker": norm_marker(name)}
    if label:
        style["label"] = norm_label(name)
    return style


def figure(nrows: int = 1, ncols: int = 1, *, height: float | None = None, width: float = COLUMN_WIDTH,
           **kw):
    """A figure sized for the book's column: ``(fig, axes)`` with ``axes`` a 2-D array.

    ``width`` is the whole figure's width in inches (default: the column);
    ``height`` defaults to 2.6 inches a row for one panel a row and 2.3 for more.
    More than :data:`MAX_PANELS_PER_ROW` panels in a row are refused: put them on
    several rows, where each stays readable.
    """
    if ncols > MAX_PANELS_PER_ROW:
        raise ValueError(f"ncols={ncols}: at most {MAX_PANELS_PER_ROW} panels a row stay readable in the "
                         f"book's column; use more rows")
    use_book_style()
    if height is None:
        height = nrows * (2.9 if ncols == 1 else 2.4)
    return plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, **kw)


def subplots(nrows: int = 1, ncols: int = 1, *, width: float = 3.4, height: float = 3.0, **kw):
    """``plt.subplots`` with panel-sized figures in the book style (``width`` and ``height`` per panel)."""
    use_book_style()
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kw)


def glue_figure(name: str, fig) -> None:
    """Glue ``fig`` under ``name`` for a ``{glue:figure}`` directive, and close it.

    Closing keeps the inline backend from also showing the figure at the end of
    the cell (a second, uncaptioned copy on the page).
    """
    from myst_nb import glue

    glue(name, fig, display=False)
    plt.close(fig)
