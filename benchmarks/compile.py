"""Eager and ``torch.compile`` time of a ResNet-20 training step for every activation normalizer.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/compile.py [--quick] [--norms bn,gn,iternorm]
                                                           [--batch 32] [--rounds 7] [--threads 1]

For each registered activation normalizer (``normlib.available_norms()`` without the weight
normalizers and ``none``) a CIFAR ResNet-20 (``normlib.models.ResNet(depth=20, norm=name)``,
as ``resnet20``) runs
one training step (forward, cross-entropy, backward, SGD update) eagerly and compiled
(``torch.compile``, default inductor backend). The table gives the number of graph breaks
(``torch._dynamo.explain`` of the training-mode forward; the goal is 0 for all), the
compile time, the eager and compiled step times (medians of interleaved rounds) and the
speed-up ``eager / compiled``.

``--quick`` uses a shallower and narrower network of the same family (``ResNet(depth=8)``,
one block per stage, width 8), batch 16, 3 rounds and five representative normalizers
unless ``--norms`` names others. Compilation dominates: on a shared two-core CPU one
ResNet-20 takes 2 to 5 minutes to compile, so the full table takes over an hour there.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

import normlib
from normlib import registry
from normlib.models import ResNet

QUICK = ["bn", "gn", "pn", "iternorm", "zca"]


def activation_norms() -> list[str]:
    return [n for n in normlib.available_norms() if n != "none" and not registry.is_weight_norm(n)]


def make_step(model, opt, x, y):
    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--norms", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--depth", type=int, default=None, help="6n + 2 (default 20; 8 with --quick)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    batch = args.batch or (16 if args.quick else 32)
    width = args.width or (8 if args.quick else 16)
    rounds = args.rounds or (3 if args.quick else 7)
    depth = args.depth or (8 if args.quick else 20)
    if args.norms:
        names = args.norms.split(",")
    else:
        names = QUICK if args.quick else activation_norms()
    print(f"ResNet-{depth} (width {width}) training step, batch {batch} x 3 x 32 x 32, cpu, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, medians of {rounds} "
          "interleaved rounds")
    header = (f"{'norm':<22} {'breaks':>6} {'compile s':>10} {'eager ms':>9} {'compiled ms':>12} "
              f"{'eager/compiled':>15}")
    print(header)
    print("-" * len(header))
    total_breaks = 0
    for name in names:
        torch.manual_seed(0)
        torch._dynamo.reset()
        x = torch.randn(batch, 3, 32, 32)
        y = torch.randint(0, 10, (batch,))
        try:
            eager_model = ResNet(depth=depth, norm=name, width=width).train()
            compiled_model = ResNet(depth=depth, norm=name, width=width).train()
            compiled_model.load_state_dict(eager_model.state_dict())
            explanation = torch._dynamo.explain(eager_model)(x)
            breaks = explanation.graph_break_count
            torch._dynamo.reset()
            eager = make_step(eager_model, torch.optim.SGD(eager_model.parameters(), lr=1e-3),
                              x, y)
            compiled_forward = torch.compile(compiled_model)
            compiled = make_step(compiled_forward,
                                 torch.optim.SGD(compiled_model.parameters(), lr=1e-3), x, y)
            compile_s = timed(compiled)  # the first call compiles forward and backward
            compiled()
            eager()
            times = {"eager": [], "compiled": []}
            for r in range(rounds):
                order = [("eager", eager), ("compiled", compiled)][:: 1 if r % 2 == 0 else -1]
                for key, fn in order:
                    times[key].append(timed(fn))
            te, tc = (statistics.median(times[k]) for k in ("eager", "compiled"))
            total_breaks += breaks
            print(f"{name:<22} {breaks:>6} {compile_s:>10.1f} {te * 1e3:>9.1f} {tc * 1e3:>12.1f} "
                  f"{te / tc:>15.2f}", flush=True)
        except Exception as error:  # report and go on: one failure should not hide the rest
            print(f"{name:<22} FAILED: {type(error).__name__}: {str(error).splitlines()[0][:120]}",
                  flush=True)
            total_breaks += 1
        finally:
            torch._dynamo.reset()
    print(f"graph breaks in total: {total_breaks} (goal 0: "
          f"{'MET' if total_breaks == 0 else 'NOT MET'})")


if __name__ == "__main__":
    main()
