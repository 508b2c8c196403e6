"""The experiments of the chapter "Normalization across devices", as every rank runs them.

Data-parallel training splits each global batch of ``K * b`` samples into ``K`` shards of ``b``,
one per device (here: per process). BatchNorm then normalizes each shard with its own
statistics; synchronized BatchNorm (:func:`normlib.distributed.convert_sync`) with those of the
whole global batch; GroupNorm needs no batch at all. The functions below run one rank's part of
each comparison and are meant to be called on every rank, e.g. by
``run_local(fn, 4, ...)`` (:func:`normlib.distributed.run_local`) or under ``torchrun``;
without a process group they run as a single device holding the whole batch, which is the
one-process reference:

- :func:`normalization_noise`: how much a sample's normalized features move when the other
  samples of its batch change (the stochastic normalization disturbance of
  :func:`normlib.analysis.empirical_snd`), for BN with ``b`` samples per device, synchronized
  BN over ``K * b`` and GroupNorm;
- :func:`train_data_parallel`: a short SGD run of a small MLP on the digits with gradients
  averaged over the ranks (as DDP does), one model per normalizer side by side, recording the
  loss of every step, the gap between the training loss in training mode (batch statistics)
  and in evaluation mode (running statistics), the test accuracy each rank's copy of the model
  reaches, and how far the ranks' running statistics drifted apart;
- :func:`sync_traffic`: the numbers a synchronized layer sends per forward and backward pass,
  counted with :func:`normlib.distributed.count_traffic`, next to the closed forms of
  :func:`traffic_per_layer` (``2C + 1`` for BN, ``C/d (d^2 + d) + 1`` for whitening in groups of
  ``d``).

All ranks draw the same global batches from generators seeded alike, so a normalizer is the only
difference between two runs, and the synchronized run equals one process on the global batch.

Example:
    >>> traffic_per_layer(64, "bn"), traffic_per_layer(64, "whitening", group_size=16)
    (129, 1089)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from normlib._checks import check_choice, check_int, check_positive_float, check_positive_int, check_seed

__all__ = [
    "NORMALIZERS",
    "world",
    "digits",
    "build_model",
    "global_batch",
    "normalization_noise",
    "train_data_parallel",
    "traffic_per_layer",
    "sync_traffic",
    "compare_across_devices",
]

#: The normalizers compared, BatchNorm per device, synchronized BatchNorm and GroupNorm.
NORMALIZERS = ("bn", "sync_bn", "gn")
_GN_GROUPS = 4


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` without one.

    Example:
        >>> world()
        (0, 1)
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    rank, size = world()
    if size == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out)
    return out / size


def _all_gather(value) -> list:
    import torch.distributed as dist

    _, size = world()
    if size == 1:
        return [value]
    out: list = [None] * size
    dist.all_gather_object(out, value)
    return out


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits (8x8 images, 10 classes) flattened to 64 standardized features, float64.

    ``(x_train (N, 64), y_train (N,), x_test (M, 64), y_test (M,))``, from
    :func:`normlib.train.load_dataset`.

    Example:
        >>> x, y, xt, yt = digits()
        >>> x.shape[1], x.dtype, int(y.max()) + 1
        (64, torch.float64, 10)
    """
    from normlib.train import load_dataset

    split = load_dataset("digits")
    return (split.x_train.flatten(1).double(), split.y_train,
            split.x_test.flatten(1).double(), split.y_test)


def build_model(norm: str, width: int = 32, depth: int = 2, seed: int = 0,
                process_group=None) -> nn.Module:
    """The MLP of the chapter (``64 -> width`` x ``depth`` -> 10, float64) with normalizer ``norm``.

    ``"bn"``: BatchNorm; ``"sync_bn"``: the same model through :func:`normlib.distributed.convert_sync`
    (identical weights for one ``seed``); ``"gn"``: GroupNorm with 4 groups. The global random
    state is left as it was.

    Example:
        >>> type(build_model("sync_bn").layers[0][1]).__name__
        'SyncBatchNorm'
    """
    check_choice("norm", norm, NORMALIZERS)
    check_positive_int("width", width)
    check_positive_int("depth", depth)
    check_seed(seed)
    from normlib.models import MLP

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if norm == "gn":
            model = MLP(64, 10, width=width, depth=depth, norm="gn",
                        norm_kwargs={"num_groups": _GN_GROUPS})
        else:
            model = MLP(64, 10, width=width, depth=depth, norm="bn")
    model = model.double()
    if norm == "sync_bn":
        from normlib.distributed import convert_sync

        model = convert_sync(model, process_group)
    return model


