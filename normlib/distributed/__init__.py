"""Normalization across processes: synchronized batch statistics and local multi-process runs.

- ``normlib.distributed.sync``: the synchronized layers (:class:`SyncBatchNorm`,
  :class:`SyncBatchWhitening`, ...): batch statistics of the concatenated batch of all ranks,
  by one differentiable all-reduce per layer and pass.
- ``normlib.distributed.convert``: :func:`convert_sync` and :func:`revert_sync` for a whole
  model (normlib's layers and torch's BatchNorm).
- ``normlib.distributed.launch``: :func:`run_local`, ``K`` local gloo processes.

Chapter "Normalization across devices".
"""

from normlib.distributed.convert import convert_sync, revert_sync
from normlib.distributed.launch import DistributedRunError, free_port, run_local
from normlib.distributed.sync import (
    SYNC_CLASSES,
    BatchStatisticsSync,
    SyncBatchGroupNorm,
    SyncBatchNorm,
    SyncBatchWhitening,
    SyncEvoNormB0,
    SyncModeNorm,
    SyncPopulationNorm,
    SyncSwitchableNorm,
    SyncSwitchableWhitening,
    SyncVarianceNorm,
    Traffic,
    all_reduce_sum,
    count_traffic,
    is_synchronizing,
    synchronized,
)

__all__ = [
    "DistributedRunError",
    "free_port",
    "run_local",
    "convert_sync",
    "revert_sync",
    "SYNC_CLASSES",
    "BatchStatisticsSync",
    "SyncBatchGroupNorm",
    "SyncBatchNorm",
    "SyncBatchWhitening",
    "SyncEvoNormB0",
    "SyncModeNorm",
    "SyncPopulationNorm",
    "SyncSwitchableNorm",
    "SyncSwitchableWhitening",
    "SyncVarianceNorm",
    "Traffic",
    "all_reduce_sum",
    "count_traffic",
    "is_synchronizing",
    "synchronized",
]
