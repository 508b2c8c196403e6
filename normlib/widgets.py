"""Interactive explorers of the three properties at initialization (ipywidgets).

:class:`PropagationExplorer` shows, for a VGG-style CNN or a ResNet at initialization, the
activation variance, the cosine similarity of different samples and the gradient norms layer
by layer: the curves behind the verdicts of :mod:`normlib.diagnose`. A dropdown chooses the
normalizer; sliders set the depth, the group size (GroupNorm) and the batch size, and every
change re-probes the model and redraws the plots.

The same plots are available without widgets (:func:`propagation_profiles` and
:func:`plot_propagation`), so the rendered book shows static figures and a live notebook can
show the explorer; nothing here loads scripts from the internet.

Example:
    >>> from normlib.widgets import propagation_profiles
    >>> profiles = propagation_profiles(["bn", "ln"], model="vgg", depth=6, width=8, batch_size=16)
    >>> sorted(profiles), list(profiles["bn"].columns[:2])
    (['bn', 'ln'], ['layer', 'name'])
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from normlib.diagnose import Diagnosis, diagnose_config
from normlib.train import TrainConfig

__all__ = [
    "GROUPED_NORMS",
    "PANELS",
    "explorer_config",
    "propagation_profiles",
    "plot_propagation",
    "PropagationExplorer",
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