def global_batch(generator: torch.Generator, num_samples: int, size: int) -> torch.Tensor:
    """``size`` distinct sample indices of ``range(num_samples)`` (the same on every rank for one seed).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> global_batch(g, 10, 4).shape
        torch.Size([4])
    """
    check_int("size", size, minimum=1, maximum=num_samples)
    return torch.randperm(num_samples, generator=generator)[:size]


def _shard(indices: torch.Tensor, per_device: int) -> torch.Tensor:
    rank, _ = world()
    return indices[rank * per_device:(rank + 1) * per_device]


def _layer(norm: str, width: int, groups: int = _GN_GROUPS):
    from normlib import create_norm

    if norm == "gn":
        return create_norm("gn", width, num_groups=groups).double()
    layer = create_norm("bn", width).double()
    if norm == "sync_bn":
        from normlib.distributed import convert_sync

        layer = convert_sync(layer)
    return layer


@torch.no_grad()
def normalization_noise(per_device: int, *, num_probes: int = 16, num_draws: int = 32,
                        width: int = 32, seed: int = 0, data: tuple | None = None) -> dict:
    """How much each normalizer's output for a fixed sample moves with the rest of its batch.

    The features are the pre-activations of a random ``Linear(64, width)`` (Kaiming) on the
    digits. For each of ``num_probes`` training samples and each of ``num_draws`` draws, a global
    batch holds the probe (first sample of rank 0's shard) and ``K * per_device - 1`` other
    training samples drawn at random; every rank normalizes its shard of ``per_device`` samples
    with BN (its own statistics), synchronized BN (the global batch's) and GroupNorm (4 groups).
    Rank 0's normalized probe over the draws, ``(num_draws, width)``, gives its SND
    (:func:`normlib.analysis.empirical_snd`); the result is the mean over the probes.
    The other samples of draw ``j`` are the same for every ``per_device``, so BN with ``K * b``
    samples on one device and synchronized BN with ``b`` on each of ``K`` normalize the very
    same batch. ``data``: the result of :func:`digits` (default: loaded here).

    BN's statistics are per feature, so the draws are laid side by side as features: one
    forward pass of a layer of ``num_probes * num_draws * width`` features normalizes them all
    (and the synchronized layer all-reduces once).

    Returns:
        dict: ``"per_device"``, ``"world_size"``, ``"snd"`` (normalizer -> mean SND) and
        ``"stderr"`` (normalizer -> its standard error over the probes); every rank returns
        rank 0's values.

    Example:
        >>> out = normalization_noise(4, num_probes=2, num_draws=4)
        >>> out["snd"]["gn"] < 1e-12          # GroupNorm does not look at the other samples
        True
    """
    from normlib.analysis import empirical_snd

    check_positive_int("per_device", per_device)
    check_int("num_probes", num_probes, minimum=1)
    check_int("num_draws", num_draws, minimum=2)
    check_positive_int("width", width)
    if width % _GN_GROUPS:
        raise ValueError(f"width must be a multiple of {_GN_GROUPS} (GroupNorm's groups), "
                         f"got {width}; use e.g. width=32")
    _, size = world()
    x_train = (data if data is not None else digits())[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        linear = nn.Linear(64, width).double()
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
    features = linear(x_train)
    n = len(features)
    total = size * per_device
    probes = global_batch(torch.Generator().manual_seed(seed), n, num_probes)
    columns = []                                   # (per_device, width) for every probe and draw
    for p, probe in enumerate(probes.tolist()):
        others = torch.cat([torch.arange(probe), torch.arange(probe + 1, n)])
        for j in range(num_draws):
            g = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * p + j)
            pick = others[global_batch(g, n - 1, total - 1)] if total > 1 else others[:0]
            batch = torch.cat([probes[p:p + 1], pick])
            columns.append(features[_shard(batch, per_device)])
    side_by_side = torch.cat(columns, dim=1)       # (per_device, probes * draws * width)
    channels = side_by_side.shape[1]
    result = {"per_device": per_device, "world_size": size, "snd": {}, "stderr": {}}
    for norm in NORMALIZERS:
        if norm == "gn":
            layer = _layer(norm, channels, groups=_GN_GROUPS * num_probes * num_draws)
        else:
            layer = _layer(norm, channels)
        probe_out = layer.train()(side_by_side)[0].reshape(num_probes, num_draws, width)
        snd = torch.tensor([empirical_snd(probe_out[p]) for p in range(num_probes)])
        result["snd"][norm] = float(snd.mean())
        result["stderr"][norm] = (float(snd.std() / math.sqrt(num_probes)) if num_probes > 1
                                  else math.nan)
    return _all_gather(result)[0]


