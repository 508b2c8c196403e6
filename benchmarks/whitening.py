"""Forward+backward time and whitening error of batch whitening methods, side by side.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/whitening.py [--channels 512] [--group-size 64] [--batch 256]
                                             [--iterations 5] [--repeats 30] [--device cpu]
                                             [--threads N]

Every method whitens the same ``(batch, channels)`` float32 input in groups of
``group_size`` channels (training mode, so the whitening matrix is computed
from the batch and differentiated through). The methods are timed in
interleaved rounds (each round runs every method once, in a shuffled order),
so a slow phase of a shared machine hits all of them alike; the table reports
the median and the ratio to eigendecomposition ZCA. Peers: BatchNorm
(``torch.nn.BatchNorm1d``, the cost of standardization) and ZCA differentiated
by plain autograd through ``torch.linalg.eigh`` (what a direct implementation
does). The whitening error is ``||Cov(y) - I||_F / sqrt(g)`` averaged over the
groups (:func:`normlib.whitening.whitening_error`).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from torch import nn

from normlib.whitening import BatchWhitening, covariance, split_groups, whitening_error


class PlainAutogradZCA(nn.Module):
    """ZCA whitening with ``torch.linalg.eigh`` differentiated by autograd (the peer)."""

    def __init__(self, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.group_size, self.eps = group_size, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = split_groups(x.T, self.group_size)
        mean, cov = covariance(rows)
        lam, vec = torch.linalg.eigh(cov + self.eps * torch.eye(self.group_size, device=x.device))
        g = (vec * lam.rsqrt().unsqueeze(-2)) @ vec.transpose(-1, -2)
        return (g @ (rows - mean)).reshape(x.shape[1], -1).T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    c, g = args.channels, args.group_size
    gen = torch.Generator().manual_seed(0)
    # Correlated channels: a random mixing of independent ones, so whitening has work to do.
    mixing = torch.randn(c, c, generator=gen) / c**0.5 + torch.eye(c)
    x = (torch.randn(args.batch, c, generator=gen) @ mixing.T).to(device)
    grad_out = torch.randn(args.batch, c, generator=gen).to(device)

    methods = {
        f"IterNorm (T={args.iterations})": BatchWhitening(c, method="iternorm", group_size=g,
                                                         iterations=args.iterations),
        "ZCA (eigh)": BatchWhitening(c, method="zca", group_size=g),
        "Cholesky": BatchWhitening(c, method="cholesky", group_size=g),
        "ZCA (eigh, plain autograd)": PlainAutogradZCA(g),
        "BatchNorm (torch)": nn.BatchNorm1d(c),
    }
    for m in methods.values():
        m.to(device)

    def step(module: nn.Module) -> tuple[float, torch.Tensor]:
        xi = x.clone().requires_grad_()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        y = module(xi)
        y.backward(grad_out)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, y.detach()

    for module in methods.values():  # warm-up: allocations, thread pools, kernels
        for _ in range(3):
            step(module)
    times: dict[str, list[float]] = {name: [] for name in methods}
    outputs: dict[str, torch.Tensor] = {}
    order = list(methods)
    rng = random.Random(0)
    for _ in range(args.repeats):
        rng.shuffle(order)
        for name in order:
            seconds, outputs[name] = step(methods[name])
            times[name].append(seconds)

    print(f"batch whitening forward+backward, input ({args.batch}, {c}) float32, groups of {g}, "
          f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} interleaved rounds")
    reference = statistics.median(times["ZCA (eigh)"])
    header = (f"{'method':<28} {'median ms':>10} {'min ms':>8} {'x faster than ZCA':>18} "
              f"{'whitening error':>16}")
    print(header)
    print("-" * len(header))
    for name in methods:
        med, low = statistics.median(times[name]), min(times[name])
        err = whitening_error(outputs[name].T.double(), g)
        print(f"{name:<28} {med * 1e3:>10.2f} {low * 1e3:>8.2f} {reference / med:>18.2f} {err:>16.2e}")


if __name__ == "__main__":
    main()
