"""Configuration-parallel runs: each rank of a process group takes a share of a list of jobs.

The propagation sweep (:func:`normlib.propagation.sweep.sweep`) and the training map
(:func:`normlib.train.training_map`) run many independent configurations. Launched with
``torchrun --nproc-per-node K`` (on one or several nodes), every process calls the same
function; :func:`map_sharded` gives rank ``r`` of ``K`` the jobs ``r, r + K, r + 2K, ...``
(round-robin by index, so a grid ordered by cost spreads its expensive end over all ranks),
runs them, and gathers the results with one ``all_gather_object``: every rank returns the full
list in the order of the jobs, equal to what one process returns, whatever the number of
ranks. Without an initialized process group (or with one process) the jobs run in order here
and nothing is communicated.

Each job must be deterministic given its own description (the sweep seeds every configuration
from its ``seed``; a training run seeds itself from its configuration), so that which rank runs
it does not matter. The training map also writes every run to the on-disk
:class:`normlib.train.ResultCache` on the rank that trained it, so a later one-process render
reads them all; the results are gathered through the process group, not read back from disk,
so nodes need not share a file system.

Every rank must call the sharded function with the same jobs (as with any collective). With the
NCCL backend the object collective uses the current CUDA device: call
``torch.cuda.set_device(local_rank)`` first, as ``torchrun`` scripts do.

Chapter "Normalization across devices".

Example:
    >>> from normlib.distributed.sharding import map_sharded, shard_indices
    >>> shard_indices(7, rank=1, world_size=3)
    [1, 4]
    >>> map_sharded(lambda x: x * x, [1, 2, 3])      # no process group: runs here, in order
    [1, 4, 9]
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable
from typing import Any

from normlib._checks import check_bool, check_callable, check_int, check_nonnegative_int, check_positive_int

__all__ = ["ShardError", "shard_world", "shard_indices", "map_sharded"]


class ShardError(RuntimeError):
    """A job raised on another rank of a sharded run (its traceback is in the message)."""


def shard_world(shard: bool | None = None, process_group=None) -> tuple[int, int] | None:
    """``(rank, world_size)`` when jobs are to be sharded, else ``None``.

    Args:
        shard: ``None`` (default): shard when ``torch.distributed`` has an initialized
            default process group with more than one rank; ``False``: never (every rank runs
            every job); ``True``: shard, and raise if there is no process group.
        process_group: the group whose ranks share the jobs (default: the default group).

    Raises:
        ValueError: ``shard=True`` without an initialized process group.

    Example:
        >>> shard_world() is None           # no process group in this process
        True
    """
    if shard is not None:
        check_bool("shard", shard)
    if shard is False:
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        if shard:
            raise ValueError("shard=True needs an initialized torch.distributed process group, "
                             "got none; launch with torchrun and call "
                             "torch.distributed.init_process_group() first, or pass shard=None")
        return None
    world = dist.get_world_size(group=process_group)
    rank = dist.get_rank(group=process_group)
    if world <= 1 and not shard:
        return None
    return rank, world


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """The job indices of ``rank`` among ``world_size`` ranks for ``n`` jobs (round-robin).

    Example:
        >>> [shard_indices(5, r, 2) for r in range(2)]
        [[0, 2, 4], [1, 3]]
    """
    check_nonnegative_int("n", n)
    check_positive_int("world_size", world_size)
    check_int("rank", rank, minimum=0, maximum=world_size - 1)
    return list(range(rank, n, world_size))


def map_sharded(fn: Callable[[Any], Any], jobs: Iterable, *, shard: bool | None = None,
                process_group=None,
                bar: Callable[[Iterable, int], Iterable] | None = None) -> list:
    """``[fn(job) for job in jobs]``, the jobs shared round-robin among the ranks.

    Every rank returns the full list, in the order of ``jobs``. A job that raises makes every
    rank raise after the gather (no rank waits forever for a failed one): the rank that ran it
    re-raises its exception, the others raise :class:`ShardError` naming the rank and the job.

    Args:
        fn: called with one job; its results must be picklable when sharded.
        jobs: the jobs, identical on every rank.
        shard: as in :func:`shard_world`.
        process_group: as in :func:`shard_world`.
        bar: wraps this rank's iterable of jobs (with their number), e.g. a progress bar;
            shown on rank 0 only when sharded.

    Example:
        >>> map_sharded(str, range(3), shard=False)
        ['0', '1', '2']
    """
    check_callable("fn", fn)
    check_callable("bar", bar, allow_none=True)
    jobs = list(jobs)
    world = shard_world(shard, process_group)
    if world is None:
        iterable: Iterable = jobs if bar is None else bar(jobs, len(jobs))
        return [fn(job) for job in iterable]

    import torch.distributed as dist

    rank, size = world
    mine = shard_indices(len(jobs), rank, size)
    iterable = mine if bar is None or rank != 0 else bar(mine, len(mine))
    done: list[tuple[int, Any]] = []
    failure: tuple[int, BaseException, str] | None = None
    for i in iterable:
        try:
            done.append((i, fn(jobs[i])))
        except Exception as err:  # noqa: BLE001  (reported to every rank after the gather)
            failure = (i, err, traceback.format_exc())
            break
    payload = (done, None if failure is None else (failure[0], failure[2]))
    gathered: list = [None] * size
    dist.all_gather_object(gathered, payload, group=process_group)
    if failure is not None:
        raise failure[1]
    for r, (_, error) in enumerate(gathered):
        if error is not None:
            raise ShardError(f"rank {r} raised on job {error[0]} of a sharded run:\n{error[1]}")
    results: list = [None] * len(jobs)
    for part, _ in gathered:
        for i, value in part:
            results[i] = value
    return results