def _bn_buffers(model: nn.Module) -> torch.Tensor:
    parts = [b.reshape(-1) for name, b in model.named_buffers()
             if name.endswith(("running_mean", "running_var"))]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, per_device: int,
              train_mode: bool) -> float:
    """Mean cross-entropy over ``x`` in global batches of ``K * per_device`` (each rank its shard)."""
    from normlib._state import preserved_state

    _, size = world()
    total = size * per_device
    losses = []
    with torch.no_grad(), preserved_state(model):  # running statistics untouched
        model.train(train_mode)
        for start in range(0, len(x) - total + 1, total):
            idx = _shard(torch.arange(start, start + total), per_device)
            losses.append(nn.functional.cross_entropy(model(x[idx]), y[idx]))
    return float(_all_reduce_mean(torch.stack(losses).mean()))


def _per_device_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose synchronized layers use each device's own statistics."""
    import copy

    from normlib.distributed import revert_sync

    return revert_sync(copy.deepcopy(model))


def train_data_parallel(per_device: int, norms: tuple[str, ...] = NORMALIZERS, *,
                        steps: int = 80, lr: float = 0.05, momentum: float = 0.9,
                        width: int = 32, depth: int = 2, seed: int = 0,
                        gap_samples: int = 256, data: tuple | None = None) -> dict:
    """Train the chapter's MLP with each normalizer of ``norms`` on the digits, data parallel.

    The models (one per normalizer, the same initial weights) are trained side by side for
    ``steps`` SGD steps. Every step draws a global batch of ``K * per_device`` training samples
    (the same on every rank), each rank computes each model's loss on its shard (mean
    cross-entropy) and its gradient, and the gradients are averaged over the ranks, as DDP
    does (one all-reduce for all the models); with ``"sync_bn"`` this is one process training
    on the global batch. Without a process group the single process holds the whole batch of
    ``per_device`` samples. ``data``: the result of :func:`digits` (default: loaded here).

    After training, each model's loss on the first ``gap_samples`` training samples is taken in
    evaluation mode (running statistics) and in training mode (batch statistics, global batches
    split as in training); for the synchronized model also in training mode with each device's
    own statistics (its layers reverted to BN): the train/eval gap of one network when its
    statistics come from ``K * b`` or from ``b`` samples. The gap is the training-mode loss
    minus the evaluation-mode loss: how much worse the network does on the same samples when
    they are normalized with the statistics of their batch instead of the running ones.

    Returns:
        dict: normalizer -> its result, a dict (equal on every rank except
        ``"test_accuracy"``) with

        - ``"loss"``: the mean training loss of every step over the global batch;
        - ``"eval_mode_loss"``, ``"train_mode_loss"``: the losses above; ``"gap"`` is their
          difference (training minus evaluation mode); for ``"sync_bn"`` also
          ``"per_device_train_mode_loss"`` and ``"per_device_gap"``;
        - ``"test_accuracy"``: accuracy of this rank's model on the test set in eval mode;
          ``"test_accuracies"``: those of all ranks;
        - ``"buffer_spread"``: the largest difference of a running statistic (mean or variance)
          between rank 0 and another rank, relative to the largest of rank 0's.

    Example:
        >>> run = train_data_parallel(8, ("gn",), steps=3, gap_samples=16)["gn"]
        >>> len(run["loss"]), run["gap"]       # GroupNorm: the same in both modes
        (3, 0.0)
    """
    for norm in norms:
        check_choice("norm", norm, NORMALIZERS)
    check_positive_int("per_device", per_device)
    check_positive_int("steps", steps)
    check_positive_float("lr", lr)
    check_positive_int("gap_samples", gap_samples)
    _, size = world()
    x_train, y_train, x_test, y_test = data if data is not None else digits()
    total = size * per_device
    models = {norm: build_model(norm, width, depth, seed) for norm in norms}
    params = {norm: [p for p in m.parameters() if p.requires_grad] for norm, m in models.items()}
    # SGD with momentum as torch.optim.SGD computes it (buffer = momentum * buffer + gradient),
    # written out: building a torch optimizer imports torch's compiler, seconds in every process
    buffers = {norm: [torch.zeros_like(p) for p in params[norm]] for norm in norms}
    generator = torch.Generator().manual_seed(seed + 1)
    losses: dict[str, list[float]] = {norm: [] for norm in norms}
    for model in models.values():
        model.train()
    for _ in range(steps):
        idx = _shard(global_batch(generator, len(x_train), total), per_device)
        parts = []
        for norm, model in models.items():
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            for p in params[norm]:
                p.grad = None
            loss.backward()
            parts += [p.grad.reshape(-1) for p in params[norm]] + [loss.detach().reshape(1)]
        flat = _all_reduce_mean(torch.cat(parts))  # one all-reduce: every gradient and loss
        start = 0
        for norm in norms:
            for p in params[norm]:
                p.grad.copy_(flat[start:start + p.numel()].view_as(p))
                start += p.numel()
            losses[norm].append(float(flat[start]))
            start += 1
            with torch.no_grad():
                for p, buf in zip(params[norm], buffers[norm]):
                    buf.mul_(momentum).add_(p.grad)
                    p.sub_(lr * buf)
    n_gap = min(gap_samples, len(x_train))
    xg, yg = x_train[:n_gap], y_train[:n_gap]
    out = {}
    for norm, model in models.items():
        train_loss = _evaluate(model, xg, yg, per_device, True)
        eval_loss = _evaluate(model, xg, yg, per_device, False)
        result = {"norm": norm, "per_device": per_device, "world_size": size,
                  "loss": losses[norm], "train_mode_loss": train_loss,
                  "eval_mode_loss": eval_loss, "gap": train_loss - eval_loss}
        if norm == "sync_bn":
            local = _evaluate(_per_device_copy(model), xg, yg, per_device, True)
            result["per_device_train_mode_loss"] = local
            result["per_device_gap"] = local - eval_loss
        model.eval()
        with torch.no_grad():
            accuracy = float((model(x_test).argmax(1) == y_test).double().mean())
        buffers = _all_gather(_bn_buffers(model))
        result["test_accuracy"] = accuracy
        result["test_accuracies"] = _all_gather(accuracy)
        scale = float(buffers[0].abs().max()) if buffers[0].numel() else 0.0
        result["buffer_spread"] = max((float((b - buffers[0]).abs().max()) / scale
                                       for b in buffers[1:] if b.numel()), default=0.0)
        out[norm] = result
    return out


