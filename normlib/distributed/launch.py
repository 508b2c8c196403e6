"""Start ``K`` local processes with a ``torch.distributed`` process group and collect their results.

:func:`run_local` is how the tests, the benchmarks and the book's "Normalization across devices"
section run several ranks on one machine: ``K`` processes on ``127.0.0.1`` (gloo on the CPU by
default), each with an initialized default process group, each calling the same function; the
caller gets the per-rank return values in rank order, or an error naming the rank that failed,
within a time limit. On a cluster, launch with ``torchrun`` instead and call the same function
from every process.

Example:
    >>> from normlib.distributed.launch import run_local
    >>> from normlib.distributed.launch import _rank_and_size
    >>> run_local(_rank_and_size, world_size=2, timeout=120)
    [(0, 2), (1, 2)]
"""

from __future__ import annotations

import os
import queue as _queue
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch

from normlib._checks import check_callable, check_choice, check_positive_float, check_positive_int

__all__ = ["run_local", "free_port", "DistributedRunError"]


class DistributedRunError(RuntimeError):
    """A rank raised, or the ranks did not finish within the time limit."""


def free_port() -> int:
    """A TCP port on ``127.0.0.1`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_and_size() -> tuple[int, int]:
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def _worker(rank, world_size, port, backend, threads, fn, args, kwargs, results, timeout):
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(threads)
    try:
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout))
        try:
            out = fn(*args, **kwargs)
            results.put((rank, True, out))
        finally:
            dist.destroy_process_group()
    except BaseException:  # noqa: BLE001  (reported to the parent, which raises)
        results.put((rank, False, traceback.format_exc()))


def _failures(rank: int, value: str, results, grace: float = 3.0) -> str:
    """The tracebacks of every rank that failed within ``grace`` seconds, root causes first.

    When one rank raises, the others fail next inside a collective ("connection closed by
    peer"); that rank's own error is the one worth reading, whichever arrived first.
    """
    failed = [(rank, value)]
    end = time.monotonic() + grace
    while time.monotonic() < end:
        try:
            r, ok, v = results.get(timeout=max(end - time.monotonic(), 0.01))
        except _queue.Empty:
            break
        if not ok:
            failed.append((r, v))
    secondary = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
    failed.sort(key=lambda f: any(s in f[1] for s in secondary))
    return "\n".join(f"rank {r} raised:\n{v}" for r, v in failed)


def run_local(fn: Callable, world_size: int = 2, *args: Any, backend: str = "gloo",
              timeout: float = 180.0, threads: int = 1, **kwargs: Any) -> list:
    """Run ``fn(*args, **kwargs)`` in ``world_size`` processes on this machine, one rank each.

    Each process initializes the default process group (``backend``, ``127.0.0.1``, a free port)
    before calling ``fn`` and destroys it after; ``fn`` finds its rank with
    ``torch.distributed.get_rank()``. ``fn`` must be importable by name (a module-level function:
    the processes are started with ``spawn``), and its arguments and return value picklable.

    Args:
        fn: the function every rank calls.
        world_size: the number of processes.
        backend: ``"gloo"`` (CPU tensors) or ``"nccl"`` (one CUDA device per rank).
        timeout: seconds for the whole run; the processes are killed after it.
        threads: torch threads per process (1: the ranks share the machine's cores).

    Returns:
        ``[result of rank 0, result of rank 1, ...]``.

    Raises:
        DistributedRunError: a rank raised (its traceback is in the message) or the run took
            longer than ``timeout``; every process is stopped first.
    """
    check_callable("fn", fn)
    check_positive_int("world_size", world_size)
    check_choice("backend", backend, ("gloo", "nccl"))
    check_positive_float("timeout", timeout)
    check_positive_int("threads", threads)
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, daemon=True,
                         args=(r, world_size, port, backend, threads, fn, args, kwargs, results, timeout))
             for r in range(world_size)]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(out) < world_size:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(world_size)) - set(out))
                raise DistributedRunError(f"ranks {missing} did not finish within {timeout:g} s")
            try:
                rank, ok, value = results.get(timeout=min(left, 1.0))
            except _queue.Empty:
                dead = [r for r, p in enumerate(procs) if r not in out and p.exitcode not in (None, 0)]
                if dead:
                    raise DistributedRunError(
                        f"rank {dead[0]} exited with code {procs[dead[0]].exitcode} without a result"
                    ) from None
                continue
            if not ok:
                raise DistributedRunError(_failures(rank, value, results))
            out[rank] = value
        for p in procs:
            p.join(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    return [out[r] for r in range(world_size)]
