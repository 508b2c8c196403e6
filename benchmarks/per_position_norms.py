"""Per-position LayerNorm and RMSNorm of normlib against timm's LayerNorm2d and RmsNorm2d.

    .venv/bin/python benchmarks/per_position_norms.py [--repeats 9] [--inner 5]

normlib's ``ln2d`` (LayerNorm2d), ``rms2d`` (RMSNorm2d) and ``pn`` (PositionalNorm, the same
function as ``ln2d`` computed by the NAP/NOP/NRR framework) run interleaved with timm's layer in
one process, forward and forward+backward, on a ``(16, 64, 28, 28)`` map. Each measurement is
``--inner`` calls; the pair's order alternates every round so that drift of a shared machine
hits both alike. Printed: the median over ``--repeats`` rounds of normlib's time divided by
timm's (1.00: as fast), and the ratio of the minima in parentheses.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from peers import timm  # noqa: E402  (imports torchvision on this CPU torch first)

from normlib.layers import LayerNorm2d, PositionalNorm, RMSNorm2d  # noqa: E402


def _time(layer, x, backward: bool, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        y = layer(x)
        if backward:
            y.sum().backward()
    return (time.perf_counter() - start) / inner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--inner", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(16, 64, 28, 28, requires_grad=True)
    pairs = {
        "ln2d vs timm LayerNorm2d": (LayerNorm2d(64, eps=1e-6), timm.layers.LayerNorm2d(64, eps=1e-6)),
        "rms2d vs timm RmsNorm2d": (RMSNorm2d(64, eps=1e-6), timm.layers.RmsNorm2d(64, eps=1e-6)),
        "pn vs timm LayerNorm2d": (PositionalNorm(64, eps=1e-6), timm.layers.LayerNorm2d(64, eps=1e-6)),
    }
    print(f"x: {tuple(x.shape)}, {args.repeats} rounds of {args.inner} calls, "
          f"{torch.get_num_threads()} thread(s); normlib time / timm time")
    for name, (ours, theirs) in pairs.items():
        for backward in (False, True):
            ratios, mine, their = [], [], []
            for r in range(args.repeats):
                if r % 2:
                    b = _time(theirs, x, backward, args.inner)
                    a = _time(ours, x, backward, args.inner)
                else:
                    a = _time(ours, x, backward, args.inner)
                    b = _time(theirs, x, backward, args.inner)
                ratios.append(a / b)
                mine.append(a)
                their.append(b)
            what = "fwd+bwd" if backward else "fwd"
            print(f"{name:26s} {what:8s} {statistics.median(ratios):5.2f} "
                  f"({min(mine) / min(their):.2f})")


if __name__ == "__main__":
    main()
