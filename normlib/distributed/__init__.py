"""Normalization across processes: synchronized batch statistics and local multi-process runs.

Chapter "Review I: normalizing activations", section "Normalization across devices".
"""

from normlib.distributed.launch import DistributedRunError, free_port, run_local

__all__ = ["DistributedRunError", "free_port", "run_local"]
