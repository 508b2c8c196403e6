"""Speed of the composed framework path, whitening and Positional Normalization, side by side.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/speed.py [--rounds 9] [--threads 1]
                                                         [--device cpu] [--profile]
                                                         [--no-compiled] [--sweep 8,16,64]

Each row of the table is one ratio measured in one run: its contenders alternate in
interleaved rounds (the order rotated every round, so that a shared machine's slow phases
hit all alike), and the row reports the medians and their ratio, with the goal and whether
it is met (judged on the medians), and beside it the ratio of the minima, a second reading
that a shared machine's bursts of load disturb less. Forward+backward passes, float32,
training mode. On a CPU with one thread the clock is the process's CPU time
(``time.process_time``), so that the time spent waiting for a shared machine's other
processes is not counted; otherwise wall time.

Rows:

- ``framework/<BN|LN|IN|GN>``: normlib's layer with ``backend="framework"`` (the
  NAP/NOP/NRR composition every normalizer without a torch kernel takes) divided by torch's
  own layer. Goal <= 2.5.
- ``framework compiled/<BN|LN|IN|GN>`` (``--compiled``, on by default; ``--no-compiled``
  skips it): the same framework-path layer under ``torch.compile`` (``dynamic=False``, one
  compilation per normalizer and shape, forward and backward) divided by torch's own layer,
  eager. Goal <= 1.2. The compile time of each is printed under its row (not in the ratio);
  inductor keeps compiled kernels in an on-disk cache, so a second run shows near 0 s. Above
  the rows, a compiled module's own cost per call (guards and wrappers, measured on a layer
  that only multiplies), and under each row the ratio without it.
- ``IterNorm vs ZCA``: batch whitening of a ``(256, 512)`` input in groups of 64, ZCA
  (eigendecomposition) time divided by IterNorm (T = 5) time. Goal >= 1.5. The sweep
  below the table gives the same ratio for other group sizes, each called even within 5%
  (this machine's run-to-run noise): the crossover is the smallest group size from which
  ZCA is faster at every larger size.
- ``ZCA custom/autograd``: :func:`normlib.whitening.whiten` with ZCA (its Daleckii-Krein
  backward, and the centered covariance's own backward) divided by the same computation
  differentiated by autograd through
  ``torch.linalg.eigh``. Goal <= 1.0 (not slower).
- ``PositionalNorm/LayerNorm2d``: :class:`normlib.layers.PositionalNorm` divided by
  timm's ``LayerNorm2d``. timm is not installed here, so the reference is its forward,
  which is three lines: ``permute(0, 2, 3, 1)``, ``F.layer_norm`` over the channels,
  ``permute(0, 3, 1, 2)`` (:class:`LayerNorm2dReference`). Goal <= 1.1.

``--profile`` prints a ``torch.profiler`` table (self CPU time per operator) for each
contender of every row whose goal is not met, so the cause can be read off.

Why some goals are hard on a CPU (the profile shows it):

- The framework path runs one reduction pass for the mean, one elementwise pass for
  ``x - mu``, one reduction for the variance and one multiply-add for the output, and its
  backward two reductions and two multiply-adds: about 1.5 to 2 times the memory traffic of
  torch's fused kernels, and every full-size temporary is a fresh allocation (on a CPU, a
  page-faulting ``malloc`` of the input's size). What would close the gap is a fused
  kernel per partition: ``torch.compile`` generates it (the compiled rows).
- Compiled LN and GN: the generated forward reads the input three times (the mean, the
  variance about it, the output) where torch's GroupNorm kernel reads it twice (its moments
  in one pass); the backward reads the input and the gradient twice in both. Inductor's
  one-pass forms, Welford's update and float64 sums of ``x`` and ``x^2``, were measured
  slower than the two passes on this CPU (fewer passes, more arithmetic per element). So
  the compiled layer moves about 9/8 of torch's memory traffic. On top, a layer compiled
  alone pays a compiled module's fixed cost on every call: dynamo's guard checks and the
  wrappers of the compiled forward and backward, about 0.1 ms per forward+backward here
  (printed above the compiled rows), 0.05 of the ratio at ``(128, 256, 8, 8)`` where
  torch's GroupNorm takes 2 ms. What meets the goal: compiling the model rather than the
  layer (the fixed cost once per model call, and an activation after the normalizer fused
  into its output pass), or a fused one-pass moments kernel as torch's.
- IterNorm at group size 64 needs ``3T - 3 = 12`` batched ``64 x 64`` products forward and
  twice as many backward (a hand-derived backward through the coupled iteration needs as
  many: six per step, as autograd's); one batched ``64 x 64`` product costs about 1/26 of one
  batched ``eigh`` of that size on a CPU core (LAPACK's ``syevd`` is fast at this size), so
  the 36 products alone cost more than ZCA's eigendecomposition and five products (a bound of
  about 0.86 on the ratio of the matrix work, before any overhead), and the work on the
  activations, shared by both, pulls the layer's ratio towards 1. The row prints, below it,
  the top operators of each by self CPU time (``torch.profiler``) and this cost model,
  measured, with what 1.5x would need. On a GPU the balance flips: batched products run at
  full speed while ``eigh`` is a slow iterative kernel (IterNorm's 3x goal there).
  Measured with the profiler, products that allocate a fresh output look twice as slow as
  in-place ones (``baddbmm_``); that is the profiler's own per-call cost (without it, a
  fresh ``128 KiB`` output costs about 2 microseconds), so the profile's shares, not its
  absolute times, are the reading.
- ZCA's own backward: the whitening matrix's (four batched ``64 x 64`` products: ``U^T G U``,
  the divided differences, and back) against autograd's through ``eigh`` (five), and the
  centered covariance's (one ``(64, 64) x (64, 256)`` product fused with the sum, where
  autograd through ``Xc Xc^T`` takes two, and one mean for the centering's adjoint instead
  of autograd's negation, sum and expansion). With the matrix's product alone the ratio
  sat within a few percent of 1; the covariance's product and passes make the margin.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from normlib import layers as L
from normlib.whitening import (
    BatchWhitening,
    merge_groups,
    split_groups,
    whiten,
    whitening_matrix,
)

SHAPES = [(64, 64, 32, 32), (128, 256, 8, 8)]


class LayerNorm2dReference(nn.Module):
    """timm's ``LayerNorm2d`` forward: layer norm over the channels of an NCHW tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def zca_autograd(x: torch.Tensor, group_size: int, eps: float = 1e-5) -> torch.Tensor:
    """ZCA whitening of the rows of ``x: (d, m)`` with autograd through ``torch.linalg.eigh``."""
    rows = split_groups(x, group_size)
    xc = rows - rows.mean(dim=-1, keepdim=True)  # plain operations: autograd differentiates all
    cov = xc @ xc.transpose(-1, -2) / xc.shape[-1]
    cov = (cov + cov.transpose(-1, -2)) / 2 + eps * torch.eye(group_size, dtype=x.dtype, device=x.device)
    lam, vec = torch.linalg.eigh(cov)
    g = (vec * lam.rsqrt().unsqueeze(-2)) @ vec.transpose(-1, -2)
    return merge_groups(g @ xc)


