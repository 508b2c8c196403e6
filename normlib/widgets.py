"""Interactive explorers of the three properties at initialization (ipywidgets).

:class:`PropagationExplorer` shows, for a VGG-style CNN or a ResNet at initialization, the
activation variance, the cosine similarity of different samples and the gradient norms layer
by layer: the curves behind the verdicts of :mod:`normlib.diagnose`. A dropdown chooses the
normalizer; sliders set the depth, the group size (GroupNorm) and the batch size, and every
change re-probes the model and redraws the plots.

The same plots are available without widgets (:func:`propagation_profiles` and
:func:`plot_propagation`), so the rendered book shows static figures and a live notebook can
show the explorer; nothing here loads scripts from the internet.

For the rendered book, where no kernel runs, the explorers are static
(:class:`normlib.explorer.StaticExplorer`): every setting is computed when the page is built
and a small JavaScript viewer redraws the panels when a slider moves. Each has a function that
computes the grid of settings, tested against direct calls into normlib, and one that turns
the grid into the explorer:

* :func:`propagation_grid` and :func:`static_propagation_explorer`: the three properties at
  initialization against normalizer, depth, group size and batch size (chapter "Training map");
* :func:`descent_grid` and :func:`descent_explorer`: gradient-descent paths on a least-squares
  problem against step size and input transform (chapter "Motivation");
* :func:`spectrum_grid` and :func:`spectrum_explorer`: Hessian eigenvalues and spectral density
  of a small VGG during training, with and without a normalizer (chapter "Hessian
  conditioning").

Example:
    >>> from normlib.widgets import propagation_profiles
    >>> profiles = propagation_profiles(["bn", "ln"], model="vgg", depth=6, width=8, batch_size=16)
    >>> sorted(profiles), list(profiles["bn"].columns[:2])
    (['bn', 'ln'], ['layer', 'name'])
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from normlib.diagnose import Diagnosis, diagnose_config
from normlib.explorer import Control, Line, Panel, StaticExplorer
from normlib.train import TrainConfig

__all__ = [
    "GROUPED_NORMS",
    "PANELS",
    "explorer_config",
    "propagation_profiles",
    "plot_propagation",
    "PropagationExplorer",
    "propagation_grid",
    "static_propagation_explorer",
    "DescentRuns",
    "descent_grid",
    "descent_contours",
    "descent_explorer",
    "SpectrumPoint",
    "spectrum_grid",
    "spectrum_explorer",
]

#: Normalizers that take a ``group_size``.
GROUPED_NORMS = ("gn", "bgn")
#: The columns of the probe table each panel plots, with its title and y scale.
PANELS = (
    ("variance", "activation variance", "log"),
    ("cosine_similarity", "cosine similarity of samples", "linear"),
    ("weight_grad_norm", "weight-gradient norm", "log"),
)


def explorer_config(norm: str = "bn", *, model: str = "vgg", depth: int = 10, width: int = 16,
                    group_size: int | None = None, batch_size: int = 32, skipinit: bool = False,
                    seed: int = 0) -> TrainConfig:
    """The :class:`normlib.train.TrainConfig` an explorer probes (float64, digits).

    ``group_size`` is used only by the grouped normalizers (:data:`GROUPED_NORMS`).

    Example:
        >>> explorer_config("gn", group_size=4).norm_kwargs, explorer_config("bn", group_size=4).norm_kwargs
        ({'group_size': 4}, {})
    """
    kwargs = {"group_size": group_size} if norm in GROUPED_NORMS and group_size else {}
    return TrainConfig(model=model, depth=depth, width=width, norm=norm, norm_kwargs=kwargs,
                       skipinit=skipinit, batch_size=batch_size, seed=seed, dtype="float64")


def propagation_profiles(norms: Iterable[str], **kwargs) -> dict[str, pd.DataFrame]:
    """The per-layer probe table of each normalizer in ``norms`` (keyword arguments as
    :func:`explorer_config`).

    Returns:
        dict: ``{norm: table}`` with the columns of :func:`normlib.propagation.probe.probe`.
    """
    return {norm: diagnose_config(explorer_config(norm, **kwargs)).layers for norm in norms}


def plot_propagation(profiles: dict[str, pd.DataFrame], axes=None, colors: dict | None = None):
    """Plot variance, similarity and weight-gradient norm against depth, one line per profile.

    Args:
        profiles: ``{label: probe table}`` (for example from :func:`propagation_profiles`).
        axes: three matplotlib axes; default a new figure with three panels.
        colors: ``{label: color}``; default the book's normalizer colors.

    Returns:
        the matplotlib figure.
    """
    from normlib.plotting import norm_color, subplots

    if axes is None:
        fig, grid = subplots(1, len(PANELS), width=3.3, height=2.8)
        axes = list(grid[0])
    else:
        axes = list(axes)
        if len(axes) != len(PANELS):
            raise ValueError(f"axes must hold {len(PANELS)} axes, got {len(axes)}")
        fig = axes[0].figure
    colors = colors or {}
    for ax, (column, title, scale) in zip(axes, PANELS):
        ax.clear()
        for label, table in profiles.items():
            color = colors.get(label, norm_color(label))
            ax.plot(table["layer"], table[column], marker="o", markersize=2.5, label=label,
                    color=color)
        ax.set_yscale(scale)
        ax.set_title(title)
        ax.set_xlabel("layer")
    axes[0].legend()
    return fig


class PropagationExplorer:
    """Sliders and a dropdown that re-probe a model at initialization and redraw its curves.

    Widgets: ``norm`` (dropdown), ``depth``, ``group_size`` (enabled for GroupNorm only) and
    ``batch_size`` (sliders). Every change calls :meth:`update`, which rebuilds the model
    (seed ``seed``), probes it on a batch of digits and redraws the three panels of
    :func:`plot_propagation` into ``output``, with the verdicts of :mod:`normlib.diagnose`
    below. Display it with ``display(explorer)`` or ``explorer.widget``.

    Args:
        model: ``"vgg"`` or ``"resnet"``.
        norms: the dropdown's normalizers.
        norm: the initial normalizer.
        depth: the initial depth (ResNet: ``6n + 2``).
        width: channels of the first stage; the group sizes offered are its divisors.
        batch_size: the initial batch size.
        skipinit: ResNet only, SkipInit branches.
        seed: the initialization seed.

    Attributes:
        diagnosis: the :class:`normlib.diagnose.Diagnosis` of the current setting.
        figure: the matplotlib figure redrawn by :meth:`update`.
        updates: how many times :meth:`update` has run.
    """

    def __init__(self, model: str = "vgg", norms: Iterable[str] = ("bn", "ln", "in", "gn", "none"),
                 norm: str = "bn", depth: int | None = None, width: int = 16, batch_size: int = 32,
                 skipinit: bool = False, seed: int = 0):
        import ipywidgets as widgets
        import matplotlib.pyplot as plt

        from normlib.plotting import use_book_style

        norms = list(norms)
        if norm not in norms:
            raise ValueError(f"norm={norm!r} is not among norms={norms}; add it or pick one of them")
        if model not in ("vgg", "resnet"):
            raise ValueError(f"model must be 'vgg' or 'resnet', got {model!r}")
        depth = depth if depth is not None else (10 if model == "vgg" else 20)
        # Validates everything else (depth 6n + 2 for a ResNet, positive sizes) up front.
        explorer_config(norm, model=model, depth=depth, width=width, batch_size=batch_size,
                        skipinit=skipinit, seed=seed)
        self.model, self.width, self.skipinit, self.seed = model, width, skipinit, seed
        if model == "vgg":
            depth_slider = widgets.IntSlider(value=depth, min=3, max=max(30, depth), step=1,
                                             description="depth", continuous_update=False)
        else:
            depth_slider = widgets.IntSlider(value=depth, min=8, max=max(56, depth), step=6,
                                             description="depth", continuous_update=False)
        sizes = [d for d in range(1, width + 1) if width % d == 0]
        self.norm = widgets.Dropdown(options=norms, value=norm, description="normalizer")
        self.depth = depth_slider
        self.group_size = widgets.SelectionSlider(options=sizes, value=sizes[min(2, len(sizes) - 1)],
                                                  description="group size",
                                                  continuous_update=False)
        self.batch_size = widgets.IntSlider(value=batch_size, min=4, max=max(128, batch_size),
                                            step=4, description="batch size",
                                            continuous_update=False)
        self.output = widgets.Output()
        self.verdicts = widgets.HTML()
        for control in (self.norm, self.depth, self.group_size, self.batch_size):
            control.observe(self._on_change, names="value")
        self.widget = widgets.VBox([
            widgets.HBox([self.norm, self.depth]),
            widgets.HBox([self.group_size, self.batch_size]),
            self.output,
            self.verdicts,
        ])
        use_book_style()
        self.figure, grid = plt.subplots(1, len(PANELS), figsize=(10, 2.9))
        plt.close(self.figure)  # shown through the Output widget only
        self.axes = list(grid)
        self.diagnosis: Diagnosis | None = None
        self.updates = 0
        self.update()

    def config(self) -> TrainConfig:
        """The configuration the widgets describe now."""
        return explorer_config(self.norm.value, model=self.model, depth=self.depth.value,
                               width=self.width, group_size=self.group_size.value,
                               batch_size=self.batch_size.value, skipinit=self.skipinit,
                               seed=self.seed)

    def _on_change(self, change) -> None:
        self.update()

    def update(self) -> Diagnosis:
        """Re-probe the current setting and redraw; returns the new diagnosis."""
        from IPython import get_ipython
        from IPython.display import clear_output, display

        self.group_size.disabled = self.norm.value not in GROUPED_NORMS
        config = self.config()
        self.diagnosis = diagnose_config(config)
        label = config.norm + (f" (group size {self.group_size.value})"
                               if config.norm_kwargs else "")
        from normlib.plotting import norm_color

        plot_propagation({label: self.diagnosis.layers}, axes=self.axes,
                         colors={label: norm_color(config.norm)})
        self.figure.suptitle(f"{config.architecture}, width {config.width}, "
                             f"batch {config.batch_size}, at initialization", fontsize=10)
        rows = "".join(f"<tr><td>{c.property}</td><td>{c.value:.3g}</td>"
                       f"<td><b>{c.status}</b>: {c.verdict}</td><td>{c.chapter}</td></tr>"
                       for c in self.diagnosis.checks)
        self.verdicts.value = f"<table>{rows}</table>"
        if get_ipython() is not None:  # outside IPython there is nothing to draw into
            with self.output:
                clear_output(wait=True)
                display(self.figure)
        self.updates += 1
        return self.diagnosis

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


# --------------------------------------------------------------------------------------------
# Static explorers for the rendered book (precomputed; see normlib.explorer)
# --------------------------------------------------------------------------------------------

_STATUS_CLASS = {"ok": "nl-ok", "warning": "nl-warning", "failure": "nl-failure"}
_OTHER = "#9a9a9a"  # the lines a view compares the chosen one with


def _distinct(values) -> tuple:
    return tuple(dict.fromkeys(values))


def propagation_grid(norms: Iterable[str] = ("bn", "ln", "in", "gn", "none"), *,
                     depths: Sequence[int] = (5, 10, 20),
                     group_sizes: Sequence[int] = (1, 2, 4, 8, 16),
                     batch_sizes: Sequence[int] = (8, 32, 128), model: str = "vgg",
                     width: int = 16, seed: int = 0) -> dict[tuple, Diagnosis]:
    """Diagnose every setting of a propagation explorer at initialization.

    Each setting is :func:`normlib.diagnose.diagnose_config` of :func:`explorer_config`
    (float64, a batch of digits, batch statistics); ``group_sizes`` apply to the grouped
    normalizers (:data:`GROUPED_NORMS`) only.

    Returns:
        dict: ``{(norm, depth, group_size, batch_size): Diagnosis}``, ``group_size`` None for
        the normalizers without groups.

    Raises:
        ValueError: an empty axis, or a group size that does not divide ``width`` (every
            stage's channel count is a multiple of ``width``).

    Example:
        >>> grid = propagation_grid(["bn", "gn"], depths=(3, 4), group_sizes=(2, 4),
        ...                         batch_sizes=(8,), width=4)
        >>> len(grid), sorted(k[2] for k in grid if k[0] == "gn")
        (6, [2, 2, 4, 4])
    """
    from normlib.train import load_dataset

    norms, depths = _distinct(norms), _distinct(depths)
    group_sizes, batch_sizes = _distinct(group_sizes), _distinct(batch_sizes)
    for name, axis in [("norms", norms), ("depths", depths), ("batch_sizes", batch_sizes)]:
        if not axis:
            raise ValueError(f"{name} must not be empty")
    grouped = [n for n in norms if n in GROUPED_NORMS]
    if grouped and not group_sizes:
        raise ValueError(f"group_sizes must not be empty when norms include {grouped}")
    bad = [g for g in group_sizes if not isinstance(g, int) or g < 1 or width % g]
    if grouped and bad:
        raise ValueError(f"group_sizes {bad} do not divide width={width}; use divisors of the width")
    data = load_dataset("digits")
    grid = {}
    for norm in norms:
        for depth in depths:
            for size in (group_sizes if norm in GROUPED_NORMS else (None,)):
                for batch in batch_sizes:
                    config = explorer_config(norm, model=model, depth=depth, width=width,
                                             group_size=size, batch_size=batch, seed=seed)
                    grid[norm, depth, size, batch] = diagnose_config(config, data=data)
    return grid


def _verdict_table(diagnosis: Diagnosis) -> str:
    rows = []
    for c in diagnosis.checks:
        rows.append(f"<tr><td>{html.escape(c.property)}</td><td class={_STATUS_CLASS[c.status]}>"
                    f"<b>{html.escape(c.status)}</b>: {html.escape(c.verdict)}</td><td>"
                    f"{html.escape(c.metric)} = {c.value:.3g}</td></tr>")
    return f"<table>{''.join(rows)}</table>"


def static_propagation_explorer(grid: dict[tuple, Diagnosis], *, title: str | None = None,
                                norm: str | None = None, depth: int | None = None,
                                group_size: int | None = None,
                                batch_size: int | None = None) -> StaticExplorer:
    """The propagation explorer of the rendered book, from a :func:`propagation_grid`.

    A menu chooses the normalizer and sliders the depth, the group size (grouped normalizers
    only) and the batch size; the three panels of :func:`plot_propagation` show the chosen
    setting in the normalizer's color, the other normalizers of the same depth and batch size
    in grey, and the verdicts of :mod:`normlib.diagnose` are printed below. The keyword
    arguments choose the initial setting (default: the grouped normalizer if there is one, the
    middle depth, group size and batch size).

    Returns:
        a :class:`normlib.explorer.StaticExplorer` (display it, or call ``to_html()``).
    """
    from normlib.plotting import norm_color, norm_label, norm_marker

    if not grid:
        raise ValueError("grid is empty; compute it with propagation_grid()")
    norms = _distinct(k[0] for k in grid)
    depths = tuple(sorted({k[1] for k in grid}))
    sizes = tuple(sorted({k[2] for k in grid if k[2] is not None}))
    batches = tuple(sorted({k[3] for k in grid}))
    grouped = [n for n in norms if n in GROUPED_NORMS]

    def middle(axis, value, name):
        if value is None:
            return axis[len(axis) // 2] if axis else None
        if value not in axis:
            raise ValueError(f"{name}={value!r} is not in the grid's {axis}")
        return value

    norm = middle(norms, norm, "norm") if norm is not None else (grouped[0] if grouped else norms[0])
    depth, batch_size = middle(depths, depth, "depth"), middle(batches, batch_size, "batch_size")
    group_size = middle(sizes, group_size, "group_size")
    controls = [Control("norm", "normalizer", norms, kind="select",
                        labels=[norm_label(n) for n in norms], default=norm)]
    if len(depths) > 1:
        controls.append(Control("depth", "depth", depths, default=depth))
    if len(sizes) > 1:
        controls.append(Control("group_size", "group size", sizes, default=group_size,
                                note=", ".join(norm_label(n) for n in grouped) + " only"))
    if len(batches) > 1:
        controls.append(Control("batch_size", "batch size", batches, default=batch_size))
    panels = [Panel(title, "layer", column.replace("_", " "), ylog=(scale == "log"),
                    ylim=(0.0, 1.0) if column == "cosine_similarity" else None)
              for column, title, scale in PANELS]
    explorer = StaticExplorer(title or "The three properties at initialization, layer by layer "
                              "(batch statistics, a batch of digits)", controls, panels)

    def lines_of(key, chosen):
        table = grid[key].layers
        name = key[0]
        label = norm_label(name) + (f", groups of {key[2]}" if key[2] is not None else "")
        out = []
        for column, _, _ in PANELS:
            if chosen:
                out.append(Line(table["layer"].tolist(), table[column].tolist(),
                                color=norm_color(name), marker=norm_marker(name), size=5,
                                width=1.8, label=label))
            else:
                out.append(Line(table["layer"].tolist(), table[column].tolist(), color=_OTHER,
                                width=1.0, label="other normalizers", opacity=0.8))
        return out

    for (n, d, g, b), diagnosis in grid.items():
        for shown_size in (sizes or (None,)) if g is None else (g,):
            others = [(m, d, shown_size if m in GROUPED_NORMS else None, b) for m in norms if m != n]
            panel_lines = [[] for _ in PANELS]
            for key in others:
                if key in grid:
                    for i, line in enumerate(lines_of(key, False)):
                        panel_lines[i].append(line)
            for i, line in enumerate(lines_of((n, d, g, b), True)):
                panel_lines[i].append(line)
            values = {"norm": n, "depth": d, "group_size": shown_size, "batch_size": b}
            values = {c.name: values[c.name] for c in controls}
            explorer.add_view(values, panel_lines, text=_verdict_table(diagnosis))
    return explorer


@dataclass
class DescentRuns:
    """Gradient-descent runs of :func:`descent_grid`.

    Attributes:
        problems: ``{transform: LeastSquares}`` on the transformed inputs.
        step_scales: the steps as multiples of ``1 / lambda_max`` of each problem.
        paths: ``{(transform, scale): (steps + 1, d) tensor}`` from
            :func:`normlib.linear.gradient_descent`, started at zero.
        gaps: ``{(transform, scale): (steps + 1,) tensor}``, the loss gap
            ``L(w_t) - L(w*)`` over its value at the start.
    """

    problems: dict
    step_scales: tuple
    paths: dict
    gaps: dict


def descent_grid(x: torch.Tensor, y: torch.Tensor, *,
                 transforms: Sequence[str] = ("raw", "center", "standardize", "zca"),
                 step_scales: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.9,
                                                 2.02, 2.2),
                 steps: int = 100) -> DescentRuns:
    """Gradient descent on least squares for every input transform and step size.

    For each ``transform`` (see :func:`normlib.linear.fit_input_transform`, fitted on ``x``)
    the problem is :class:`normlib.linear.LeastSquares` with a bias, and for each ``scale``
    gradient descent runs ``steps`` steps of size ``scale / lambda_max`` from zero: below a
    scale of 2 it converges, above it diverges.

    Example:
        >>> import torch
        >>> x = torch.randn(50, 2, dtype=torch.float64) + 3
        >>> runs = descent_grid(x, x.sum(1), transforms=("raw", "zca"), step_scales=(1.0, 2.1),
        ...                     steps=20)
        >>> float(runs.gaps["zca", 1.0][1]) < 1e-12, float(runs.gaps["raw", 2.1][-1]) > 1
        (True, True)
    """
    from normlib import linear as L

    transforms = _distinct(transforms)
    step_scales = tuple(float(s) for s in _distinct(step_scales))
    if not transforms or not step_scales:
        raise ValueError("transforms and step_scales must not be empty")
    bad = [s for s in step_scales if not s > 0]
    if bad:
        raise ValueError(f"step_scales must be positive, got {bad}")
    problems, paths, gaps = {}, {}, {}
    for kind in transforms:
        problem = L.LeastSquares(L.fit_input_transform(x, kind)(x), y)
        problems[kind] = problem
        best = problem.loss(problem.solution)
        for scale in step_scales:
            path = L.gradient_descent(problem, scale / problem.lambda_max, steps)
            gap = problem.loss(path) - best
            paths[kind, scale] = path
            gaps[kind, scale] = gap / gap[0]
    return DescentRuns(problems, step_scales, paths, gaps)


def _ellipse(center, h2, level, points: int = 48):
    # {d : d^T h2 d / 2 = level} is center + sqrt(2 level) h2^(-1/2) (cos t, sin t).
    evals, evecs = torch.linalg.eigh(h2)
    t = torch.linspace(0, 2 * math.pi, points, dtype=h2.dtype)
    circle = torch.stack([torch.cos(t), torch.sin(t)])
    d = evecs @ (circle * (2 * level / evals).sqrt().unsqueeze(1))
    return center.unsqueeze(1) + d


def descent_contours(runs: DescentRuns, transform: str, levels: int = 8):
    """The view box and the contour lines of the loss of ``transform`` in the ``(w_1, w_2)``
    plane through the optimal bias (ellipses, the loss being quadratic).

    The box is centred on the optimum and holds the start and every converging path (scale
    below 2); the levels are spaced geometrically between the loss at the box's corners and a
    thousandth of it.

    Returns:
        ``(box, contours)``: ``box = (x0, x1, y0, y1)``; ``contours`` a list of ``(level,
        (2, n) tensor of points)`` with ``level`` the loss above the optimum.
    """
    problem = runs.problems[transform]
    opt = problem.solution[:2]
    reach = [float((runs.paths[transform, s][:, :2] - opt).abs().max())
             for s in runs.step_scales if s < 2]
    span = 1.15 * max(reach + [float(opt.abs().max()), 1e-6])
    h2 = problem.hessian[:2, :2]
    corners = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=h2.dtype) * span
    top = float(max(0.5 * c @ h2 @ c for c in corners))
    values = torch.logspace(math.log10(top) - 3, math.log10(top), levels, dtype=h2.dtype)
    contours = [(float(v), _ellipse(opt, h2, float(v))) for v in values]
    box = (float(opt[0]) - span, float(opt[0]) + span, float(opt[1]) - span, float(opt[1]) + span)
    return box, contours


def _gap_curve(gap: torch.Tensor, lo: float = 1e-8, hi: float = 1e3):
    # Steps and gaps up to the first gap outside [lo, hi] (the panel's range), included.
    values = gap.tolist()
    outside = [i for i, v in enumerate(values) if not lo <= v <= hi]
    end = outside[0] + 1 if outside else len(values)
    return list(range(end)), values[:end]


def descent_explorer(runs: DescentRuns, *, transform: str | None = None,
                     scale: float | None = None, title: str | None = None) -> StaticExplorer:
    """The gradient-descent explorer: paths on the loss's contours, and the loss gap.

    A menu chooses the input transform and a slider the step size ``eta lambda_max``. The left
    panel draws the contour lines of the loss in the ``(w_1, w_2)`` plane through the optimal
    bias and the path (projected onto it); the right one the loss gap against the step for
    the chosen transform and, in grey, the other transforms at the same ``eta lambda_max``.
    """
    transforms = tuple(runs.problems)
    scales = runs.step_scales
    transform = transform if transform is not None else transforms[0]
    scale = float(scale) if scale is not None else min(scales, key=lambda s: abs(s - 1.0))
    if transform not in transforms:
        raise ValueError(f"transform={transform!r} is not in the runs' {transforms}")
    if scale not in scales:
        raise ValueError(f"scale={scale!r} is not in the runs' step_scales {scales}")
    steps = len(next(iter(runs.paths.values()))) - 1
    controls = [Control("transform", "inputs", transforms, kind="select", default=transform),
                Control("scale", "step size \u03b7\u00b7\u03bb_max", scales,
                        labels=[f"{s:g}" for s in scales], default=scale)]
    panels = [Panel("loss contours and path", "w\u2081", "w\u2082", width=300, height=290),
              Panel("loss gap, relative to the start", "step", "(L \u2212 L*) / (L\u2080 \u2212 L*)",
                    ylog=True, width=300, height=290, ylim=(1e-8, 1e3))]
    explorer = StaticExplorer(title or f"Gradient descent from zero, {steps} steps: the path "
                              "and the loss", controls, panels)
    boxes = {kind: descent_contours(runs, kind) for kind in transforms}
    for kind in transforms:
        problem = runs.problems[kind]
        box, contours = boxes[kind]
        opt = problem.solution
        contour_lines = [Line(c[0].tolist(), c[1].tolist(), color="#7aa6c2", width=0.9,
                              label="loss contours") for _, c in contours]
        for s in scales:
            # Points far outside the panels carry nothing: stop a series at its first one.
            gap = runs.gaps[kind, s]
            inside = ((gap >= 1e-8) & (gap <= 1e3)).tolist()
            last = inside.index(False) if False in inside else len(inside) - 1
            path = runs.paths[kind, s][: last + 1]
            lr = s / problem.lambda_max
            left = contour_lines + [
                Line(path[:, 0].tolist(), path[:, 1].tolist(), color="#d62728", width=1.2,
                     marker="o", size=3.5, label="gradient-descent path"),
                Line([float(opt[0])], [float(opt[1])], color="#000000", width=0, marker="*",
                     size=11, label="optimum"),
            ]
            right = [Line(*_gap_curve(runs.gaps[other, s]), color=_OTHER, width=1.0,
                          label="other inputs, same \u03b7\u00b7\u03bb_max")
                     for other in transforms if other != kind]
            right.append(Line(*_gap_curve(gap), color="#d62728", width=1.8,
                              label=f"{kind} inputs"))
            final = float(runs.gaps[kind, s][-1])
            if not math.isfinite(final) or final > 1:
                outcome = "diverges: the step is above 2/\u03bb_max"
            else:
                outcome = f"the loss gap is {final:.2g} of its start after {steps} steps"
            text = (f"\u03bb_max = {problem.lambda_max:.3g}, condition number "
                    f"\u03ba = {problem.condition_number:.3g}, step \u03b7 = {lr:.3g} "
                    f"(2/\u03bb_max = {2 / problem.lambda_max:.3g}): {outcome}.")
            explorer.add_view({"transform": kind, "scale": s}, [left, right],
                              text=html.escape(text),
                              limits=[((box[0], box[1]), (box[2], box[3])), None])
    return explorer


@dataclass
class SpectrumPoint:
    """The Hessian spectrum of one network at one training step (:func:`spectrum_grid`).

    Attributes:
        eigenvalues: ``(k,)`` the largest eigenvalues, descending (Lanczos).
        density: the :class:`normlib.hessian.SpectralDensity` (stochastic Lanczos quadrature).
        loss: the loss on the Hessian batch at this step.
    """

    eigenvalues: torch.Tensor
    density: object
    loss: float


def spectrum_grid(x: torch.Tensor, y: torch.Tensor, *, norms: Sequence[str | None] = (None, "bn"),
                  steps: Sequence[int] = (0, 20, 50, 150), hessian_batch: int = 128,
                  depth: int = 6, width: int = 16, lr: float = 0.05, batch_size: int = 64,
                  momentum: float = 0.9, k: int = 10, slq_iters: int = 24, tol: float = 1e-2,
                  seed: int = 0) -> dict[tuple, SpectrumPoint]:
    """The Hessian spectrum of a VGG-style network at several steps of one SGD run per normalizer.

    For each normalizer the network ``VGG(depth, width, norm)`` is built after
    ``torch.manual_seed(seed)`` (the caller's random state is restored afterwards) and trained
    with :func:`normlib.hessian.run_sgd` (cross-entropy on ``(x, y)``, minibatches of
    ``batch_size``, momentum); the model after ``s`` steps is the
    start of the same run (every run is deterministic), and its Hessian with batch statistics
    on the first ``hessian_batch`` samples gets its ``k`` largest eigenvalues
    (:func:`normlib.hessian.top_eigenpairs`, relative tolerance ``tol``) and its density
    (:func:`normlib.hessian.spectral_density`, ``slq_iters`` Lanczos steps, one run).

    Returns:
        dict: ``{(norm or "none", step): SpectrumPoint}``.
    """
    from torch import nn

    from normlib import hessian as H
    from normlib.models import VGG

    steps = tuple(sorted(set(int(s) for s in steps)))
    if not steps or steps[0] < 0:
        raise ValueError(f"steps must be non-negative training steps, got {steps}")
    if not norms:
        raise ValueError("norms must not be empty")
    if len(x) < hessian_batch:
        raise ValueError(f"hessian_batch={hessian_batch} exceeds the {len(x)} samples")
    loss_fn = nn.CrossEntropyLoss()
    batch = (x[:hessian_batch], y[:hessian_batch])
    grid = {}
    for norm in norms:
        with torch.random.fork_rng(devices=[]):  # the caller's random state is left alone
            torch.manual_seed(seed)
            net = VGG(in_channels=x.shape[1], num_classes=int(y.max()) + 1, depth=depth,
                      width=width, norm=norm).to(x.device)
        for s in steps:
            model = H.run_sgd(net, loss_fn, (x, y), lr=lr, steps=s, batch_size=batch_size,
                              momentum=momentum, seed=seed).model
            op = H.HessianOperator(model, loss_fn, batch, mode="train")
            top = H.top_eigenpairs(op, k=k, tol=tol, seed=seed)
            density = H.spectral_density(op, num_iters=slq_iters, num_runs=1, seed=seed)
            grid[norm or "none", s] = SpectrumPoint(top.eigenvalues.detach().cpu(), density,
                                                    float(op.loss))
    return grid


def spectrum_explorer(grid: dict[tuple, SpectrumPoint], *, norm: str | None = None,
                      step: int | None = None, lr: float | None = None, momentum: float = 0.9,
                      title: str | None = None, points: int = 160) -> StaticExplorer:
    """The Hessian-spectrum explorer: top eigenvalues, density and the largest eigenvalue
    during training, from a :func:`spectrum_grid`.

    A menu chooses the normalizer and a slider the training step. The chosen network is drawn
    in its normalizer's color, the other normalizers at the same step in grey; the density is
    smoothed with a Gaussian of a 150th of the range of both networks' quadrature nodes. With
    ``lr``, the text compares the largest eigenvalue with the stability limit
    ``2 (1 + momentum) / lr`` of heavy-ball SGD on a quadratic.
    """
    from normlib.plotting import norm_color, norm_label, norm_marker

    if not grid:
        raise ValueError("grid is empty; compute it with spectrum_grid()")
    norms = _distinct(key[0] for key in grid)
    steps = tuple(sorted({key[1] for key in grid}))
    norm = norm if norm is not None else norms[-1]
    step = step if step is not None else steps[-1]
    controls = [Control("norm", "normalizer", norms, kind="select",
                        labels=[norm_label(n) for n in norms], default=norm),
                Control("step", "training step", steps, default=step)]
    k = len(next(iter(grid.values())).eigenvalues)
    panels = [Panel(f"top {k} eigenvalues", "rank", "eigenvalue", ylog=True),
              Panel("spectral density", "eigenvalue", "density (smoothed)", ylog=True,
                    ylim=(1e-5, 1e2)),
              Panel("largest eigenvalue", "training step", "\u03bb\u2081", ylog=True)]
    explorer = StaticExplorer(title or "Hessian spectrum during training (batch statistics)",
                              controls, panels)
    ranks = list(range(1, k + 1))
    curves = {n: [float(grid[n, s].eigenvalues[0]) for s in steps] for n in norms}
    for s in steps:
        nodes = torch.cat([grid[n, s].density.nodes.flatten() for n in norms])
        lo, hi = float(nodes.min()), float(nodes.max())
        pad = 0.05 * (hi - lo)
        xs = torch.linspace(lo - pad, hi + pad, points, dtype=torch.float64)
        densities = {n: grid[n, s].density.evaluate(xs, sigma=(hi - lo) / 150) for n in norms}
        for n in norms:
            point = grid[n, s]
            color, marker = norm_color(n), norm_marker(n)
            first = [Line(ranks, grid[m, s].eigenvalues.tolist(), color=_OTHER, width=1.0,
                          marker=norm_marker(m), size=4, label="other normalizers")
                     for m in norms if m != n]
            first.append(Line(ranks, point.eigenvalues.tolist(), color=color, marker=marker,
                              label=norm_label(n)))
            second = [Line(xs.tolist(), densities[m].tolist(), color=_OTHER, width=1.0,
                           label="other normalizers") for m in norms if m != n]
            second.append(Line(xs.tolist(), densities[n].tolist(), color=color, width=1.6,
                               label=norm_label(n)))
            third = [Line(list(steps), curves[m], color=_OTHER, width=1.0, marker=norm_marker(m),
                          size=4, label="other normalizers") for m in norms if m != n]
            third.append(Line(list(steps), curves[n], color=color, width=1.6, marker=marker,
                              size=4, label=norm_label(n)))
            third.append(Line([s], [curves[n][steps.index(s)]], color=color, width=0,
                              marker=marker, size=11))
            ev = point.eigenvalues
            parts = [f"Step {s}: loss {point.loss:.3g} on the Hessian batch, "
                     f"\u03bb\u2081 = {float(ev[0]):.3g}"]
            if k >= 10:
                parts.append(f"\u03bb\u2081/\u03bb\u2081\u2080 = {float(ev[0] / ev[9]):.3g}")
            parts.append(f"most negative Ritz value {float(point.density.nodes.min()):.3g}")
            text = ", ".join(parts)
            if lr is not None:
                limit = 2 * (1 + momentum) / lr
                text += (f"; the stability limit 2(1 + \u03b2)/\u03b7 of SGD with momentum "
                         f"\u03b2 = {momentum:g} at \u03b7 = {lr:g} is {limit:.3g}")
            explorer.add_view({"norm": n, "step": s}, [first, second, third],
                              text=html.escape(text + "."))
    return explorer
