"""Forward+backward time of normlib's BN, LN, IN, GN divided by torch's, side by side.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/norm_layers.py [--device cuda] [--repeats 15]

For each layer and shape, three modules run interleaved in one process: torch's
own layer, normlib's layer on its default path (torch's kernel where the
configuration matches) and normlib's layer on the pure framework path
(partition -> standardize -> affine in plain tensor operations). Each
measurement is ``--inner`` forward+backward passes, and the order of the three
is rotated every round so that drift of a shared machine hits all alike. The
reported times and ratios are medians over ``--repeats`` rounds; the ratio of
the minima is printed in parentheses (on a busy shared machine neither is exact,
and the two together show how noisy the run was). A ratio of 1.00 means as fast
as torch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from normlib import layers as L

SHAPES = [(64, 64, 32, 32), (128, 256, 8, 8)]


def pairs(c: int):
    """name -> (torch layer, normlib default path, normlib framework path)."""
    return {
        "BN": (nn.BatchNorm2d(c), L.BatchNorm(c), L.BatchNorm(c, backend="framework")),
        "LN": (nn.GroupNorm(1, c), L.LayerNorm(c), L.LayerNorm(c, backend="framework")),
        "IN": (nn.InstanceNorm2d(c, affine=True), L.InstanceNorm(c),
               L.InstanceNorm(c, backend="framework")),
        "GN": (nn.GroupNorm(32, c), L.GroupNorm(c, num_groups=32),
               L.GroupNorm(c, num_groups=32, backend="framework")),
    }


def measure(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, inner: int) -> float:
    """Seconds per forward+backward pass, averaged over ``inner`` passes."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(inner):
        x.grad = None
        layer(x).backward(grad)
    sync()
    return (time.perf_counter() - start) / inner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--inner", type=int, default=None,
                        help="passes per measurement (default: 20 on GPU, 5 on CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    device = torch.device(args.device)
    inner = args.inner or (20 if device.type == "cuda" else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, float32, threads "
          f"{torch.get_num_threads()}, {args.repeats} rounds x {inner} passes; "
          "times are medians, ratios median (min)")
    header = (f"{'layer':<5} {'shape (N, C, H, W)':<20} {'torch ms':>9} {'default ms':>11} "
              f"{'framework ms':>13} {'default/torch':>16} {'framework/torch':>18}")
    print(header)
    print("-" * len(header))
    for shape in SHAPES:
        x = torch.randn(shape, device=device, requires_grad=True)
        grad = torch.randn(shape, device=device)
        for layer_name, modules in pairs(shape[1]).items():
            modules = [m.to(device).train() for m in modules]
            for m in modules:  # warm-up: allocator, kernels, autotuning
                measure(m, x, grad, 2)
            times: list[list[float]] = [[], [], []]
            for r in range(args.repeats):
                for k in range(3):
                    i = (k + r) % 3
                    times[i].append(measure(modules[i], x, grad, inner))
            t_torch, t_default, t_framework = (statistics.median(t) * 1e3 for t in times)
            m_torch, m_default, m_framework = (min(t) for t in times)
            default_ratio = f"{t_default / t_torch:.2f} ({m_default / m_torch:.2f})"
            framework_ratio = f"{t_framework / t_torch:.2f} ({m_framework / m_torch:.2f})"
            print(f"{layer_name:<5} {str(shape):<20} {t_torch:9.3f} {t_default:11.3f} "
                  f"{t_framework:13.3f} {default_ratio:>16} {framework_ratio:>18}")


if __name__ == "__main__":
    main()
