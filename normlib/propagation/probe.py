r"""Probes: per-layer statistics of activations and gradients in one forward and one backward pass.

:func:`probe` attaches forward hooks to chosen points of a model (the residual
blocks of a ResNet, the layers of an MLP or VGG, every normalization layer, or
any modules you name), runs one forward and one backward pass per batch and
returns one row per point with

- the forward statistics of :mod:`normlib.propagation.statistics` (variance,
  second moment, mean pairwise cosine similarity, stable, numerical and
  effective rank, orthogonality gap) of the point's output, and
- with ``backward=True``: ``grad_norm``, the norm :math:`\|\partial L/\partial h\|_F`
  of the loss gradient with respect to the point's output ``h`` (whole batch),
  ``weight_grad_norm``, the norm of the gradient with respect to the point's
  weights (its parameters with two or more dimensions: convolution and linear
  weights, not the normalizers' per-channel gains; of a weight-normalized layer,
  :math:`w = g\, v/\|v\|`, the stored direction :math:`v`, not the gain
  :math:`g`), and ``weight_norm``, the norm of those same parameters.

The hooks reduce each output to these numbers at once; no activation is kept
beyond the one batch that autograd needs for the backward pass, so memory does
not grow with the number of batches. Gradients are taken with
``torch.autograd.grad``, which leaves every ``.grad`` untouched.

The model is left as it was found: hooks removed, train/eval flag of every
submodule, buffers (BatchNorm running statistics, spectral-norm vectors) and
parameters restored, also when the forward or backward pass raises. The
probes measure in training mode (batch statistics) by default, the regime
the theory of chapters "Stable forward propagation", "Informative forward
propagation" and "Stable backward propagation" describes; ``mode="eval"``
measures with running statistics instead. The ``mode`` column says which.

Example:
    >>> import torch
    >>> from normlib.models import MLP
    >>> from normlib.propagation import probe
    >>> model = MLP(16, 4, width=32, depth=3, norm="bn")
    >>> table = probe(model, torch.randn(8, 16), torch.randint(0, 4, (8,)))
    >>> list(table["name"])
    ['input', 'layers.0', 'layers.1', 'layers.2']
    >>> bool(table["grad_norm"].gt(0).all()), model.training
    (True, True)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from normlib._checks import check_bool, check_callable, check_mode
from normlib._state import (
    check_materialized,
    preserved_state,  # re-exported: the guard every analysis tool uses
)
from normlib.layers import NormLayer
from normlib.propagation.statistics import STATISTICS, representation_statistics

__all__ = [
    "MODES",
    "GRADIENT_STATISTICS",
    "NORM_TYPES",
    "probe_points",
    "preserved_state",
    "probe",
]

MODES = ("train", "eval")
#: The backward statistics the probes record.
GRADIENT_STATISTICS = ("grad_norm", "weight_grad_norm", "weight_norm")
#: Module types that ``at="norms"`` probes: normlib's layers and torch's own normalizers.
NORM_TYPES: tuple[type, ...] = (
    NormLayer,
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)

_NAMED_POINTS = ("auto", "blocks", "layers", "norms")


def _children_names(model: nn.Module) -> str:
    names = [name for name, _ in model.named_children()]
    return ", ".join(names) if names else "none"


def probe_points(model: nn.Module, at="auto") -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs a probe hooks, in forward order.

    Args:
        model: the network.
        at: where to measure:

            - ``"blocks"``: ``model.stem`` (if any) then every module of ``model.blocks``,
              the residual stream of :class:`normlib.models.ResNet`;
            - ``"layers"``: every module of ``model.layers`` (:class:`normlib.models.MLP`,
              :class:`normlib.models.VGG`);
            - ``"auto"``: ``"blocks"`` if the model has ``blocks``, else ``"layers"``;
            - ``"norms"``: every normalization layer (:data:`NORM_TYPES`);
            - a module type or tuple of types: every module of those types;
            - a list of module names as in ``model.named_modules()``.

    Returns:
        list: ``(qualified name, module)`` pairs.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or ``at`` has an unsupported type.
        ValueError: if the model has no point of the requested kind, or a name is unknown.

    Example:
        >>> from normlib.models import resnet20
        >>> [name for name, _ in probe_points(resnet20(width=4), "blocks")][:3]
        ['stem', 'blocks.0', 'blocks.1']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(at, str):
        key = at.strip().lower()
        if key not in _NAMED_POINTS:
            raise ValueError(
                f"at={at!r} is not a kind of point; use one of {_NAMED_POINTS}, a module type "
                "or a list of module names"
            )
        if key == "auto":
            if isinstance(getattr(model, "blocks", None), nn.ModuleList):
                key = "blocks"
            elif isinstance(getattr(model, "layers", None), nn.ModuleList):
                key = "layers"
            else:
                raise ValueError(
                    f"{type(model).__name__} has neither .blocks nor .layers (its children: "
                    f"{_children_names(model)}); pass at='norms', a module type or a list of names"
                )
        if key in ("blocks", "layers"):
            container = getattr(model, key, None)
            if not isinstance(container, nn.ModuleList) or len(container) == 0:
                raise ValueError(
                    f"{type(model).__name__} has no .{key} (its children: {_children_names(model)}); "
                    "use at='auto', 'norms', a module type or a list of module names"
                )
            points = [(f"{key}.{i}", m) for i, m in enumerate(container)]
            stem = getattr(model, "stem", None)
            if key == "blocks" and isinstance(stem, nn.Module):
                points.insert(0, ("stem", stem))
            return points
        points = [(name, m) for name, m in model.named_modules() if isinstance(m, NORM_TYPES)]
        if not points:
            raise ValueError(
                f"{type(model).__name__} has no normalization layer to probe (at='norms'); it was "
                "built without an activation normalizer (norm=None or a weight normalizer). "
                "Probe at='blocks' or 'layers' instead"
            )
        return points
    if isinstance(at, type) or (isinstance(at, tuple) and at and all(isinstance(t, type) for t in at)):
        points = [(name, m) for name, m in model.named_modules() if name and isinstance(m, at)]
        if not points:
            kinds = at.__name__ if isinstance(at, type) else ", ".join(t.__name__ for t in at)
            raise ValueError(f"{type(model).__name__} has no module of type {kinds} to probe")
        return points
    if isinstance(at, Sequence) and at and all(isinstance(n, str) for n in at):
        modules = dict(model.named_modules())
        missing = [n for n in at if n not in modules or n == ""]
        if missing:
            raise ValueError(
                f"unknown module name(s) {missing} in at=; names look like "
                f"{[n for n in modules if n][:5]} (see model.named_modules())"
            )
        return [(n, modules[n]) for n in at]
    raise TypeError(
        f"at must be 'auto', 'blocks', 'layers', 'norms', a module type or a non-empty list of "
        f"module names, got {at!r}"
    )


def _as_batches(inputs, targets) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    if isinstance(inputs, torch.Tensor):
        yield inputs, targets
        return
    if targets is not None:
        raise ValueError(
            "targets= goes with a single input tensor; with several batches give (x, y) pairs"
        )
    if (isinstance(inputs, tuple) and len(inputs) == 2
            and all(isinstance(t, torch.Tensor) for t in inputs)
            and inputs[0].dim() >= 2 and inputs[1].dim() == 1 and not inputs[1].is_floating_point()):
        # A tuple (x, y) would otherwise be read as two batches, and y fed to the model.
        raise TypeError(
            "inputs=(x, y) looks like one labelled batch, but a tuple is read as a sequence of "
            "batches; call probe(model, x, y) or pass inputs=[(x, y)]"
        )
    if not isinstance(inputs, Iterable):
        raise TypeError(
            f"inputs must be a tensor (N, *) or an iterable of tensors or (x, y) pairs, "
            f"got {type(inputs).__name__}"
        )
    for item in inputs:
        if isinstance(item, torch.Tensor):
            yield item, None
        elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor):
            yield item[0], item[1]
        else:
            raise TypeError(
                f"each batch must be a tensor or an (x, y) pair, got {type(item).__name__}"
            )


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _default_loss(output: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    if targets is None:
        # Squared output (zero targets): a loss that needs no labels.
        return 0.5 * output.pow(2).sum() / output.shape[0]
    if targets.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        return F.cross_entropy(output, targets.long())
    return F.mse_loss(output, targets)


def _first_tensor(output, name: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"the output of {name} is {type(output).__name__}, not a tensor; probe another point")


def _weights_of(module: nn.Module) -> list[nn.Parameter]:
    # A parametrized weight may be stored as several tensors: weight normalization keeps the
    # gain g (out, 1, ...) as original0 next to the direction v as original1. The weight is
    # the largest of them (v; the last one on a tie); the others are gains, as per-channel as
    # a normalizer's, even though they have two or more dimensions.
    gains: set[int] = set()
    for m in module.modules():
        if not parametrize.is_parametrized(m):
            continue
        for chain in m.parametrizations.values():
            originals = [p for _, p in chain.named_parameters(recurse=False)]
            if len(originals) > 1:
                largest = max(p.numel() for p in originals)
                weight = [p for p in originals if p.numel() == largest][-1]
                gains.update(id(p) for p in originals if p is not weight)
    return [p for p in module.parameters() if p.dim() >= 2 and id(p) not in gains]


def probe(
    model: nn.Module,
    inputs,
    targets: torch.Tensor | None = None,
    *,
    at="auto",
    mode: str = "train",
    backward: bool = True,
    loss_fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
    include_input: bool = True,
    rtol: float | None = None,
) -> pd.DataFrame:
    r"""Measure activations and gradients at every probed point, one forward + backward pass per batch.

    Args:
        model: the network (left exactly as found, see ``normlib.propagation.preserved_state``).
        inputs: one batch ``x: (N, *)`` with ``N >= 2``, or an iterable of batches
            (tensors or ``(x, y)`` pairs); statistics are averaged over batches.
        targets: targets of a single batch (class indices for cross-entropy, or
            real-valued targets for mean squared error).
        at: the points to probe, see :func:`probe_points`; the rows come back in the order the
            forward pass reaches them, whatever the order of a list given here.
        mode: ``"train"`` (batch statistics; running statistics are restored after)
            or ``"eval"`` (running statistics).
        backward: also run the backward pass and record :data:`GRADIENT_STATISTICS`.
        loss_fn: ``loss_fn(output, targets) -> scalar``; default cross-entropy for
            integer targets, mean squared error for real targets and
            :math:`\frac{1}{2N}\|f(x)\|^2` without targets.
        include_input: add a row ``"input"`` (layer 0) with the input's statistics
            (and the gradient with respect to the input).
        rtol: threshold of :func:`normlib.propagation.statistics.numerical_rank`.

    Returns:
        pandas.DataFrame: one row per point with columns ``layer`` (0 for the input,
        then 1, 2, ... in forward order), ``name``, the statistics, ``mode``,
        ``batch_size`` and ``num_batches``.

    Raises:
        TypeError: for a model that is not an ``nn.Module`` or inputs that are not tensors.
        ValueError: for a batch of fewer than two samples (similarity needs pairs),
            an unknown mode, no point of the requested kind, or a non-scalar loss.

    Example:
        >>> from normlib.models import MLP
        >>> t = probe(MLP(8, 2, width=16, depth=2), torch.randn(6, 8), backward=False)
        >>> t[["layer", "name"]].values.tolist()
        [[0, 'input'], [1, 'layers.0'], [2, 'layers.1']]
    """
    check_mode(mode)
    check_bool("backward", backward)
    check_bool("include_input", include_input)
    check_callable("loss_fn", loss_fn, what="callable as loss_fn(output, targets)", allow_none=True)
    check_materialized(model, what="probe")
    points = probe_points(model, at)
    device = _model_device(model)
    names = (["input"] if include_input else []) + [name for name, _ in points]
    columns = list(STATISTICS) + (list(GRADIENT_STATISTICS) if backward else [])
    sums = [dict.fromkeys(columns, 0.0) for _ in names]
    offset = 1 if include_input else 0
    weights = [_weights_of(m) for _, m in points]
    num_batches, batch_sizes = 0, set()

    for x, y in _as_batches(inputs, targets):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"inputs must be tensors, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[0] < 2:
            raise ValueError(
                f"a probe batch needs at least 2 samples (similarity and rank compare samples, "
                f"batch statistics need pairs), got input of shape {tuple(x.shape)}"
            )
        batch_sizes.add(int(x.shape[0]))
        records: list[dict[str, float] | None] = [None] * len(names)
        outputs: list[torch.Tensor | None] = [None] * len(points)

        fired: list[int] = []
        with preserved_state(model), contextlib.ExitStack() as stack:
            for i, (name, module) in enumerate(points):
                hook = _make_hook(i, name, records, outputs, offset, backward, rtol, fired)
                stack.callback(module.register_forward_hook(hook).remove)
            model.train(mode == "train")
            x = x.to(device)
            if include_input:
                records[0] = representation_statistics(x, rtol)
            with torch.enable_grad() if backward else torch.no_grad():
                x_in = x.detach().clone().requires_grad_(backward and x.is_floating_point())
                output = model(x_in)
                # Before the backward pass, which fills in the records of the reached points.
                missing = [names[i] for i, r in enumerate(records) if r is None]
                if missing:
                    raise ValueError(f"the forward pass never reached {missing}; probe points "
                                     f"the model uses")
                if backward:
                    _backward_statistics(output, y, device, loss_fn, x_in, outputs, weights,
                                         records, offset, include_input)
        for total, record in zip(sums, records):
            for key in columns:
                total[key] += record.get(key, math.nan)
        if num_batches == 0:
            forward_order = list(fired)  # the points as the forward pass reached them
        num_batches += 1

    if num_batches == 0:
        raise ValueError("inputs is empty: give at least one batch")
    # Batches of unequal size have no single batch size.
    batch_size = next(iter(batch_sizes)) if len(batch_sizes) == 1 else math.nan
    # Rows in forward order, whatever order ``at`` listed the points in.
    order = ([0] if include_input else []) + [i + offset for i in forward_order]
    names, sums = [names[k] for k in order], [sums[k] for k in order]
    rows = []
    for layer, (name, total) in enumerate(zip(names, sums), start=0 if include_input else 1):
        row = {"layer": layer, "name": name}
        row.update({key: total[key] / num_batches for key in columns})
        row.update({"mode": mode, "batch_size": batch_size, "num_batches": num_batches})
        rows.append(row)
    return pd.DataFrame(rows)


def _make_hook(i, name, records, outputs, offset, backward, rtol, fired):
    # Reduce the output to numbers at once; keep the tensor only for autograd.grad.
    def hook(module, args, output):
        if i not in fired:
            fired.append(i)
        out = _first_tensor(output, name)
        records[i + offset] = representation_statistics(out, rtol)
        if backward and out.requires_grad:
            outputs[i] = out

    return hook


def _backward_statistics(output, y, device, loss_fn, x_in, outputs, weights, records, offset,
                         include_input) -> None:
    out = _first_tensor(output, "the model")
    y = y.to(device) if isinstance(y, torch.Tensor) else y
    loss = (loss_fn or _default_loss)(out, y)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar tensor, got {loss!r}")
    wanted: list[torch.Tensor] = []
    slots: list[tuple[str, int]] = []
    if include_input and x_in.requires_grad:
        wanted.append(x_in)
        slots.append(("input", 0))
    for i, h in enumerate(outputs):
        if h is not None:
            wanted.append(h)
            slots.append(("output", i))
    unique: dict[int, int] = {}
    for ws in weights:
        for w in ws:
            if w.requires_grad and id(w) not in unique:
                unique[id(w)] = len(wanted)
                wanted.append(w)
    grads = torch.autograd.grad(loss, wanted, allow_unused=True) if wanted else ()

    def norm(g) -> float:
        return 0.0 if g is None else float(g.detach().to(torch.float64).norm())

    for (kind, i), g in zip(slots, grads):
        records[i + offset if kind == "output" else 0]["grad_norm"] = norm(g)
    for i, ws in enumerate(weights):
        rec = records[i + offset]
        rec.setdefault("grad_norm", math.nan)
        if ws:
            g2 = sum(norm(grads[unique[id(w)]]) ** 2 if id(w) in unique else 0.0 for w in ws)
            rec["weight_grad_norm"] = math.sqrt(g2)
            rec["weight_norm"] = math.sqrt(sum(float(w.detach().double().norm()) ** 2 for w in ws))
        else:
            rec["weight_grad_norm"] = math.nan
            rec["weight_norm"] = math.nan
    if include_input:
        records[0].setdefault("grad_norm", math.nan)
        records[0]["weight_grad_norm"] = math.nan
        records[0]["weight_norm"] = math.nan
