"""Diagnose a network at initialization: the three properties and a verdict for each.

:cite:t:`lubana2021beyond` identify three properties of a randomly initialized network that
predict whether a normalizer trains well. :func:`diagnose` measures each with the probes of
:mod:`normlib.propagation` (one forward and one backward pass, the model left as found) and
gives a verdict with the chapter to read. It takes any ``nn.Module``: by default it probes
the outputs of the residual blocks it finds (normlib's ResNets, torchvision's and timm's
ResNets, timm's ViTs, or the longest run of repeated sibling modules of any model), else of
its normalization layers, else of its weight layers (see
:func:`normlib.propagation.probe.probe_points`).

=====================  =========================================================  ===================
property               metric                                                     failure
=====================  =========================================================  ===================
stable forward         ``variance_growth``: activation variance at the last       exploding variance
                       probed point over that at the first; with its geometric
                       rate per weight layer ``variance_rate``
informative forward    ``similarity``: mean cosine similarity of different        similar activations
                       samples at the last probed point; its ``stable_rank``
                       is reported with the verdict
stable backward        ``gradient_ratio``: weight-gradient norm of the first      exploding early
                       probed point over that of the last; judged by its          gradients
                       geometric rate per weight layer ``gradient_rate``
=====================  =========================================================  ===================

**Where the metrics are taken.** All three compare the first and the last probed point of the
network's *body*: points the forward pass reaches before the first residual block (the stem:
a strided convolution of the raw input, pooling) are shown in the per-layer table but left out,
since a stem changes the resolution and the scale of the input, which is not growth with depth
(the raw output of a ResNet-18's first convolution has a tenth of the variance of its blocks).

**Depth.** The unit of depth is the *weight layer*: a convolution or linear map that the forward
pass runs (counted by hooks, shortcut projections included). With ``L`` the weight layers
between the first and the last body point, the two rates are

* ``variance_rate = variance_growth ** (1 / L)``, the growth of the activation variance per
  weight layer, forward;
* ``gradient_rate = gradient_ratio ** (1 / L)``, the growth of the gradient norm per weight
  layer, backward (from the last body point to the first),

so neither depends on how densely the model is probed: a 30-layer plain CNN probed at every
layer or at every third has the same rates, a ResNet probed at every block or every second
block the same gradient rate, and the same verdicts. A deep network that is fine grows a
little per layer and much in total (a BatchNorm ResNet-56: gradient ratio 12 to 19, rate 1.05);
the rate, not the total, tells it from one that explodes.

Verdicts are ``ok``, ``warning`` or ``failure``; the limits are the fields of
:class:`Thresholds`. Variance that grows by a factor above ``explosion_ratio`` at a geometric
rate above ``explosion_rate`` per weight layer is exponential growth, the failure of
unnormalized and weight-normalized ResNets (a normalized ResNet grows only linearly, by a few
percent per layer). Similarity near 1 means that the last layer can hardly tell inputs apart
(LayerNorm, large groups). First-layer gradients that grow by more than ``gradient_explosion_ratio``
over the body, at a rate above ``gradient_rate_warning`` (warning) or ``gradient_rate_failure``
(failure) per weight layer, are the gradient explosion of Instance Normalization and small
groups. When a residual network's branches start
at zero (SkipInit) their weights receive no gradient at initialization; the ratio of the
gradients with respect to the activations (``grad_norm``) is used instead, and the metric's
name says so. A metric that is not finite, or activations or gradients that vanish (Instance
Normalization of vectors outputs zeros), fail whatever the other limits say.

**Cost.** One forward and one backward pass of the model with the hooks attached, no repeated
pass; the Gram-matrix statistics use at most
:data:`normlib.propagation.probe.GRAM_MAX_FEATURES` entries per sample (an evenly strided
subsample of larger layers). ``benchmarks/diagnose.py`` times it against one forward and
backward pass of a ResNet-18.

The command line diagnoses a model of :mod:`normlib.models` (``python -m normlib diagnose
--model resnet --depth 56 --norm gn --group-size 8``) or any model a factory builds
(``python -m normlib diagnose --model package.module:factory --input-shape 3,224,224``) on a
batch of Gaussian inputs (``--data digits`` and the other datasets for normlib's models), prints
the table or ``--json``, and exits with status 1 when a verdict fails (``--fail-on warning``:
also on a warning), so that it can gate a CI job. :func:`spearman` measures how well such
metrics rank training outcomes (chapter "Training map", ``chapters/training_map.md``).

Example:
    >>> import torch
    >>> from normlib.models import resnet56
    >>> from normlib.diagnose import diagnose
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> d = diagnose(resnet56(width=4, norm=None, in_channels=1), torch.randn(16, 1, 8, 8))
    >>> d.verdicts["stable forward"]
    'failure'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

import pandas as pd
import torch
from torch import nn

from normlib._checks import argument_error, check_positive_float, is_real
from normlib.cli import command
from normlib.propagation import probe

__all__ = [
    "PROPERTIES",
    "STATUSES",
    "Thresholds",
    "Check",
    "Diagnosis",
    "init_metrics",
    "judge",
    "diagnose",
    "diagnose_config",
    "spearman",
]

#: The three properties, with the chapter that explains each.
PROPERTIES = {
    "stable forward": ("Stable forward propagation", "chapters/forward_stable"),
    "informative forward": ("Informative forward propagation", "chapters/forward_informative"),
    "stable backward": ("Stable backward propagation", "chapters/backward_stable"),
}
STATUSES = ("ok", "warning", "failure")


@dataclass(frozen=True)
class Thresholds:
    """The limits of the verdicts (defaults calibrated on the book's CNNs and ResNets).

    Args:
        explosion_ratio: variance growth (last over first probed point of the body) above
            which, together with ``explosion_rate``, the forward pass explodes (growth without
            that rate is the linear growth of a normalized ResNet, and is fine).
        explosion_rate: geometric growth per weight layer above which growth is exponential.
            The default 1.1 (a factor 2.6 every ten layers) separates the book's unnormalized
            ResNet-20 and ResNet-56 (1.21 to 1.34 per weight layer on digits, width 8, seeds
            0-2) and weight-normalized ones (1.12 to 1.23, except one ResNet-20 whose growth of
            7.6 stays below ``explosion_ratio``) from normalized ones (BN, LN, GN: 1.05 at most).
        gradient_explosion_ratio: the first body point's gradient norm over the last one's must
            exceed this for the backward pass to be flagged at all (3: a short network whose
            first layer gets twice the last one's gradient is not exploding, whatever its rate).
        gradient_rate_warning: ``gradient_rate`` (geometric growth of the gradient norm per
            weight layer, backward) above this: warning. The default 1.08 lies above every
            BatchNorm ResNet (ResNet-20 and ResNet-56, widths 8 and 16, seeds 0-2, digits and
            Gaussian 3x16x16 inputs, batches of 32 to 128: 1.031 to 1.062, gradient ratios up
            to 19) and below Instance Normalization (GroupNorm with group size 1) in the same
            ResNets on digits (1.086 to 1.137); GroupNorm with groups of 4, 8 or 16 channels,
            LayerNorm, weight normalization and no normalizer are below 1 (the gradients shrink
            towards the input). A BatchNorm VGG-20 reaches 1.036 to 1.086 on digits and up to
            1.093 on Gaussian inputs at width 8: batch normalization's own gradient explosion
            in a plain network, a warning at most.
        gradient_rate_failure: above this: failure. The default 1.12 flags Instance
            Normalization in the VGG-20 of the book (1.139 to 1.217 on digits, widths 8 and
            16), the configuration that fails to train in the training map; Instance
            Normalization in a 10-layer VGG (0.99 to 1.084, gradient ratio below 2.1) is not
            flagged, and in a ResNet on Gaussian 3x16x16 images, where each channel's
            statistics pool 256 pixels in the first stage, it stays near BatchNorm (1.04 to
            1.06).
        vanishing_ratio: variance growth below this is a warning (the signal fades).
        degenerate_ratio: a variance growth or gradient ratio below this is a failure: the
            activations or the first layer's gradients vanished (instance normalization of
            vectors, for one, outputs zeros).
        similarity_warning: mean cosine similarity at the last layer above this: warning.
        similarity_failure: above this: failure.

    Raises:
        ValueError: if a limit is not positive or a warning limit exceeds its failure limit.
    """

    explosion_ratio: float = 10.0
    explosion_rate: float = 1.1
    vanishing_ratio: float = 0.01
    degenerate_ratio: float = 1e-12
    similarity_warning: float = 0.85
    similarity_failure: float = 0.95
    gradient_explosion_ratio: float = 3.0
    gradient_rate_warning: float = 1.08
    gradient_rate_failure: float = 1.12

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            check_positive_float(f.name, value)
        if self.degenerate_ratio > self.vanishing_ratio:
            raise ValueError(f"degenerate_ratio={self.degenerate_ratio} exceeds "
                             f"vanishing_ratio={self.vanishing_ratio}")
        if self.similarity_warning > self.similarity_failure:
            raise ValueError(f"similarity_warning={self.similarity_warning} exceeds "
                             f"similarity_failure={self.similarity_failure}")
        if self.gradient_rate_warning > self.gradient_rate_failure:
            raise ValueError(f"gradient_rate_warning={self.gradient_rate_warning} exceeds "
                             f"gradient_rate_failure={self.gradient_rate_failure}")


@dataclass(frozen=True)
class Check:
    """The verdict on one property.

    Attributes:
        property: ``"stable forward"``, ``"informative forward"`` or ``"stable backward"``.
        metric: what was measured, in words.
        value: the measured value.
        status: ``"ok"``, ``"warning"`` or ``"failure"``.
        verdict: the finding in a few words (``"exploding variance"``).
        chapter: the title of the chapter that explains it.
        path: that chapter's source file (without ``.md``).
    """

    property: str
    metric: str
    value: float
    status: str
    verdict: str
    chapter: str
    path: str


@dataclass
class Diagnosis:
    """The result of :func:`diagnose`.

    Attributes:
        checks: one :class:`Check` per property.
        metrics: the numbers behind them (see :func:`init_metrics`).
        layers: the per-layer table of :func:`normlib.propagation.probe.probe`.
        mode: ``"train"`` (batch statistics) or ``"eval"`` (running statistics).
        description: what was diagnosed, for the printed header.
    """

    checks: list[Check]
    metrics: dict[str, float]
    layers: pd.DataFrame
    mode: str
    description: str = ""
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def verdicts(self) -> dict[str, str]:
        """``{property: status}``."""
        return {c.property: c.status for c in self.checks}

    @property
    def ok(self) -> bool:
        """Whether every property is ``ok``."""
        return all(c.status == "ok" for c in self.checks)

    def to_frame(self) -> pd.DataFrame:
        """The checks as a table, one row per property."""
        return pd.DataFrame([asdict(c) for c in self.checks])

    def to_dict(self) -> dict:
        """The diagnosis as plain JSON values (what ``--json`` prints).

        Keys: ``description``, ``mode``, ``ok``, ``failed`` (whether a verdict is a
        failure), ``checks`` (one dict per property), ``metrics``, ``thresholds`` and ``layers``
        (one dict per probed point). A number that is not finite (an infinite growth, a NaN
        gradient) becomes ``None``, so the result is strict JSON.

        Example:
            >>> import json, torch
            >>> from normlib.models import VGG
            >>> d = diagnose(VGG(in_channels=1, depth=4, width=4), torch.randn(8, 1, 8, 8))
            >>> sorted(json.loads(json.dumps(d.to_dict())))  # doctest: +NORMALIZE_WHITESPACE
            ['checks', 'description', 'failed', 'layers', 'metrics', 'mode', 'ok',
             'thresholds']
        """
        return {
            "description": self.description,
            "mode": self.mode,
            "ok": self.ok,
            "failed": self.failed,
            "checks": [{k: _plain(v) for k, v in asdict(c).items()} for c in self.checks],
            "metrics": {k: _plain(v) for k, v in self.metrics.items()},
            "thresholds": {k: _plain(v) for k, v in asdict(self.thresholds).items()},
            "layers": [{k: _plain(v) for k, v in row.items()}
                       for row in self.layers.to_dict(orient="records")],
        }

    @property
    def failed(self) -> bool:
        """Whether a property's verdict is ``failure``."""
        return any(c.status == "failure" for c in self.checks)

    def __str__(self) -> str:
        head = [self.description] if self.description else []
        mode = "batch statistics" if self.mode == "train" else "running statistics"
        body = _body(self.layers)
        span = ""
        if len(body) >= 2 and "depth" in self.metrics:
            span = (f", compared from {body['name'].iloc[0]} to {body['name'].iloc[-1]} "
                    f"({self.metrics['depth']:.0f} weight layers apart)")
        stem = []
        if "stem" in self.layers.columns:
            marked = self.layers.loc[self.layers["stem"].astype(bool), "name"]
            stem = [str(n) for n in marked if n != "input"]
        head.append(f"measured at initialization in {self.mode} mode ({mode}), "
                    f"{len(self.layers)} probed points{span}"
                    + (f"; not compared (stem): {', '.join(stem)}" if stem else ""))
        rows = [("property", "metric", "value", "verdict", "read")]
        for c in self.checks:
            rows.append((c.property, c.metric, f"{c.value:.3g}", f"{c.status}: {c.verdict}",
                         f"{c.chapter} ({c.path}.md)"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(head + [""] + lines)


def _plain(value):
    """A JSON value: Python scalars, non-finite floats as ``None``."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _last_nonzero(values: Sequence[float]) -> int | None:
    for i in range(len(values) - 1, -1, -1):
        if values[i] > 0 and math.isfinite(values[i]):
            return i
    return None


def _body(layers: pd.DataFrame) -> pd.DataFrame:
    """The rows after the stem (and without the input), as the metrics use them."""
    return layers[~layers["stem"].astype(bool)] if "stem" in layers.columns else layers


def init_metrics(layers: pd.DataFrame) -> dict[str, float]:
    r"""The diagnosis's numbers from a per-layer probe table (rows in forward order).

    The metrics compare the first and the last probed point of the network's **body**: rows
    marked ``stem`` by :func:`normlib.propagation.probe.probe` (the input, and points the
    forward pass reaches before the first residual block) are left out, since a stem changes
    the resolution and the scale of the input and is not depth. With :math:`v_a, v_b` the
    activation variances at the first and last body point and :math:`L` the number of weight
    layers (convolutions, linear maps) the forward pass runs from the one to the other
    (the difference of their ``weight_layers``):

    .. math::

        \text{variance\_growth} = v_b / v_a, \qquad
        \text{variance\_rate} = (v_b / v_a)^{1/L},

    the geometric growth **per weight layer**, whatever the number of points probed in
    between (with no weight layer between the two points, :math:`L` counts as 1). Backward,
    with :math:`g_a, g_b` the weight-gradient norms at the same two points,

    .. math::

        \text{gradient\_ratio} = g_a / g_b, \qquad
        \text{gradient\_rate} = (g_a / g_b)^{1/L},

    the growth of the gradient per weight layer on its way back to the first point.

    Returns:
        dict: ``variance_growth``, ``variance_rate``, ``depth`` (:math:`L`), ``similarity``
        and ``stable_rank`` of the last body point, ``gradient_ratio`` (first over last body
        point's weight-gradient norm; the activation-gradient ratio when the last points get
        no weight gradient), ``gradient_rate`` (its rate per weight layer) and
        ``gradient_of_activations`` (1.0 when that fallback was used, else 0.0).

    Raises:
        ValueError: if the table has fewer than two body points or lacks a column.

    Example:
        >>> import pandas as pd
        >>> table = pd.DataFrame({"name": ["stem", "b0", "b1"], "variance": [0.1, 1.0, 4.0],
        ...     "cosine_similarity": [0.0, 0.3, 0.4], "stable_rank": [9.0, 5.0, 4.0],
        ...     "grad_norm": [3.0, 2.0, 1.0], "weight_grad_norm": [1.0, 2.0, 1.0],
        ...     "weight_layers": [1, 3, 5], "stem": [True, False, False]})
        >>> m = init_metrics(table)
        >>> m["variance_growth"], m["depth"], m["variance_rate"], m["gradient_ratio"]
        (4.0, 2.0, 2.0, 2.0)
        >>> round(m["gradient_rate"], 4)  # 2 ** (1 / 2)
        1.4142
    """
    needed = {"variance", "cosine_similarity", "stable_rank", "grad_norm", "weight_grad_norm",
              "weight_layers"}
    missing = needed - set(layers.columns)
    if missing:
        raise ValueError(f"layers lacks the columns {sorted(missing)}; make it with "
                         "normlib.propagation.probe(..., backward=True)")
    body = _body(layers)
    if len(body) < 2:
        stem = list(layers.loc[layers["stem"].astype(bool), "name"]) if "stem" in layers else []
        raise ValueError(
            f"need at least two probed points after the stem to compare, got {len(body)}"
            + (f" (the stem points {stem} do not count)" if stem else "")
            + "; probe more blocks or layers (at='auto' probes every block)")
    var = body["variance"].to_numpy(dtype=float)
    growth = var[-1] / var[0] if var[0] > 0 else math.inf
    counts = body["weight_layers"].to_numpy(dtype=float)
    depth = max(float(counts[-1] - counts[0]), 1.0)
    rate = growth ** (1.0 / depth) if math.isfinite(growth) else math.inf
    wgrad = body["weight_grad_norm"].to_numpy(dtype=float)
    last = _last_nonzero(wgrad)
    fallback = last is None or last < len(wgrad) - 1 or not wgrad[0] > 0
    if fallback:
        agrad = body["grad_norm"].to_numpy(dtype=float)
        ratio = agrad[0] / agrad[-1] if agrad[-1] > 0 else math.inf
    else:
        ratio = wgrad[0] / wgrad[-1]
    grate = ratio ** (1.0 / depth) if math.isfinite(ratio) else math.inf
    return {
        "variance_growth": float(growth),
        "variance_rate": float(rate),
        "depth": depth,
        "similarity": float(body["cosine_similarity"].iloc[-1]),
        "stable_rank": float(body["stable_rank"].iloc[-1]),
        "gradient_ratio": float(ratio),
        "gradient_rate": float(grate),
        "gradient_of_activations": 1.0 if fallback else 0.0,
    }


def _check(prop: str, metric: str, value: float, status: str, verdict: str) -> Check:
    chapter, path = PROPERTIES[prop]
    return Check(prop, metric, value, status, verdict, chapter, path)


_METRICS = ("variance_growth", "variance_rate", "similarity", "stable_rank", "gradient_ratio",
            "gradient_rate")
# The stable rank of a nonzero matrix is at least 1; below this the activations are all zero.
_MIN_RANK = 0.5


def _checked_metrics(metrics) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a dict from init_metrics(), got {type(metrics).__name__}")
    missing = [k for k in _METRICS if k not in metrics]
    if missing:
        raise ValueError(f"metrics lacks {missing}; compute them with init_metrics(layers)")
    out = {}
    for k in (*_METRICS, "gradient_of_activations"):
        value = metrics.get(k, 0.0)
        if not is_real(value):  # NaN and inf are kept: they are judged failures below
            raise argument_error(TypeError, f"metrics[{k!r}]", "a number", value)
        out[k] = float(value)
    return out


def judge(metrics: dict[str, float], thresholds: Thresholds | None = None) -> list[Check]:
    """The three :class:`Check` verdicts for metrics from :func:`init_metrics`.

    A metric that is not finite (NaN or infinite activations or gradients, or a ratio over a
    layer whose activations or gradients are exactly zero) or degenerate (a variance growth
    or gradient ratio below ``degenerate_ratio`` of :class:`Thresholds`, a last layer of stable rank
    0) is a ``failure``: such a network does not propagate a signal, whatever the
    comparisons with the other limits would say (a vanished forward pass fails the
    informative check too: the similarity of rounding noise says nothing about the inputs).
    The informative-forward check is judged on the similarity; its verdict reports the last
    layer's stable rank too.

    Raises:
        TypeError: if ``metrics`` is not a dict of numbers.
        ValueError: if a metric of :func:`init_metrics` is missing.

    Example:
        >>> checks = judge({"variance_growth": 5e3, "variance_rate": 1.2, "similarity": 0.5,
        ...                 "stable_rank": 3.0, "gradient_ratio": 1.0, "gradient_rate": 1.0,
        ...                 "gradient_of_activations": 0.0})
        >>> [(c.property, c.status) for c in checks]  # doctest: +NORMALIZE_WHITESPACE
        [('stable forward', 'failure'), ('informative forward', 'ok'),
         ('stable backward', 'ok')]
        >>> checks[1].verdict
        'informative (stable rank 3)'
        >>> vanished = judge({"variance_growth": 0.0, "variance_rate": 0.0, "similarity": 0.0,
        ...                   "stable_rank": 0.0, "gradient_ratio": 0.0, "gradient_rate": 0.0})
        >>> [c.status for c in vanished], vanished[0].verdict
        (['failure', 'failure', 'failure'], 'activations vanish (variance x0 over the probed points)')
    """
    m = _checked_metrics(metrics)
    if thresholds is not None and not isinstance(thresholds, Thresholds):
        raise TypeError(f"thresholds must be a Thresholds, got {type(thresholds).__name__}")
    t = thresholds or Thresholds()
    g, rate = m["variance_growth"], m["variance_rate"]
    metric = "activation variance, last / first point"
    if not (math.isfinite(g) and math.isfinite(rate)):
        fwd = _check("stable forward", metric, g, "failure",
                     "variance is not finite (activations are NaN or infinite, or zero at the "
                     "first layer)")
    elif g < t.degenerate_ratio:
        fwd = _check("stable forward", metric, g, "failure",
                     f"activations vanish (variance x{g:.3g} over the probed points)")
    elif g > t.explosion_ratio and rate > t.explosion_rate:
        fwd = _check("stable forward", metric, g, "failure",
                     f"exploding variance (x{rate:.2f} per weight layer)")
    elif g > t.explosion_ratio:
        # Linear growth with depth is what a normalized ResNet does; it trains.
        fwd = _check("stable forward", metric, g, "ok", "stable (grows slower than exponentially)")
    elif g < t.vanishing_ratio:
        fwd = _check("stable forward", metric, g, "warning", "variance vanishes with depth")
    else:
        fwd = _check("stable forward", metric, g, "ok", "stable")

    s, rank = m["similarity"], m["stable_rank"]
    metric = "cosine similarity of samples, last point"
    ranked = f"stable rank {rank:.3g}"
    if not (math.isfinite(s) and math.isfinite(rank)):
        inf = _check("informative forward", metric, s, "failure",
                     f"similarity or rank is not finite (activations are NaN or infinite; {ranked})")
    elif rank < _MIN_RANK:
        inf = _check("informative forward", metric, s, "failure",
                     f"activations vanished at the last layer ({ranked})")
    elif g < t.degenerate_ratio:
        # What is left is rounding noise; its similarity and rank say nothing about inputs.
        inf = _check("informative forward", metric, s, "failure",
                     f"activations vanished before the last layer ({ranked} of rounding noise)")
    elif s > t.similarity_failure:
        inf = _check("informative forward", metric, s, "failure",
                     f"samples are nearly parallel ({ranked})")
    elif s > t.similarity_warning:
        inf = _check("informative forward", metric, s, "warning", f"samples are similar ({ranked})")
    else:
        inf = _check("informative forward", metric, s, "ok", f"informative ({ranked})")

    r, grate = m["gradient_ratio"], m["gradient_rate"]
    what = "activation" if m["gradient_of_activations"] else "weight"
    metric = f"{what}-gradient norm, first / last point, per weight layer"
    total = f"x{r:.3g} over the body"
    if not (math.isfinite(r) and math.isfinite(grate)):
        bwd = _check("stable backward", metric, grate, "failure",
                     "gradient ratio is not finite (gradients are NaN or infinite, or zero at "
                     "the last layer)")
    elif r < t.degenerate_ratio:
        bwd = _check("stable backward", metric, grate, "failure",
                     f"gradients vanish before the first layer (ratio {r:.3g})")
    elif r > t.gradient_explosion_ratio and grate > t.gradient_rate_failure:
        bwd = _check("stable backward", metric, grate, "failure",
                     f"exploding early gradients ({total})")
    elif r > t.gradient_explosion_ratio and grate > t.gradient_rate_warning:
        bwd = _check("stable backward", metric, grate, "warning", f"early gradients grow ({total})")
    else:
        bwd = _check("stable backward", metric, grate, "ok", f"stable ({total})")
    return [fwd, inf, bwd]


def diagnose(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    at="auto",
    mode: str = "train",
    thresholds: Thresholds | None = None,
    description: str = "",
) -> Diagnosis:
    """Measure the three properties of ``model`` at its current weights and judge them.

    One forward and one backward pass with hooks on the probed points (and counters on the
    weight layers); the metrics are those of :func:`init_metrics`, the verdicts those of
    :func:`judge`.

    Args:
        model: any ``nn.Module``, left exactly as found.
        inputs: one batch ``x: (N, *)``, ``N >= 2``.
        targets: class indices ``(N,)`` for a cross-entropy loss; without them the backward
            pass uses the squared output (see :func:`normlib.propagation.probe.probe`).
        at: the probed points (default ``"auto"``: the residual blocks, else the
            normalization layers, else the weight layers; see
            :func:`normlib.propagation.probe.probe_points`); at least two after the stem.
        mode: ``"train"`` (batch statistics, the regime of the theory) or ``"eval"``.
        thresholds: the verdicts' limits.
        description: a header line for the printed table.

    Returns:
        a :class:`Diagnosis`.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or ``inputs`` not a tensor.
        ValueError: for a batch of one sample, an unknown mode, or fewer than two probed points
            after the stem.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> plain = nn.Sequential(*[nn.Sequential(nn.Linear(32, 32), nn.Tanh()) for _ in range(6)])
        >>> d = diagnose(plain, torch.randn(16, 32))
        >>> list(d.layers["name"])[:3], d.metrics["depth"]
        (['0', '1', '2'], 5.0)
    """
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a tensor (N, *), got {type(inputs).__name__}")
    if thresholds is not None and not isinstance(thresholds, Thresholds):
        raise TypeError(f"thresholds must be a Thresholds, got {type(thresholds).__name__}")
    layers = probe(model, inputs, targets, at=at, mode=mode, backward=True, include_input=False)
    metrics = init_metrics(layers)
    t = thresholds or Thresholds()
    return Diagnosis(judge(metrics, t), metrics, layers, mode, description, t)


def diagnose_config(config, *, data=None, device=None, thresholds: Thresholds | None = None,
                    mode: str = "train", at="auto") -> Diagnosis:
    """Diagnose the network a :class:`normlib.train.TrainConfig` starts training from.

    The model is built exactly as :func:`normlib.train.train` builds it for ``config.seed``
    (same initial weights), and probed on the first ``config.batch_size`` training samples of
    ``config.dataset`` (standardized as for training), with their labels.

    Args:
        config: the run.
        data: a :class:`normlib.data.Split`; default :func:`normlib.train.load_dataset`.
        device: default :func:`normlib.device.default_device`.
        thresholds: the verdicts' limits.
        mode: ``"train"`` or ``"eval"``.
        at: the probed points, as for :func:`diagnose`.

    Raises:
        TypeError: if ``config`` is not a ``TrainConfig``.
        ValueError: if the dataset has fewer samples than the batch.
    """
    from normlib.device import default_device
    from normlib.train import TrainConfig, build_model, load_dataset

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    data = data if data is not None else load_dataset(config.dataset)
    device = torch.device(device) if device is not None else default_device()
    if len(data.x_train) < config.batch_size:
        raise ValueError(f"batch_size={config.batch_size} exceeds the {len(data.x_train)} "
                         f"training samples of {data.name}")
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    x = data.x_train[:config.batch_size]
    if config.model != "mlp" and x.dim() == 3:
        x = x.unsqueeze(2)
    torch.manual_seed(config.seed)
    model = build_model(config, x.shape[1:], data.num_classes).to(device, dtype)
    kwargs = ", ".join(f"{k}={v}" for k, v in sorted(config.norm_kwargs.items()))
    description = (f"{config.architecture} (width {config.width}), norm={config.norm}"
                   f"{f' ({kwargs})' if kwargs else ''}, {config.batch_size} {data.name} samples, "
                   f"seed {config.seed}")
    return diagnose(model, x.to(device, dtype), data.y_train[:config.batch_size].to(device),
                    at=at, mode=mode, thresholds=thresholds, description=description)


def _average_ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of ``x`` and ``y``: Pearson's correlation of their ranks.

    Ties get their average rank; ``inf`` ranks above every finite value (a diverged run's loss
    ranks last). Returns ``nan`` when one of the two has a single distinct value.

    Raises:
        ValueError: for sequences of different lengths, fewer than 3 pairs, or a NaN.

    Example:
        >>> spearman([1, 2, 3, 4], [10, 20, 30, float("inf")])
        1.0
        >>> spearman([1, 2, 3], [3, 2, 1])
        -1.0
    """
    xs, ys = [float(v) for v in x], [float(v) for v in y]
    if len(xs) != len(ys):
        raise ValueError(f"x and y must have the same length, got {len(xs)} and {len(ys)}")
    if len(xs) < 3:
        raise ValueError(f"x and y need at least 3 pairs for a rank correlation, got {len(xs)}")
    if any(math.isnan(v) for v in xs + ys):
        raise ValueError("x and y must not contain NaN; drop those pairs first")
    rx, ry = _average_ranks(xs), _average_ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return math.nan
    return sxy / math.sqrt(sxx * syy)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

_PROG = "python -m normlib diagnose"
# Options that build one of normlib's models, with the value each has when not given.
_OWN_MODEL_OPTIONS = {"depth": 20, "width": 16, "norm": "bn", "group_size": None,
                      "num_groups": None, "skipinit": False}
_DEFAULT_SHAPE = (3, 32, 32)
_DEFAULT_BATCH = {"own": 64, "factory": 32}


class _UserError(Exception):
    """A mistake in the command line or in the user's factory: one line, exit status 2."""


def _load_factory(spec: str):
    """The callable named by ``package.module:factory`` (the part after ``:`` may be dotted)."""
    import importlib

    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise _UserError(f"--model {spec}: cannot import module {module_name!r} ({err}); run from "
                         "the folder that contains it or add that folder to PYTHONPATH") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise _UserError(f"--model {spec}: {getattr(obj, '__name__', module_name)!r} has no "
                             f"attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise _UserError(f"--model {spec}: {attr!r} is a {type(obj).__name__}, not a function or "
                         "class that builds the model")
    return obj


def _build_factory_model(spec: str) -> nn.Module:
    factory = _load_factory(spec)
    try:
        model = factory()
    except Exception as err:  # the user's code: report it in one line
        first = (str(err).splitlines() or [""])[0]
        raise _UserError(f"--model {spec}: calling it raised {type(err).__name__}: {first}") from None
    if not isinstance(model, nn.Module):
        raise _UserError(f"--model {spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _diagnosis_of(model, x, args, description: str) -> Diagnosis:
    """Diagnose on Gaussian inputs (no targets: the squared-output loss)."""
    try:
        return diagnose(model, x, at=args.at, mode=args.mode, description=description)
    except (ValueError, TypeError):
        raise
    except RuntimeError as err:  # a forward pass that does not fit the input, out of memory
        first = (str(err).splitlines() or [""])[0]
        raise _UserError(f"the model's forward or backward pass on a batch of shape "
                         f"{tuple(x.shape)} failed: {first}") from None


def _own_model_run(args, device):
    """(model, inputs, targets, description) for one of normlib's models."""
    from normlib.train import TrainConfig, build_model

    norm_kwargs = {}
    if args.group_size is not None and args.num_groups is not None:
        raise _UserError("give --group-size or --num-groups, not both")
    if args.group_size is not None:
        norm_kwargs["group_size"] = args.group_size
    if args.num_groups is not None:
        norm_kwargs["num_groups"] = args.num_groups
    from normlib.models import has_activation_norm

    if norm_kwargs and has_activation_norm(args.norm, args.width) is False:
        # The slot of 'none' or a weight normalizer is an nn.Identity that would swallow them.
        raise _UserError(f"--group-size/--num-groups do not apply to --norm {args.norm}: it has no "
                         "groups (use a grouped normalizer such as gn)")
    if args.data != "random" and args.input_shape is not None:
        raise _UserError(f"--input-shape goes with --data random; --data {args.data} has its own "
                         "shape")
    too_big = _size_error(args)
    if too_big:
        raise _UserError(too_big)
    try:
        config = TrainConfig(model=args.model, depth=args.depth, width=args.width, norm=args.norm,
                             norm_kwargs=norm_kwargs, skipinit=args.skipinit,
                             dataset=args.data if args.data != "random" else "digits",
                             batch_size=args.batch_size, seed=args.seed)
    except TypeError as err:
        if norm_kwargs and "unexpected keyword" in str(err):
            raise _UserError(f"--group-size/--num-groups do not apply to --norm {args.norm} "
                             "(use a grouped normalizer such as gn)") from None
        raise
    if args.data != "random":
        return config, None, None, None
    shape = args.input_shape or _DEFAULT_SHAPE
    torch.manual_seed(config.seed)
    try:
        model = build_model(config, shape, 10).to(device)
    except TypeError as err:
        if norm_kwargs and "unexpected keyword" in str(err):
            raise _UserError(f"--group-size/--num-groups do not apply to --norm {args.norm} "
                             "(use a grouped normalizer such as gn)") from None
        raise
    x = _gaussian_batch(args, shape, device)
    kwargs = ", ".join(f"{k}={v}" for k, v in sorted(norm_kwargs.items()))
    description = (f"{config.architecture} (width {config.width}), norm={config.norm}"
                   f"{f' ({kwargs})' if kwargs else ''}, {args.batch_size} Gaussian inputs of "
                   f"shape {'x'.join(map(str, shape))}, seed {config.seed}")
    return config, model, x, description


def _gaussian_batch(args, shape, device) -> torch.Tensor:
    # Its own generator: the batch does not depend on how many numbers the model's
    # initialization drew.
    gen = torch.Generator().manual_seed(args.seed)
    return torch.randn(args.batch_size, *shape, generator=gen).to(device)


@command("diagnose", "diagnose a model at initialization: forward and backward stability, "
                     "informative activations; exit status 1 when a verdict fails")
def _diagnose_command(args) -> int:
    import json
    import sys

    from normlib.device import default_device

    factory = ":" in args.model
    if args.batch_size is None:
        args.batch_size = _DEFAULT_BATCH["factory" if factory else "own"]
    try:
        if factory:
            given = [f"--{k.replace('_', '-')}" for k in _OWN_MODEL_OPTIONS
                     if getattr(args, k) is not None and getattr(args, k) is not False]
            if args.data != "random":
                given.append("--data")
            if given:
                raise _UserError(f"{', '.join(given)} build normlib's own models and do not apply "
                                 f"to --model {args.model}; a factory's model is diagnosed on "
                                 "Gaussian inputs of --input-shape")
            if args.input_shape is None:
                raise _UserError(f"--model {args.model} needs --input-shape, the shape of one "
                                 "input without the batch axis (e.g. 3,224,224)")
            device = default_device()
            torch.manual_seed(args.seed)
            model = _build_factory_model(args.model).to(device)
            x = _gaussian_batch(args, args.input_shape, device)
            params = sum(p.numel() for p in model.parameters())
            description = (f"{args.model} ({type(model).__name__}, {params:,} parameters), "
                           f"{args.batch_size} Gaussian inputs of shape "
                           f"{'x'.join(map(str, args.input_shape))}, seed {args.seed}")
            result = _diagnosis_of(model, x, args, description)
        else:
            for k, default in _OWN_MODEL_OPTIONS.items():
                if getattr(args, k) is None:
                    setattr(args, k, default)
            device = default_device()
            config, model, x, description = _own_model_run(args, device)
            if model is None:
                result = diagnose_config(config, mode=args.mode, device=device, at=args.at)
            else:
                result = _diagnosis_of(model, x, args, description)
    except _UserError as err:
        print(f"{_PROG}: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        print(f"{_PROG}: error: {(str(err).splitlines() or [type(err).__name__])[0]}",
              file=sys.stderr)
        return 2
    failed = result.failed or (args.fail_on == "warning" and not result.ok)
    status = 1 if failed and args.fail_on != "never" else 0
    if args.json:
        print(json.dumps({**result.to_dict(), "exit_status": status}, indent=2, allow_nan=False))
        return status
    print(result)
    if args.layers:
        cols = ["layer", "name", "stem", "weight_layers", "variance", "cosine_similarity",
                "stable_rank", "grad_norm", "weight_grad_norm"]
        print()
        print(result.layers[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if status:
        worst = "a verdict is a failure" if result.failed else "a verdict is a warning"
        print(f"\n{_PROG}: {worst} (exit status 1; --fail-on {args.fail_on})", file=sys.stderr)
    return status


def _available_bytes() -> int | None:
    """Memory the process could still use: free device memory on CUDA, MemAvailable otherwise."""
    from normlib.device import default_device

    try:
        device = default_device()
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, RuntimeError):
        return None
    return None


# Pixels of one input of each dataset (the first stage's resolution).
_PIXELS = {"digits": 64, "mnist1d": 40, "cifar10": 1024, "cifar100": 1024}


def _size_error(args) -> str | None:
    """A message if the requested network cannot fit in memory, checked before anything is built.

    The estimate is deliberately generous: weights (three copies: values, gradients, the
    forward pass's working set; the widest stage has four times ``--width`` channels) plus
    every layer's activations for the batch, stored for the backward pass, in float32.
    """
    convs = args.model in ("vgg", "resnet")
    widest = 4 * args.width if convs else args.width
    params = args.depth * widest * widest * (9 if convs else 1)
    if args.data == "random":
        shape = args.input_shape or _DEFAULT_SHAPE
        pixels = math.prod(shape[1:]) if len(shape) > 1 else 1
    else:
        pixels = _PIXELS.get(args.data, 1024)
    activations = args.batch_size * args.depth * args.width * (pixels if convs else 1)
    need = 4 * (3 * params + 2 * activations)
    have = _available_bytes()
    if have is not None and need > 0.8 * have:
        return (f"--depth {args.depth}, --width {args.width} and --batch-size {args.batch_size} need "
                f"about {need / 2**30:.3g} GiB, but {have / 2**30:.3g} GiB are available; choose "
                "smaller sizes")
    return None


def _int_argument(text: str, what: str, low: int, high: int | None, expected: str) -> int:
    """An integer option of the command line in ``[low, high)``, or argparse's one-line error."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low or (high is not None and value >= high):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def _seed(text: str) -> int:
    return _int_argument(text, "an integer seed", 0, 2**63, "a seed in [0, 2**63 - 1]")


def _positive(text: str) -> int:
    return _int_argument(text, "a positive integer", 1, None, "a positive integer")


def _model_name(text: str) -> str:
    import argparse

    from normlib.train import MODELS

    if text in MODELS:
        return text
    module, colon, attr = text.partition(":")
    names = [*module.split("."), *attr.split(".")]
    if colon and all(n.isidentifier() for n in names):
        return text
    raise argparse.ArgumentTypeError(
        f"expected one of {', '.join(MODELS)} or package.module:factory, got {text!r}")


def _input_shape(text: str) -> tuple[int, ...]:
    import argparse

    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas such as 3,224,224, got {text!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"expected positive sizes such as 3,224,224, got {text!r}")
    return shape


def _points(text: str):
    from normlib.propagation.probe import _NAMED_POINTS

    if text.strip().lower() in _NAMED_POINTS:
        return text.strip().lower()
    return [n.strip() for n in text.split(",") if n.strip()]


def _configure(parser) -> None:
    from normlib.train import DATASETS

    own = "normlib's models only"
    parser.add_argument("--model", type=_model_name, default="resnet",
                        help="mlp, vgg, resnet (normlib's models; default resnet) or "
                             "package.module:factory, a function or class that returns an "
                             "nn.Module when called without arguments")
    parser.add_argument("--input-shape", type=_input_shape, default=None,
                        help="shape of one input without the batch axis, e.g. 3,224,224 (needed "
                             "with a factory; default 3,32,32 for normlib's models)")
    parser.add_argument("--depth", type=_positive, default=None,
                        help=f"VGG: convolutions; ResNet: 6n+2; MLP: hidden layers (default 20; {own})")
    parser.add_argument("--width", type=_positive, default=None,
                        help=f"channels of the first stage (default 16; {own})")
    parser.add_argument("--norm", default=None,
                        help="a registered normalizer, e.g. bn, ln, in, gn, wn, sws, none "
                             f"(default bn; {own})")
    parser.add_argument("--group-size", type=_positive, default=None,
                        help=f"channels per group (gn; {own})")
    parser.add_argument("--num-groups", type=_positive, default=None,
                        help=f"number of groups (gn; {own})")
    parser.add_argument("--skipinit", action="store_true", default=None,
                        help=f"ResNet: zero-initialized branch scalars ({own})")
    parser.add_argument("--data", choices=("random", *DATASETS), default="random",
                        help="the batch: Gaussian inputs (random, default) or a dataset for "
                             "normlib's models (digits, mnist1d, cifar; digits needs "
                             "normlib[data], cifar the archive on disk)")
    parser.add_argument("--batch-size", type=_positive, default=None,
                        help="samples in the batch (default 64 for normlib's models, 32 for a "
                             "factory)")
    parser.add_argument("--seed", type=_seed, default=0,
                        help="seed of the initialization and of the Gaussian inputs (default 0)")
    parser.add_argument("--mode", choices=("train", "eval"), default="train",
                        help="normalize with batch statistics (train, default) or running ones")
    parser.add_argument("--at", type=_points, default="auto",
                        help="where to probe: auto (default: residual blocks, else normalization "
                             "layers, else weight layers), blocks, layers, norms, weights, or "
                             "module names separated by commas")
    parser.add_argument("--fail-on", choices=("failure", "warning", "never"), default="failure",
                        help="exit with status 1 when a verdict is a failure (default), also a "
                             "warning, or never")
    parser.add_argument("--json", action="store_true",
                        help="print the diagnosis as JSON (checks, metrics, per-layer table)")
    parser.add_argument("--layers", action="store_true", help="also print the per-layer table")


_diagnose_command.configure = _configure
