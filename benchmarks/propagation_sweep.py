"""Time and peak memory of a propagation sweep: 10 normalizers x 3 seeds, depth-50 width-256 MLP.

    .venv/bin/python benchmarks/propagation_sweep.py [--threads 1] [--batches 1 8] [--batch-size 128]

Each configuration builds a fresh ``MLP(64, 10, width=256, depth=50, norm=...)`` and probes its 50
layers (plus the input) with :func:`normlib.propagation.sweep`: one forward and one backward pass
per batch, seven activation statistics (variance, second moment, cosine similarity, three ranks
from one 128 x 128 Gram eigendecomposition, orthogonality gap) and three gradient norms per layer.

Memory: every measurement runs in a fresh child process, which samples its resident set size
(the OS's count, which sees torch's allocations; ``tracemalloc`` does not) during the sweep and
subtracts the size just before it (after imports and a warm-up forward and backward pass). The
difference is what the sweep itself needs. The children run with glibc's mmap threshold fixed
at 64 KiB, so that memory torch frees is returned to the OS and the resident size follows the
memory in use. It is measured with 1 batch per
configuration and with ``--batches`` more (the same number of layers, many more samples): the
probes reduce each batch to per-layer numbers at once, so the peak should not move. A naive
peer, hooks that keep every layer's output and compute the same statistics at the end, is
measured the same way (same statistics, computed from the kept outputs after the passes); its
memory grows with the number of samples.

Times are wall-clock seconds of the whole sweep (model construction included) with
``--threads`` torch threads (default 1: on a shared machine extra threads mostly wait),
measured in separate children that run with the default allocator settings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

NORMS = ["none", "bn", "ln", "gn", "bgn", "rms", "vn", "evonorm_s0", "wn", "sws"]
SEEDS = [0, 1, 2]
WIDTH, DEPTH, IN_FEATURES = 256, 50, 64


def _rss_mib() -> float:
    # Current resident size from /proc (Linux).
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakSampler:
    """Largest resident size seen while the block runs, sampled every 2 ms in a thread.

    ``getrusage``'s peak covers the whole process life (imports included), so it cannot
    isolate the sweep; sampling can (it may miss spikes shorter than 2 ms).
    """

    def __enter__(self):
        self.peak, self._stop = _rss_mib(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())


def worker(method: str, batches: int, batch_size: int, threads: int) -> dict:
    import torch

    from normlib.models import MLP
    from normlib.propagation import representation_statistics, sweep

    torch.set_num_threads(threads)

    def make_model(norm, seed):
        return MLP(IN_FEATURES, 10, width=WIDTH, depth=DEPTH, norm=norm)

    def make_inputs(norm, seed):
        return [(torch.randn(batch_size, IN_FEATURES), torch.randint(0, 10, (batch_size,)))
                for _ in range(batches)]

    warm = make_model("bn", 0)                  # warm-up: allocator, kernels, autograd
    warm(torch.randn(2, IN_FEATURES)).sum().backward()
    del warm
    before = _rss_mib()
    start = time.perf_counter()
    with PeakSampler() as sampler:
        rows = _run(method, make_model, make_inputs, sweep, representation_statistics, torch)
    seconds = time.perf_counter() - start
    return {"method": method, "batches": batches, "samples": batches * batch_size,
            "seconds": seconds, "rss_before_mib": before, "peak_mib": sampler.peak, "rows": rows}


def _run(method, make_model, make_inputs, sweep, representation_statistics, torch) -> int:
    if method == "probe":
        table = sweep(make_model, {"norm": NORMS, "seed": SEEDS}, make_inputs, progress=False)
        rows = len(table)
    else:
        rows = 0
        for norm in NORMS:
            for seed in SEEDS:
                torch.manual_seed(seed)
                model, kept = make_model(norm, seed), []

                def keep(module, args, out, kept=kept):
                    kept.append(out.detach().clone())

                hooks = [layer.register_forward_hook(keep) for layer in model.layers]
                for x, y in make_inputs(norm, seed):
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                    torch.autograd.grad(loss, [p for p in model.parameters() if p.dim() > 1])
                for h in hooks:
                    h.remove()
                # the probe's numbers (per layer and batch), computed only at the end
                for i in range(DEPTH):
                    for out in kept[i::DEPTH]:
                        representation_statistics(out)
                    rows += 1
    return rows


def run_child(method: str, batches: int, batch_size: int, threads: int, for_memory: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--batches", str(batches),
           "--batch-size", str(batch_size), "--threads", str(threads)]
    env = dict(os.environ)
    if for_memory:
        # glibc otherwise raises its mmap threshold after the first large free and keeps freed
        # tensors in the heap, so the resident size would count memory the sweep has released.
        # Every allocation then costs a system call, so these runs are not timed.
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--worker", choices=["probe", "naive"])
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.batches[0], args.batch_size, args.threads)))
        return
    print(f"sweep: {len(NORMS)} normalizers x {len(SEEDS)} seeds, MLP depth {DEPTH} width {WIDTH}, "
          f"batch {args.batch_size}, CPU, {args.threads} torch thread(s)")
    print(f"normalizers: {', '.join(NORMS)}")
    print(f"{'method':<8}{'batches':>8}{'samples':>9}{'time (s)':>10}{'sweep memory (MiB)':>20}"
          f"{'peak RSS (MiB)':>16}")
    results = []
    for method in ("probe", "naive"):
        for batches in args.batches:
            timed = run_child(method, batches, args.batch_size, args.threads, for_memory=False)
            r = run_child(method, batches, args.batch_size, args.threads, for_memory=True)
            r["seconds"] = timed["seconds"]
            r["extra_mib"] = r["peak_mib"] - r["rss_before_mib"]
            results.append(r)
            print(f"{method:<8}{batches:>8}{r['samples']:>9}{r['seconds']:>10.1f}"
                  f"{r['extra_mib']:>20.1f}{r['peak_mib']:>16.1f}")
    probe = [r for r in results if r["method"] == "probe"]
    naive = [r for r in results if r["method"] == "naive"]
    one = probe[0]
    print(f"\nprobe sweep, one batch of {args.batch_size}: {one['seconds']:.1f} s (goal: under 60 s)")
    if len(probe) > 1:
        print(f"probe memory with {probe[-1]['samples']} vs {probe[0]['samples']} samples per "
              f"configuration: {probe[-1]['extra_mib']:.1f} vs {probe[0]['extra_mib']:.1f} MiB "
              f"(ratio {probe[-1]['extra_mib'] / max(probe[0]['extra_mib'], 1e-9):.2f})")
        print(f"naive peer (keeps activations): {naive[-1]['extra_mib']:.1f} vs "
              f"{naive[0]['extra_mib']:.1f} MiB (ratio "
              f"{naive[-1]['extra_mib'] / max(naive[0]['extra_mib'], 1e-9):.2f})")


if __name__ == "__main__":
    main()