def traffic_per_layer(num_features: int, kind: str, group_size: int | None = None) -> int:
    """Numbers one synchronized layer all-reduces per forward pass (the backward sends as many).

    BatchNorm over ``C`` channels: the element count, ``C`` sums and ``C`` sums of squares,
    ``2C + 1``. Batch whitening in ``C / d`` groups of ``d`` channels: per group ``d`` sums and a
    ``d x d`` second-moment matrix, plus one count, ``C/d (d^2 + d) + 1``.

    Example:
        >>> traffic_per_layer(512, "bn"), traffic_per_layer(512, "whitening", 512)
        (1025, 262657)
    """
    check_positive_int("num_features", num_features)
    check_choice("kind", kind, ("bn", "whitening"))
    if kind == "bn":
        return 2 * num_features + 1
    d = num_features if group_size is None else check_positive_int("group_size", group_size)
    if num_features % d:
        raise ValueError(f"group_size must divide num_features={num_features}, got {d}; "
                         f"use a divisor such as {math.gcd(num_features, 16)}")
    return num_features // d * (d * d + d) + 1


def sync_traffic(num_features: int = 64, group_sizes: tuple[int, ...] = (4, 16, 64),
                 per_device: int = 32) -> list[dict]:
    """Count what synchronized BN and batch whitening send for one forward and backward pass.

    Runs :class:`normlib.distributed.SyncBatchNorm` and
    :class:`normlib.distributed.SyncBatchWhitening` (ZCA, each group size of ``group_sizes``) on
    a random ``(per_device, num_features)`` batch under :func:`normlib.distributed.count_traffic`.

    Returns:
        list[dict]: one per layer, with ``"layer"``, ``"group_size"``, ``"forward"`` and
        ``"backward"`` numbers, ``"calls"`` and ``"bytes"`` (forward and backward together,
        per rank).

    Outside a process group (or in a group of one) the layers are local and send nothing.

    Example:
        >>> [(r["layer"], r["group_size"], r["forward"]) for r in sync_traffic(8, (4,))]
        [('bn', None, 0), ('whitening', 4, 0)]
    """
    from normlib.distributed import SyncBatchNorm, SyncBatchWhitening, count_traffic

    check_positive_int("num_features", num_features)
    check_positive_int("per_device", per_device)
    rank, _ = world()
    layers = [("bn", None, SyncBatchNorm(num_features, dtype=torch.float64))]
    layers += [("whitening", d, SyncBatchWhitening(num_features, group_size=d, dtype=torch.float64))
               for d in group_sizes]
    gen = torch.Generator().manual_seed(rank)
    rows = []
    for kind, d, layer in layers:
        x = torch.randn(per_device, num_features, dtype=torch.float64, generator=gen,
                        requires_grad=True)
        layer.train()
        with count_traffic() as forward:
            out = layer(x)
        with count_traffic() as backward:
            out.pow(2).sum().backward()
        rows.append({"layer": kind, "group_size": d, "forward": forward.numbers,
                     "backward": backward.numbers, "calls": forward.calls + backward.calls,
                     "bytes": forward.bytes + backward.bytes})
    return rows


