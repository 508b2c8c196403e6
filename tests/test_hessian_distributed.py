"""The data-parallel Hessian: two gloo processes on 127.0.0.1 against one process on all the data.

Each rank holds an unequal shard of one batch (17 and 23 samples); the operator built with
``process_group`` must give, on every rank, the loss, gradient, products, top eigenpairs
(Lanczos, with and without eigenvectors, and power iteration), Hutchinson and Hutch++ traces,
the SLQ density and the exact matrix of one process on the concatenated batch, in float64 to
1e-10 relative. Also: a DataLoader per rank, a rank with no data, BatchNorm in eval mode (exact)
and in train mode (each rank's batch normalized with its own statistics: equal to one process
streaming the list of the ranks' batches), and parameters that differ between ranks (refused).
The ranks run once per module (one spawn, a few seconds) and the tests compare their results.
"""

from __future__ import annotations

import pytest
import torch
from hessian_problems import (
    DT,
    batch,
    bn_net,
    distributed_hessian_worker,
    exact_bn,
    hessian_quantities,
    plain_net,
    shard,
)
from torch import nn

from normlib.distributed import run_local
from normlib.hessian import HessianOperator, hessian_matrix

pytestmark = pytest.mark.usefixtures("one_thread")

RTOL = 1e-10


@pytest.fixture(scope="module")
def ranks():
    return run_local(distributed_hessian_worker, 2, timeout=240)


def close(a, b, rtol=RTOL):
    a, b = torch.as_tensor(a, dtype=DT), torch.as_tensor(b, dtype=DT)
    scale = b.abs().max().clamp_min(1e-300)
    return bool((a - b).abs().max() <= rtol * scale)


def assert_same(got: dict, ref: dict) -> None:
    assert got.keys() == ref.keys()
    for key, value in ref.items():
        assert close(got[key], value), key


def test_shards_are_unequal_and_cover_the_batch():
    x, _ = batch(40)
    parts = [shard(r, 2)[0] for r in range(2)]
    assert [len(p) for p in parts] == [17, 23]
    assert torch.equal(torch.cat(parts), x)


def test_every_solver_on_two_ranks_equals_one_process_on_the_concatenated_batch(ranks):
    x, y = batch(40)
    single = hessian_quantities(HessianOperator(plain_net(), nn.CrossEntropyLoss(), (x, y),
                                                mode="train"))
    assert single["n"] == 40
    for out in ranks:
        assert_same(out["plain"], single)
    # The two ranks agree with each other bit for bit (all_reduce gives every rank one result).
    for key in single:
        assert torch.equal(torch.as_tensor(ranks[0]["plain"][key]),
                           torch.as_tensor(ranks[1]["plain"][key])), key


def test_a_dataloader_per_rank_and_a_rank_without_data_give_the_full_batch_hessian(ranks):
    x, y = batch(40)
    single = hessian_quantities(HessianOperator(plain_net(), nn.CrossEntropyLoss(), (x, y),
                                                mode="eval"), full=False)
    for out in ranks:
        assert_same(out["loader"], single)
        assert_same(out["empty"], single)


def test_batchnorm_eval_mode_is_exact_and_train_mode_normalizes_each_rank_separately(ranks):
    x, y = batch(40)
    net = bn_net()
    exact_eval = exact_bn(net, x, y, training=False)
    pieces = [shard(r, 2) for r in range(2)]
    per_shard = hessian_matrix(HessianOperator(net, nn.CrossEntropyLoss(), pieces, mode="train"))
    global_batch = exact_bn(net, x, y, training=True)
    for out in ranks:
        assert close(out["bn_eval"], exact_eval)
        assert close(out["bn_train"], per_shard)
        # ... which is not the Hessian of one batch of 40 with global statistics.
        assert not close(out["bn_train"], global_batch, rtol=1e-3)


def test_parameters_or_running_statistics_that_differ_between_ranks_are_refused(ranks):
    for out in ranks:
        assert out["mismatch"] is not None and "identical on every rank" in out["mismatch"]
        assert out["buffer_mismatch"] is not None and "identical on every rank" in out["buffer_mismatch"]


def test_process_group_without_torch_distributed_is_refused():
    x, y = batch(8)
    with pytest.raises(ValueError, match="process_group must be None"):
        HessianOperator(plain_net(), nn.CrossEntropyLoss(), (x, y), mode="eval",
                        process_group=object())
