r"""Probes: per-layer statistics of activations and gradients in one forward and one backward pass.

:func:`probe` attaches forward hooks to chosen points of a model (by default the
residual blocks or repeated layers that :func:`residual_stream` finds in any
``nn.Module``: normlib's ResNets, VGGs and MLPs, torchvision's and timm's ResNets,
timm's ViTs; else every normalization layer, else every weight layer; or any
modules you name), runs one forward and one backward pass per batch and
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
  :math:`g`), and ``weight_norm``, the norm of those same parameters;
- where the point lies: ``weight_layers``, the number of weight layers
  (convolutions, linear maps) the forward pass ran up to it, counted by hooks, the
  unit of depth of :mod:`normlib.diagnose`; and ``stem``, whether the forward pass
  reached it before the first residual block.

The similarity and rank statistics come from a Gram matrix of the samples, at most
:data:`GRAM_MAX_FEATURES` entries per sample (an evenly strided subsample of a
larger layer, so that they cost little next to the pass itself).

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

from normlib._checks import check_bool, check_callable, check_mode, check_positive_int
from normlib._state import (
    check_materialized,
    preserved_state,  # re-exported: the guard every analysis tool uses
)
from normlib.layers import NormLayer
from normlib.propagation.statistics import STATISTICS, representation_statistics

__all__ = [
    "MODES",
    "GRADIENT_STATISTICS",
    "GRAM_MAX_FEATURES",
    "NORM_TYPES",
    "probe_points",
    "residual_stream",
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

_NAMED_POINTS = ("auto", "blocks", "layers", "norms", "weights")
_CONTAINERS = (nn.Sequential, nn.ModuleList)


def _children_names(model: nn.Module) -> str:
    names = [name for name, _ in model.named_children()]
    return ", ".join(names) if names else "none"


def _is_stage(module: nn.Module) -> bool:
    # A plain container of composite modules (torchvision's layer1 = Sequential(BasicBlock,
    # BasicBlock)) is a stage of blocks; Sequential(conv, norm, relu) is one layer.
    if not isinstance(module, _CONTAINERS) or len(module) == 0:
        return False
    return all(any(True for _ in child.children()) for child in module.children())


def _expand(points: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    for name, module in points:
        if _is_stage(module):
            out.extend(_expand([(f"{name}.{n}", c) for n, c in module.named_children()]))
        else:
            out.append((name, module))
    return out


def _holds_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _longest_run(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The longest run of consecutive sibling modules of one type that hold parameters."""
    best: list[tuple[str, nn.Module]] = []
    for parent_name, parent in model.named_modules():
        if isinstance(parent, (parametrize.ParametrizationList, nn.ModuleDict)) \
                or "parametrizations" in parent_name.split("."):
            continue
        run: list[tuple[str, nn.Module]] = []
        for child_name, child in parent.named_children():
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if not _holds_parameters(child):
                run = []
                continue
            if run and type(run[-1][1]) is type(child):
                run.append((name, child))
            else:
                run = [(name, child)]
            if len(run) > len(best):
                best = list(run)
    return best if len(best) >= 2 else []


def _is_weight_layer(module: nn.Module) -> bool:
    """A module that multiplies by a weight of its own: a convolution, a linear map, ...

    It holds a parameter of two or more dimensions directly (or a parametrized one), and is
    neither a normalizer nor the internals of a parametrization.
    """
    if isinstance(module, (parametrize.ParametrizationList, *NORM_TYPES)):
        return False
    if parametrize.is_parametrized(module):
        return True
    return any(p.dim() >= 2 for p in module.parameters(recurse=False))