def compare_across_devices(per_device: tuple[int, ...] = (2, 4, 8), *, steps: int = 80,
                           lr: float = 0.05, num_probes: int = 16, num_draws: int = 32,
                           num_features: int = 64, group_sizes: tuple[int, ...] = (4, 16, 64),
                           gap_samples: int = 256, seed: int = 0,
                           data: tuple | None = None) -> dict:
    """Everything the chapter measures, on one rank: noise, training runs and traffic.

    For each ``b`` of ``per_device``: :func:`normalization_noise` and :func:`train_data_parallel`
    (every normalizer of :data:`NORMALIZERS`); then :func:`sync_traffic`. One call per process
    keeps the processes' start-up (importing torch) to once for the whole chapter; pass
    ``data=digits()``, loaded once by the caller, rather than loading it in every process.

    Returns:
        dict: ``"world_size"``, ``"per_device"``, ``"noise"`` (one dict per ``b``), ``"runs"``
        (one dict per ``b`` and normalizer), ``"traffic"`` (the rows of :func:`sync_traffic`)
        and ``"seconds"`` (time of each part).

    Example:
        >>> out = compare_across_devices((8,), steps=2, num_probes=2, num_draws=2,
        ...                              num_features=8, group_sizes=(4,), gap_samples=16)
        >>> [r["norm"] for r in out["runs"]], out["world_size"]
        (['bn', 'sync_bn', 'gn'], 1)
    """
    import time

    start = time.perf_counter()
    sizes = [check_positive_int("per_device", b) for b in per_device]
    data = data if data is not None else digits()
    noise = [normalization_noise(b, num_probes=num_probes, num_draws=num_draws, seed=seed,
                                 data=data)
             for b in sizes]
    after_noise = time.perf_counter()
    runs = [run for b in sizes
            for run in train_data_parallel(b, steps=steps, lr=lr, seed=seed, gap_samples=gap_samples,
                                       data=data).values()]
    after_runs = time.perf_counter()
    traffic = sync_traffic(num_features, group_sizes)
    end = time.perf_counter()
    return {"world_size": world()[1], "per_device": sizes, "noise": noise, "runs": runs,
            "traffic": traffic,
            "seconds": {"noise": after_noise - start, "training": after_runs - after_noise,
                        "traffic": end - after_runs}}
