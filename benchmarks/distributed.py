"""Synchronized against local batch statistics: time of a DDP training step, and bytes sent per layer.

    .venv/bin/python benchmarks/distributed.py [--worlds 2 4] [--batch 16] [--channels 32]
                                               [--size 16] [--rounds 15] [--backend gloo]

For each world size ``K`` (``K`` local gloo processes on 127.0.0.1, one torch thread each,
started by :func:`normlib.distributed.run_local`) and each normalizer (torch's BatchNorm2d,
IterNorm and ZCA batch whitening), a small CNN (two convolutions, each followed by the
normalizer and a ReLU, a linear read-out) is trained with DDP on ``batch`` samples per rank,
once with local statistics (what DDP alone gives: every rank normalizes with its own shard) and
once after :func:`normlib.convert_sync` (the statistics of all ``K * batch`` samples). A step is
forward, backward (DDP's gradient all-reduce included) and an SGD update, started on all ranks
together (a barrier); rank 0's wall time is recorded. The two variants run in interleaved rounds
(each round times every normalizer local and synchronized, in a shuffled order shared by the
ranks), so a slow phase of a shared machine hits all of them alike; the table gives medians and
the ratio synchronized / local of the medians and of the fastest steps (on a loaded machine the
fastest step is the better estimate of the cost itself), and the ratio of rank 0's median CPU
time per step (the computation a rank adds, without the waits). The traffic columns count what the
synchronized layers all-reduce per layer and pass (:func:`normlib.distributed.count_traffic`):
``2 C + 1`` numbers for BatchNorm, ``d^2 + d`` per group of ``d`` channels plus one count for
whitening, in float64 (the sums are accumulated in float64), once in the forward and once in the
backward pass.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import torch.distributed as dist
from torch import nn

import normlib
from normlib.distributed import convert_sync, count_traffic, run_local

NORMS = {
    "bn": lambda c: nn.BatchNorm2d(c),
    "iternorm": lambda c: normlib.create_norm("iternorm", c),  # groups of up to 64 channels
    "zca": lambda c: normlib.create_norm("zca", c),  # groups of up to 16 channels
}


def _model(norm: str, channels: int, size: int) -> nn.Module:
    make = NORMS[norm]
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1), make(channels), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1), make(channels), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))


def _worker(batch: int, channels: int, size: int, rounds: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank = dist.get_rank()
    variants = {}
    for norm in NORMS:
        torch.manual_seed(0)
        local = _model(norm, channels, size)
        synced = convert_sync(_model(norm, channels, size))
        for key, model in ((norm, local), (f"{norm}+sync", synced)):
            ddp = DDP(model)
            variants[key] = (ddp, torch.optim.SGD(ddp.parameters(), lr=0.01))
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(batch, 3, size, size, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    loss_fn = nn.CrossEntropyLoss()

    def step(key: str) -> tuple[float, float]:
        model, opt = variants[key]
        dist.barrier()
        start, start_cpu = time.perf_counter(), time.process_time()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        return time.perf_counter() - start, time.process_time() - start_cpu

    for key in variants:  # warm-up
        step(key)
    times = {key: [] for key in variants}
    cpu = {key: [] for key in variants}
    order = list(variants)
    shuffle = random.Random(0)  # the same order on every rank
    for _ in range(rounds):
        shuffle.shuffle(order)
        for key in order:
            wall, used = step(key)
            times[key].append(wall)
            cpu[key].append(used)
    traffic = {}
    for norm in NORMS:
        model = variants[f"{norm}+sync"][0]
        with count_traffic() as record:
            loss_fn(model(x), y).backward()
        layers = sum(1 for m in model.modules() if type(m).__name__.startswith("Sync"))
        numbers, dtype = record.per_call[0]
        traffic[norm] = {"calls": record.calls / layers, "numbers": numbers,
                         "bytes": numbers * torch.empty((), dtype=dtype).element_size(),
                         "layer": repr(next(m for m in model.modules()
                                            if type(m).__name__.startswith("Sync")))}
    return {"times": {k: statistics.median(v) for k, v in times.items()},
            "best": {k: min(v) for k, v in times.items()},
            "cpu": {k: statistics.median(v) for k, v in cpu.items()}, "traffic": traffic}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--batch", type=int, default=16, help="samples per rank")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--backend", default="gloo")
    args = parser.parse_args()

    print(f"DDP training step of a 2-conv CNN, {args.channels} channels, {args.size}x{args.size} "
          f"inputs, {args.batch} samples per rank; medians of {args.rounds} interleaved rounds "
          f"(rank 0's wall time), one torch thread per rank")
    header = (f"{'ranks':>5}  {'norm':<9} {'local ms':>9} {'sync ms':>9} {'ratio':>6} "
              f"{'best ratio':>10} {'cpu ratio':>9}  {'all-reduces/layer/step':>22} "
              f"{'numbers/layer/pass':>18} {'bytes/layer/pass':>16}")
    print(header)
    print("-" * len(header))
    for world in args.worlds:
        out = run_local(_worker, world, args.batch, args.channels, args.size, args.rounds,
                        backend=args.backend, timeout=1800)[0]
        for norm in NORMS:
            local, synced = out["times"][norm], out["times"][f"{norm}+sync"]
            t = out["traffic"][norm]
            best = out["best"][f"{norm}+sync"] / out["best"][norm]
            used = out["cpu"][f"{norm}+sync"] / out["cpu"][norm]
            print(f"{world:>5}  {norm:<9} {1e3 * local:9.2f} {1e3 * synced:9.2f} "
                  f"{synced / local:6.2f} {best:10.2f} {used:9.2f}  {t['calls']:22.0f} "
                  f"{t['numbers']:18d} {t['bytes']:16d}")
    print()
    print("layers: " + "; ".join(f"{norm}: {out['traffic'][norm]['layer']}" for norm in NORMS))
    c = args.channels
    print(f"expected numbers per pass: BN 2C+1 = {2 * c + 1}; whitening (C/d)(d^2 + d) + 1 with d "
          f"the group size (ZCA d=16: {c // 16 * (16 * 16 + 16) + 1}; IterNorm d={min(c, 64)}: "
          f"{(c // min(c, 64)) * (min(c, 64) ** 2 + min(c, 64)) + 1})")


if __name__ == "__main__":
    main()