def residual_stream(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], tuple[str, nn.Module] | None]:
    """The model's sequence of blocks and its stem, as ``at="auto"`` finds them.

    The first rule that applies:

    1. ``model.blocks`` or ``model.layers``, a ``ModuleList`` or ``Sequential`` (normlib's
       models, timm's ViTs); ``model.stem`` is the stem if there is one;
    2. children named ``layer1``, ``layer2``, ... (torchvision's and timm's ResNets);
    3. the longest run of at least two consecutive sibling modules of one type that hold
       parameters, anywhere in the model.

    A stage, a ``Sequential`` or ``ModuleList`` whose children all have children of their own
    (``layer1 = Sequential(BasicBlock, BasicBlock)``), is replaced by its blocks.

    Returns:
        ``(blocks, stem)``: ``(qualified name, module)`` pairs in registration order, and
        ``(name, module)`` of normlib's ``model.stem`` or ``None``; ``([], None)`` when no rule
        applies.

    Example:
        >>> from normlib.models import resnet20
        >>> blocks, stem = residual_stream(resnet20(width=4))
        >>> stem[0], [name for name, _ in blocks][:2], len(blocks)
        ('stem', ['blocks.0', 'blocks.1'], 9)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for key in ("blocks", "layers"):
        container = getattr(model, key, None)
        if isinstance(container, _CONTAINERS) and len(container) > 0:
            blocks = _expand([(f"{key}.{n}", m) for n, m in container.named_children()])
            stem = getattr(model, "stem", None) if key == "blocks" else None
            return blocks, (("stem", stem) if isinstance(stem, nn.Module) else None)
    stages = [(n, m) for n, m in model.named_children() if n.startswith("layer") and n[5:].isdigit()]
    if stages:
        stages.sort(key=lambda item: int(item[0][5:]))
        return _expand(stages), None
    return _expand(_longest_run(model)), None


def probe_points(model: nn.Module, at="auto") -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs a probe hooks, in forward order.

    Args:
        model: the network.
        at: where to measure:

            - ``"auto"`` (default): the residual blocks or repeated layers of
              :func:`residual_stream` (with normlib's ``model.stem`` first), else every
              normalization layer, else every weight layer;
            - ``"blocks"``: ``model.stem`` (if any) then every module of ``model.blocks``,
              the residual stream of :class:`normlib.models.ResNet`;
            - ``"layers"``: every module of ``model.layers`` (:class:`normlib.models.MLP`,
              :class:`normlib.models.VGG`);
            - ``"norms"``: every normalization layer (:data:`NORM_TYPES`);
            - ``"weights"``: every weight layer (a module holding a weight of two or more
              dimensions: convolutions, linear maps);
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
        >>> import torch.nn as nn
        >>> stages = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(*[nn.Sequential(
        ...     nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()) for _ in range(3)]))
        >>> [name for name, _ in probe_points(stages)]
        ['1.0', '1.1', '1.2']
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
            blocks, stem = residual_stream(model)
            if blocks:
                return ([stem] if stem is not None else []) + blocks
            points = [(n, m) for n, m in model.named_modules() if n and isinstance(m, NORM_TYPES)]
            if len(points) < 2:
                points = [(n, m) for n, m in model.named_modules() if n and _is_weight_layer(m)]
            if not points:
                raise ValueError(
                    f"{type(model).__name__} has no residual blocks, repeated layers, "
                    f"normalization layers or weight layers to probe (its children: "
                    f"{_children_names(model)}); pass at= a module type or a list of names"
                )
            return points
        if key in ("blocks", "layers"):
            container = getattr(model, key, None)
            if not isinstance(container, _CONTAINERS) or len(container) == 0:
                raise ValueError(
                    f"{type(model).__name__} has no .{key} (its children: {_children_names(model)}); "
                    "use at='auto', 'norms', a module type or a list of module names"
                )
            points = _expand([(f"{key}.{n}", m) for n, m in container.named_children()])
            stem = getattr(model, "stem", None)
            if key == "blocks" and isinstance(stem, nn.Module):
                points.insert(0, ("stem", stem))
            return points
        if key == "weights":
            points = [(n, m) for n, m in model.named_modules() if n and _is_weight_layer(m)]
            if not points:
                raise ValueError(f"{type(model).__name__} has no weight layer to probe (at='weights')")
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
        f"at must be 'auto', 'blocks', 'layers', 'norms', 'weights', a module type or a non-empty "
        f"list of module names, got {at!r}"
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


#: Most entries per sample that the probes put in a Gram matrix (similarity and ranks); a
#: larger layer is subsampled, see :func:`normlib.propagation.statistics.representation_statistics`.
GRAM_MAX_FEATURES = 2**16


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
    max_features: int | None = GRAM_MAX_FEATURES,
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
        max_features: most entries per sample in the Gram matrix of a point (default
            :data:`GRAM_MAX_FEATURES`; ``None``: all), see
            :func:`normlib.propagation.statistics.representation_statistics`.

    Returns:
        pandas.DataFrame: one row per point with columns ``layer`` (0 for the input,
        then 1, 2, ... in forward order), ``name``, the statistics, ``mode``,
        ``batch_size``, ``num_batches``, ``weight_layers`` (the number of weight layers,
        convolutions and linear maps, that the forward pass ran up to and including the
        point) and ``stem`` (``True`` for the input and for points the forward pass reaches
        before the first block of :func:`residual_stream` starts).

    Raises:
        TypeError: for a model that is not an ``nn.Module`` or inputs that are not tensors.
        ValueError: for a batch of fewer than two samples (similarity needs pairs),
            an unknown mode, no point of the requested kind, or a non-scalar loss.

    Example:
        >>> from normlib.models import MLP
        >>> t = probe(MLP(8, 2, width=16, depth=2), torch.randn(6, 8), backward=False)
        >>> t[["layer", "name", "weight_layers"]].values.tolist()
        [[0, 'input', 0], [1, 'layers.0', 1], [2, 'layers.1', 2]]
    """
    check_mode(mode)
    check_bool("backward", backward)
    check_bool("include_input", include_input)
    check_callable("loss_fn", loss_fn, what="callable as loss_fn(output, targets)", allow_none=True)
    if max_features is not None:
        check_positive_int("max_features", max_features)
    check_materialized(model, what="probe")
    points = probe_points(model, at)
    blocks, _ = residual_stream(model)
    first_block = blocks[0][1] if blocks else None
    counted = [m for _, m in model.named_modules() if _is_weight_layer(m)]
    device = _model_device(model)
    names = (["input"] if include_input else []) + [name for name, _ in points]
    columns = list(STATISTICS) + (list(GRADIENT_STATISTICS) if backward else [])
    sums = [dict.fromkeys(columns, 0.0) for _ in names]
    offset = 1 if include_input else 0
    weights = [_weights_of(m) for _, m in points]
    num_batches, batch_sizes = 0, set()
    where: list[tuple[int, bool]] = []

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
        # Forward-pass bookkeeping: weight layers run so far, whether the first block started,
        # and for each point (in firing order) where it fired.
        progress = {"weight_layers": 0, "in_body": first_block is None}
        fired: list[int] = []
        position: dict[int, tuple[int, bool]] = {}
        with preserved_state(model), contextlib.ExitStack() as stack:
            # Counting hooks first: a probed weight layer then counts itself.
            for m in counted:
                stack.callback(m.register_forward_hook(_make_counter(progress)).remove)
            if first_block is not None:
                stack.callback(first_block.register_forward_pre_hook(_make_starter(progress)).remove)
            for i, (name, module) in enumerate(points):
                hook = _make_hook(i, name, records, outputs, offset, backward, rtol, max_features,
                                  fired, position, progress)
                stack.callback(module.register_forward_hook(hook).remove)
            model.train(mode == "train")
            x = x.to(device)
            if include_input:
                records[0] = representation_statistics(x, rtol, max_features=max_features)
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
            where = [position[i] for i in forward_order]
        num_batches += 1

    if num_batches == 0:
        raise ValueError("inputs is empty: give at least one batch")
    # Batches of unequal size have no single batch size.
    batch_size = next(iter(batch_sizes)) if len(batch_sizes) == 1 else math.nan
    # Rows in forward order, whatever order ``at`` listed the points in.
    order = ([0] if include_input else []) + [i + offset for i in forward_order]
    names, sums = [names[k] for k in order], [sums[k] for k in order]
    where = ([(0, False)] if include_input else []) + where
    rows = []
    for layer, (name, total, (count, in_body)) in enumerate(zip(names, sums, where),
                                                           start=0 if include_input else 1):
        row = {"layer": layer, "name": name}
        row.update({key: total[key] / num_batches for key in columns})
        row.update({"mode": mode, "batch_size": batch_size, "num_batches": num_batches,
                    "weight_layers": count, "stem": not in_body})
        rows.append(row)
    return pd.DataFrame(rows)


def _make_counter(progress):
    def hook(module, args, output):
        progress["weight_layers"] += 1

    return hook


def _make_starter(progress):
    def hook(module, args):
        progress["in_body"] = True

    return hook


def _make_hook(i, name, records, outputs, offset, backward, rtol, max_features, fired, position,
               progress):
    # Reduce the output to numbers at once; keep the tensor only for autograd.grad.
    def hook(module, args, output):
        if i not in position:
            fired.append(i)
            position[i] = (progress["weight_layers"], progress["in_body"])
        out = _first_tensor(output, name)
        records[i + offset] = representation_statistics(out, rtol, max_features=max_features)
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