#: The clock of every timing: wall time, or on a CPU run with one thread the CPU time of this
#: process (``time.process_time``), which does not count the time the process waits while
#: other processes of a shared machine hold the cores. Set in ``main``.
CLOCK = time.perf_counter


def fwd_bwd(fn, x: torch.Tensor, grad: torch.Tensor, inner: int):
    """A timed callable: ``inner`` forward+backward passes of ``fn`` on ``x``."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def run() -> float:
        sync()
        start = CLOCK()
        for _ in range(inner):
            x.grad = None
            fn(x).backward(grad)
        sync()
        return (CLOCK() - start) / inner

    return run


class Timings(dict):
    """Median seconds per contender, with the minima (``.minima``) alongside."""

    minima: dict[str, float]


def interleaved(contenders: dict, rounds: int) -> Timings:
    """Median seconds per contender over ``rounds`` rounds, the order rotated each round.

    The minima are kept too (``.minima``): on a shared machine, where other processes only
    ever add time, the ratio of minima is the second reading of each row.
    """
    names = list(contenders)
    for name in names:  # warm-up
        contenders[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(k + r) % len(names)]
            times[name].append(contenders[name]())
    result = Timings({n: statistics.median(t) for n, t in times.items()})
    result.minima = {n: min(t) for n, t in times.items()}
    return result


def cost_model(device: torch.device, rounds: int, layer: dict[str, float], groups: int = 8,
               size: int = 64) -> None:
    """Why IterNorm is not 1.5x faster than ZCA here: the matrix work of each, measured.

    IterNorm (T = 5, coupled Newton-Schulz) needs 3T - 3 = 12 batched products of
    ``size x size`` matrices forward and 24 backward (two per forward product, also with
    the hand-derived backward); ZCA one ``eigh`` and one product forward and four products
    backward (Daleckii-Krein). The work on the ``(256, 512)`` activations (covariance,
    ``G (x - mu)``, their backward) is the same for both and only dilutes the ratio: it is
    the layer's time less the whitening matrix's. Minima over the rounds (the least disturbed
    run of each) are printed. From them, what 1.5x would need: with ``s`` the shared work,
    ``b`` one product and ``e`` one ``eigh``, ``(s + e + 5b) >= 1.5 (s + 36b)``, that is
    ``e >= 0.5 s + 49 b``.
    """
    a = torch.randn(groups, size, 4 * size, device=device)
    spd = a @ a.transpose(-1, -2) / (4 * size) + 1e-3 * torch.eye(size, device=device)
    b = torch.randn(groups, size, size, device=device)
    leaf = spd.clone().requires_grad_()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timer(fn, inner=10):
        def run():
            sync()
            start = CLOCK()
            for _ in range(inner):
                fn()
            sync()
            return (CLOCK() - start) / inner
        return run

    contenders = {
        "eigh": timer(lambda: torch.linalg.eigh(spd)),
        "bmm": timer(lambda: torch.bmm(spd, b)),
        "iternorm": timer(lambda: whitening_matrix(leaf, "iternorm", 1e-5, 5).backward(b)),
        "zca": timer(lambda: whitening_matrix(leaf, "zca", 1e-5).backward(b)),
    }
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(k + r) % len(names)]
            times[name].append(contenders[name]())
    t = {n: min(v) for n, v in times.items()}
    shared = min(layer["iternorm"] - t["iternorm"], layer["zca"] - t["zca"])
    ms = lambda v: f"{v * 1e3:.2f} ms"  # noqa: E731
    print(f"    cost model ({groups} groups of {size}, minima): one batched eigh {ms(t['eigh'])} = "
          f"{t['eigh'] / t['bmm']:.0f} batched products of {t['bmm'] * 1e3:.3f} ms;\n"
          f"      IterNorm's 36 products = {ms(36 * t['bmm'])}; ZCA's eigh + 5 products = "
          f"{ms(t['eigh'] + 5 * t['bmm'])};\n"
          f"      whitening matrix forward+backward as run: IterNorm {ms(t['iternorm'])} "
          f"({t['iternorm'] / t['bmm']:.0f} products' worth), ZCA {ms(t['zca'])} "
          f"(ZCA/IterNorm {t['zca'] / t['iternorm']:.2f});\n"
          f"      shared work on the activations (layer less matrix) {ms(shared)}.", flush=True)
    need = 0.5 * shared + 49 * t["bmm"]
    print(f"    what would meet it: 1.5x needs eigh >= 0.5 x shared + 49 products = {ms(need)} "
          f"({need / t['eigh']:.1f}x the eigh measured here), i.e. a device where eigh is slow "
          f"next to batched products (a GPU: the >= 3x goal there), or fewer products (T <= 3, "
          f"less accurate whitening); even free of all overhead, 36 products against eigh + 5 "
          f"bound the matrix ratio at {(t['eigh'] + 5 * t['bmm']) / (36 * t['bmm']):.2f} on "
          f"this CPU.", flush=True)


def profile_reason(contenders: dict, rows: int = 5) -> None:
    """Top operators by self CPU time (``torch.profiler``, ``record_shapes=True``) per contender.

    Printed in one line each under the IterNorm row: the operator, its input shapes, its share
    of the profiled time and its call count per forward+backward. The profiler's own per-call
    cost (tens of microseconds, more on operators that allocate a fresh output) inflates small
    operators, so the shares, not the absolute times, are the reading.
    """
    from torch.profiler import profile

    for name, fn in contenders.items():
        fn()
        reps = 10
        with profile(record_shapes=True) as prof:
            for _ in range(reps):
                fn()
        events = prof.key_averages(group_by_input_shape=True)
        total = sum(e.self_cpu_time_total for e in events)
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
        parts = [f"{e.key.replace('aten::', '')}{_shapes(e.input_shapes)} "
                 f"{100 * e.self_cpu_time_total / total:.0f}% x{e.count // reps}" for e in top]
        print(f"    profile {name}: " + "; ".join(parts), flush=True)


#: Ratios within this fraction of 1 count as even in the crossover: on this shared machine the
#: same pair of contenders moves by about this much from run to run.
EVEN = 0.05


def crossover_verdict(ratio: float) -> str:
    """``"IterNorm faster"``, ``"ZCA faster"`` or ``"even"`` for a ratio ZCA time / IterNorm time."""
    if ratio > 1 + EVEN:
        return "IterNorm faster"
    if ratio < 1 - EVEN:
        return "ZCA faster"
    return "even"


def crossover_summary(verdicts: dict[int, str]) -> str:
    """Where the crossover lies: the smallest group size from which ZCA is faster at every
    larger size, and how IterNorm fares below it.

    Example:
        >>> print(crossover_summary({8: "even", 16: "even", 32: "IterNorm faster",
        ...                          64: "ZCA faster", 128: "ZCA faster"}))
        crossover at group size 64: ZCA faster from there on; below, IterNorm as fast or faster at [8, 16, 32]
    """
    groups = sorted(verdicts)
    zca_from = next((g for g in groups if all(verdicts[h] == "ZCA faster" for h in groups if h >= g)),
                    None)
    below = [g for g in groups if zca_from is None or g < zca_from]
    not_slower = [g for g in below if verdicts[g] != "ZCA faster"]
    slower = [g for g in below if verdicts[g] == "ZCA faster"]
    if zca_from is None:
        head = f"no crossover up to group size {groups[-1]}"
    elif not below:
        return f"no crossover: ZCA faster at every group size from {groups[0]}"
    else:
        head = f"crossover at group size {zca_from}: ZCA faster from there on"
    parts = [f"IterNorm as fast or faster at {not_slower}"] if not_slower else []
    parts += [f"slower at {slower}"] if slower else []
    return f"{head}; {'below, ' if zca_from is not None else ''}{' and '.join(parts)}"


def _shapes(shapes) -> str:
    kept = [tuple(s) for s in shapes if s]
    return str(kept).replace(" ", "") if kept else ""


def framework_pairs(c: int) -> dict[str, tuple[nn.Module, nn.Module]]:
    """normlib's framework-path layer and torch's native layer, per normalizer, for ``c`` channels."""
    return {
        "BN": (L.BatchNorm(c, backend="framework"), nn.BatchNorm2d(c)),
        "LN": (L.LayerNorm(c, backend="framework"), nn.GroupNorm(1, c)),
        "IN": (L.InstanceNorm(c, backend="framework"), nn.InstanceNorm2d(c, affine=True)),
        "GN": (L.GroupNorm(c, num_groups=32, backend="framework"), nn.GroupNorm(32, c)),
    }


class _ChannelScale(nn.Module):
    """``x * w`` with a per-channel parameter: the least a compiled layer can do."""

    def __init__(self, c: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def compiled_call_cost(device: torch.device, rounds: int, c: int) -> float:
    """Seconds a forward+backward call of a compiled module costs beyond the eager one.

    Measured on :class:`_ChannelScale` at ``(2, c, 2, 2)``, where the arithmetic is nothing:
    dynamo's guard checks and the compiled forward's and backward's wrappers. This is paid
    per call of a compiled module, so a layer compiled alone pays it per layer, and a model
    compiled whole pays it once.
    """
    x = torch.randn(2, c, 2, 2, device=device, requires_grad=True)
    grad = torch.randn_like(x)
    eager = _ChannelScale(c).to(device)
    compiled = torch.compile(_ChannelScale(c).to(device), dynamic=False)
    compiled(x).backward(grad)
    t = interleaved({"compiled": fwd_bwd(compiled, x, grad, 20),
                     "eager": fwd_bwd(eager, x, grad, 20)}, rounds)
    return max(0.0, t["compiled"] - t["eager"])


def compiled_rows(device: torch.device, rounds: int, report) -> None:
    """``framework compiled/torch``: the framework path under ``torch.compile`` / torch eager.

    One compilation per normalizer and shape (``dynamic=False``: the shape is fixed, so no
    shape-generic code and no recompilation), forward and backward (AOTAutograd compiles the
    backward on the first ``backward`` call). The compile time of each is printed after the
    row; it is paid once per model and shape, and is not in the ratio. Goal <= 1.2.
    """
    import torch._dynamo

    call_cost = compiled_call_cost(device, rounds, 256)
    print(f"    (a compiled module's own cost per forward+backward call, measured on x * w at "
          f"(2, 256, 2, 2): {call_cost * 1e6:.0f} us)", flush=True)
    for shape in SHAPES:
        x = torch.randn(shape, device=device, requires_grad=True)
        grad = torch.randn(shape, device=device)
        inner = 2 if device.type == "cpu" else 20
        for name, (ours, theirs) in framework_pairs(shape[1]).items():
            ours, theirs = ours.to(device).train(), theirs.to(device).train()
            compiled = torch.compile(ours, dynamic=False)
            start = time.perf_counter()
            x.grad = None
            compiled(x).backward(grad)  # compiles forward and backward
            compile_s = time.perf_counter() - start
            torch.testing.assert_close(compiled(x), theirs(x), rtol=1e-4, atol=1e-4)
            contenders = {"compiled": fwd_bwd(compiled, x, grad, inner),
                          "torch": fwd_bwd(theirs, x, grad, inner)}
            t = interleaved(contenders, rounds)
            ratio = t["compiled"] / t["torch"]
            report(f"framework compiled/torch {name}", str(shape), t, "compiled", "torch",
                   ratio, "<= 1.2", ratio <= 1.2, contenders)
            print(f"    (compile, forward+backward: {compile_s:.0f} s; without the per-call cost "
                  f"the ratio is {(t['compiled'] - call_cost) / t['torch']:.2f})", flush=True)
        torch._dynamo.reset()


def profile_table(fn, label: str, rows: int = 12) -> None:
    from torch.profiler import profile

    fn()
    with profile() as prof:
        fn()
    print(f"\n--- profile: {label} (self CPU time, one measurement) ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true",
                        help="profile the contenders of every row whose goal is not met")
    parser.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the framework path under torch.compile (8 compilations, "
                             "30-90 s each on a loaded CPU; --no-compiled skips them)")
    parser.add_argument("--sweep", default="8,16,32,64,128",
                        help="group sizes for the IterNorm/ZCA crossover ('' to skip)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    global CLOCK
    cpu_time = device.type == "cpu" and torch.get_num_threads() == 1
    CLOCK = time.process_time if cpu_time else time.perf_counter
    torch.manual_seed(0)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"float32, forward+backward, medians of {args.rounds} interleaved rounds, "
          f"{'CPU time of this process' if cpu_time else 'wall time'}")
    header = (f"{'row':<34} {'shape':<22} {'A ms':>9} {'B ms':>9} {'ratio':>7} {'of min':>7} "
              f"{'goal':>9}  status")
    print(header)
    print("-" * len(header))
    unmet = []

    def report(row, shape, t, a, b, ratio, goal, ok, contenders):
        ta, tb = t[a], t[b]
        # the ratio of minima, the same way up as the row's ratio of medians
        minima = t.minima[a] / t.minima[b]
        if abs(ratio - ta / tb) > 1e-9 * ratio:
            minima = 1 / minima
        print(f"{row:<34} {shape:<22} {ta * 1e3:9.3f} {tb * 1e3:9.3f} {ratio:7.2f} {minima:7.2f} "
              f"{goal:>9}  {'MET' if ok else 'NOT MET'}", flush=True)
        if not ok:
            unmet.append((row, shape, contenders))

    # 1. the framework path against torch's kernels
    for shape in SHAPES:
        c = shape[1]
        x = torch.randn(shape, device=device, requires_grad=True)
        grad = torch.randn(shape, device=device)
        pairs = framework_pairs(c)
        inner = 2 if device.type == "cpu" else 20
        for name, (ours, theirs) in pairs.items():
            ours, theirs = ours.to(device).train(), theirs.to(device).train()
            contenders = {"framework": fwd_bwd(ours, x, grad, inner),
                          "torch": fwd_bwd(theirs, x, grad, inner)}
            t = interleaved(contenders, args.rounds)
            ratio = t["framework"] / t["torch"]
            report(f"framework/torch {name}", str(shape), t, "framework", "torch", ratio,
                   "<= 2.5", ratio <= 2.5, contenders)

    # 1b. the framework path under torch.compile against torch's eager kernels
    if args.compiled:
        compiled_rows(device, args.rounds, report)

    # 2. IterNorm against ZCA, and the crossover group size
    gen = torch.Generator().manual_seed(0)
    c = 512
    mixing = torch.randn(c, c, generator=gen) / c**0.5 + torch.eye(c)
    xw = (torch.randn(256, c, generator=gen) @ mixing.T).to(device).requires_grad_()
    gw = torch.randn(256, c, generator=gen).to(device)

    def whitening_pair(group: int):
        it = BatchWhitening(c, method="iternorm", group_size=group, iterations=5).to(device)
        zca = BatchWhitening(c, method="zca", group_size=group).to(device)
        return {"iternorm": fwd_bwd(it, xw, gw, 1), "zca": fwd_bwd(zca, xw, gw, 1)}

    contenders = whitening_pair(64)
    t = interleaved(contenders, 3 * args.rounds)
    ratio = t["zca"] / t["iternorm"]
    report("IterNorm(T=5) vs ZCA (ZCA/IterNorm)", "(256, 512) groups 64", t, "iternorm", "zca",
           ratio, ">= 1.5", ratio >= 1.5, contenders)

    profile_reason(contenders)
    if ratio < 1.5:
        cost_model(device, args.rounds, t)

    # 3. ZCA's own backward against autograd through eigh
    xr = xw.detach().T.contiguous().requires_grad_()
    gr = gw.T.contiguous()
    contenders = {"custom": fwd_bwd(lambda t: whiten(t, "zca", group_size=64), xr, gr, 1),
                  "autograd": fwd_bwd(lambda t: zca_autograd(t, 64), xr, gr, 1)}
    t = interleaved(contenders, 3 * args.rounds)
    ratio = t["custom"] / t["autograd"]
    report("ZCA custom/autograd backward", "(512, 256) groups 64", t, "custom", "autograd",
           ratio, "<= 1.0", ratio <= 1.0, contenders)

    # 4. Positional Normalization against timm's LayerNorm2d
    for shape in SHAPES:
        x = torch.randn(shape, device=device, requires_grad=True)
        grad = torch.randn(shape, device=device)
        ours = L.PositionalNorm(shape[1]).to(device)
        theirs = LayerNorm2dReference(shape[1]).to(device)
        torch.testing.assert_close(ours(x), theirs(x))  # the same result
        inner = 2 if device.type == "cpu" else 20
        contenders = {"pn": fwd_bwd(ours, x, grad, inner), "ln2d": fwd_bwd(theirs, x, grad, inner)}
        t = interleaved(contenders, args.rounds)
        ratio = t["pn"] / t["ln2d"]
        report("PositionalNorm/LayerNorm2d", str(shape), t, "pn", "ln2d", ratio, "<= 1.1",
               ratio <= 1.1, contenders)

    # the crossover of IterNorm and ZCA
    if args.sweep:
        print("\nIterNorm (T=5) vs ZCA by group size, (256, 512) input: ZCA time / IterNorm time "
              f"(within {EVEN:.0%} of 1: even, the size of this machine's run-to-run noise)")
        verdicts = {}
        for group in (int(s) for s in args.sweep.split(",")):
            t = interleaved(whitening_pair(group), 3 * args.rounds)
            ratio = t["zca"] / t["iternorm"]
            verdicts[group] = crossover_verdict(ratio)
            print(f"  group {group:>4}: IterNorm {t['iternorm'] * 1e3:8.2f} ms, ZCA "
                  f"{t['zca'] * 1e3:8.2f} ms, ratio {ratio:5.2f}  {verdicts[group]}", flush=True)
        print(crossover_summary(verdicts))

    if args.profile:
        for row, shape, contenders in unmet:
            for name, fn in contenders.items():
                profile_table(fn, f"{row} {shape}: {name}")


if __name__ == "__main__":
    main()
