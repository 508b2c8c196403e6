"""Sharded sweeps: the propagation sweep and the training map over ranks equal one process.

Real processes: :func:`normlib.distributed.run_local` starts gloo ranks on 127.0.0.1. One
two-rank run does everything the ranks must do together (a sweep, a training map, a job that
raises, fewer jobs than ranks), so the processes start once.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from normlib.distributed import run_local
from normlib.distributed.sharding import ShardError, map_sharded, shard_indices, shard_world
from normlib.models import MLP
from normlib.propagation import sweep
from normlib.train import ResultCache, TrainConfig, load_dataset, results_frame, training_map

GRID = {"norm": ["bn", "gn", "ln"], "depth": [2, 3], "seed": [0]}       # 6 configurations
# three configurations: BN is stable at the largest rate, GN and LN only at the next one
CONFIGS = [TrainConfig(model="mlp", depth=1, width=8, norm=norm, norm_kwargs=kwargs, dataset="digits",
                       batch_size=32, train_samples=256, epochs=2, seed=0)
           for norm, kwargs in (("bn", {}), ("gn", {"num_groups": 2}), ("ln", {}))]
LRS = [16.0, 4.0]


def _model(norm, depth, seed, built=None):
    if built is not None:
        built.append((norm, depth))
    kwargs = {"norm_kwargs": {"num_groups": 2}} if norm == "gn" else {}
    return MLP(6, 3, width=8, depth=depth, norm=norm, **kwargs)


def _inputs(**config):
    return torch.randn(10, 6)


def _sweep(shard=None, built=None):
    return sweep(lambda **c: _model(**c, built=built), GRID, _inputs, progress=False,
                 backward=True, shard=shard)


def _map(cache, data=None):
    data = data if data is not None else load_dataset("digits")
    return training_map(CONFIGS, LRS, seeds=[0], data=data, cache=cache, progress=False,
                        device="cpu")


def _comparable(entries) -> pd.DataFrame:
    return results_frame(entries).drop(columns=["seconds", "from_cache"])


def _fail_on_third(job):
    if job == 2:
        raise ValueError("job 2 fails")
    return job


def _ranks_together(cache_dir, data):
    """What every rank of a two-rank run does: sweep, map, a failing job; returns what it saw."""
    import torch.distributed as dist

    built: list = []
    table = _sweep(built=built)
    local = _sweep(shard=False)
    entries = _map(ResultCache(cache_dir, code_hash="sharded-test"), data)
    try:
        map_sharded(_fail_on_third, range(4))
        failure = None
    except Exception as err:  # noqa: BLE001  (returned to the test)
        failure = (type(err).__name__, str(err))
    lonely = map_sharded(lambda job: (job, dist.get_rank()), ["only"])   # rank 1 gets no job
    return {"rank": dist.get_rank(), "world": shard_world(), "built": built, "table": table,
            "local": local, "map": _comparable(entries), "failure": failure, "lonely": lonely}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("cache")
    # the data travels from here: the ranks need not import the dataset's loader
    return cache_dir, run_local(_ranks_together, 2, cache_dir, load_dataset("digits"), timeout=150)


def test_round_robin_shares_cover_every_job_once():
    shares = [shard_indices(7, r, 3) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum(shares, [])) == list(range(7))
    with pytest.raises(ValueError, match="rank must be an int in"):
        shard_indices(3, 3, 3)


def test_without_a_process_group_nothing_is_sharded():
    assert shard_world() is None and shard_world(False) is None
    assert map_sharded(lambda j: 2 * j, [3, 1, 2]) == [6, 2, 4]
    with pytest.raises(ValueError, match="shard=True needs an initialized"):
        map_sharded(str, [1], shard=True)
    with pytest.raises(TypeError, match="shard must be True or False"):
        shard_world(1)


def test_two_rank_sweep_equals_the_one_process_sweep(two_ranks, one_thread):
    _, ranks = two_ranks
    single = _sweep()
    assert [r["world"] for r in ranks] == [(0, 2), (1, 2)]
    for r in ranks:
        pd.testing.assert_frame_equal(r["table"], single, check_exact=True)
        pd.testing.assert_frame_equal(r["local"], single, check_exact=True)


def test_each_rank_builds_its_round_robin_share_of_the_grid(two_ranks):
    _, ranks = two_ranks
    order = [(norm, depth) for norm in GRID["norm"] for depth in GRID["depth"]]
    assert ranks[0]["built"] == order[0::2] and ranks[1]["built"] == order[1::2]


def test_two_rank_training_map_equals_one_process_and_fills_the_cache(two_ranks, one_thread, tmp_path):
    cache_dir, ranks = two_ranks
    single = _comparable(_map(False))
    assert single["lr"].tolist() == [16.0, 4.0, 4.0]   # the searches go down the grid
    for r in ranks:
        pd.testing.assert_frame_equal(r["map"], single, check_exact=True)
    # every run the ranks made is on disk: a one-process map now trains nothing
    again = results_frame(_map(ResultCache(cache_dir, code_hash="sharded-test")))
    assert again["from_cache"].all()
    pd.testing.assert_frame_equal(again.drop(columns=["seconds", "from_cache"]), single,
                                  check_exact=True)


def test_a_failing_job_makes_every_rank_raise_instead_of_waiting(two_ranks):
    _, ranks = two_ranks
    # job 2 belongs to rank 0: it re-raises its own error, rank 1 names rank 0 and the job
    assert ranks[0]["failure"] == ("ValueError", "job 2 fails")
    name, message = ranks[1]["failure"]
    assert name == ShardError.__name__ and "rank 0 raised on job 2" in message
    assert "ValueError: job 2 fails" in message


def test_a_rank_without_jobs_still_returns_every_result(two_ranks):
    _, ranks = two_ranks
    assert [r["lonely"] for r in ranks] == [[("only", 0)]] * 2
