"""run_local: results come back whole, tensors included, in rank order."""

from __future__ import annotations

import torch

from normlib.distributed.launch import run_local


def rank_tensors():
    """A tensor and a nested structure holding tensors, made in the rank's own process."""
    import torch.distributed as dist

    rank = dist.get_rank()
    t = torch.arange(3, dtype=torch.float64) + rank
    return t, {"sum": t.sum(), "rank": rank}


def test_tensors_returned_by_the_ranks_reach_the_caller():
    out = run_local(rank_tensors, 2, timeout=120)
    assert [o[1]["rank"] for o in out] == [0, 1]
    for rank, (t, d) in enumerate(out):
        torch.testing.assert_close(t, torch.arange(3, dtype=torch.float64) + rank)
        assert float(d["sum"]) == 3.0 + 3 * rank
