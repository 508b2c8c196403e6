"""Synchronized normalizers with real processes: K gloo ranks equal one process on the whole batch.

Every rank holds a shard of one float64 batch (unequal shards, and an empty one); the rank's
output rows, input gradient and buffers must equal those of the local layer run in one process
on the concatenated batch, and the sum over ranks of a parameter's local gradient (what DDP
averages) must equal its single-process gradient, for a loss that is a sum over samples. One
``run_local`` call per world size runs every check, so the file pays the start-up of the
processes twice.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

import normlib
from normlib.distributed import (
    SYNC_CLASSES,
    SyncBatchNorm,
    convert_sync,
    count_traffic,
    revert_sync,
    run_local,
)
from normlib.layers import BatchGroupNorm, BatchNorm, EvoNormB0, PopulationNorm, VarianceNorm
from normlib.multimode import ModeNorm, SwitchableNorm, SwitchableWhitening
from normlib.whitening import BatchWhitening

TOL = 1e-10

# name -> (local layer factory, input shape without N)
CASES = {
    "bn": (lambda: BatchNorm(4), (4, 3, 3)),
    "bn_2d_input": (lambda: BatchNorm(5, momentum=None), (5,)),
    "bgn": (lambda: BatchGroupNorm(8, num_groups=2), (8, 2, 2)),
    "vn": (lambda: VarianceNorm(4), (4, 3)),
    "population": (lambda: PopulationNorm(4), (4, 3, 3)),
    "evonorm_b0": (lambda: EvoNormB0(4), (4, 3, 3)),
    "zca": (lambda: BatchWhitening(8, method="zca", group_size=4), (8, 2, 2)),
    "pca": (lambda: BatchWhitening(6, method="pca"), (6, 3)),
    "cholesky": (lambda: BatchWhitening(8, method="cholesky", group_size=4), (8, 3)),
    "iternorm": (lambda: BatchWhitening(8, method="iternorm", group_size=8), (8, 2, 2)),
    "mode_norm": (lambda: ModeNorm(4, num_modes=3), (4, 3, 3)),
    "switchable": (lambda: SwitchableNorm(4), (4, 3, 3)),
    "switchable_whitening": (lambda: SwitchableWhitening(8, group_size=4), (8, 3, 3)),
    "switchable_whitening_bn": (
        lambda: SwitchableWhitening(4, group_size=2, modes=("bw", "bn", "in", "ln"),
                                    method="iternorm"), (4, 3, 3)),
}


def _perturbed(layer: nn.Module, seed: int) -> nn.Module:
    """Non-trivial parameters (ones and zeros would hide a wrong weight gradient)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return layer


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    if b.numel() == 0:
        return 0.0
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _layer_errors(name: str, shards: list[int]) -> dict[str, float]:
    """On this rank: the largest relative difference to one process, per quantity."""
    rank = dist.get_rank()
    factory, shape = CASES[name]
    torch.manual_seed(0)
    ref = _perturbed(factory().double(), 1)
    layer = convert_sync(copy.deepcopy(ref))
    assert type(layer) is SYNC_CLASSES[type(ref)], type(layer)
    gen = torch.Generator().manual_seed(2)
    n = sum(shards)
    x_full = torch.randn(n, *shape, generator=gen, dtype=torch.float64) * 1.5 + 0.7
    weights = torch.randn(n, *shape, generator=gen, dtype=torch.float64)
    lo = sum(shards[:rank])
    rows = slice(lo, lo + shards[rank])

    errors = {}
    for step in range(2):  # two training steps: the running statistics are averaged twice
        x_ref = x_full.clone().requires_grad_(True)
        y_ref = ref(x_ref)
        (y_ref * weights).sum().backward()
        x = x_full[rows].clone().requires_grad_(True)
        y = layer(x)
        (y * weights[rows]).sum().backward()
        errors[f"output{step}"] = _relative(y.detach(), y_ref.detach()[rows])
        errors[f"input_grad{step}"] = _relative(x.grad, x_ref.grad[rows])
        for (pname, p), p_ref in zip(layer.named_parameters(), ref.parameters()):
            total = p.grad.clone()
            dist.all_reduce(total)
            errors[f"grad_{pname}{step}"] = _relative(total, p_ref.grad)
            p.grad = None
            p_ref.grad = None
    for (bname, b), b_ref in zip(layer.named_buffers(), ref.buffers()):
        errors[f"buffer_{bname}"] = _relative(b.double(), b_ref.double())
    layer.eval()
    ref.eval()
    with torch.no_grad():
        errors["eval_output"] = _relative(layer(x_full[rows]), ref(x_full)[rows])
    return errors


def _ddp_errors(shard: int, steps: int = 3) -> dict[str, float]:
    """DDP with convert_sync on torch's BatchNorm2d and IterNorm == one process, full batch."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        normlib.create_norm("iternorm", 8, group_size=4), nn.Flatten(),
                        nn.Linear(8 * 16, 3)).double()
    model = DDP(convert_sync(copy.deepcopy(ref)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(3)
    for _ in range(steps):
        x = torch.randn(world * shard, 3, 4, 4, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 3, (world * shard,), generator=gen)
        loss_fn = nn.CrossEntropyLoss()  # a mean: DDP's average of the ranks' gradients matches
        opt_ref.zero_grad()
        loss_fn(ref(x), y).backward()
        opt_ref.step()
        rows = slice(rank * shard, (rank + 1) * shard)
        opt.zero_grad()
        loss_fn(model(x[rows]), y[rows]).backward()
        opt.step()
    errors = {f"ddp_param_{n}": _relative(p.detach(), q.detach()) for (n, p), q in
              zip(model.module.named_parameters(), ref.parameters())}
    errors.update({f"ddp_buffer_{n}": _relative(b.double(), c.double()) for (n, b), c in
                   zip(model.module.named_buffers(), ref.buffers())})
    return errors


def _one_process_group_errors() -> dict[str, float]:
    """A group of one rank (and eval mode): the synchronized layer is the local one, no traffic."""
    solo = dist.new_group([0])  # every rank must create it
    if dist.get_rank() != 0:
        return {}
    torch.manual_seed(0)
    ref = BatchNorm(4).double()
    layer = SyncBatchNorm(4, process_group=solo).double()
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    with count_traffic() as traffic:
        out = layer(x)
    return {"solo_output": _relative(out, ref(x)), "solo_calls": float(traffic.calls),
            "solo_running": _relative(layer.running_var, ref.running_var)}


def _traffic_counts() -> dict[str, float]:
    """Numbers all-reduced per forward and backward: 2C + 1 for BN, d^2 + d + 1 per group."""
    out = {}
    for key, layer, shape in (("bn", SyncBatchNorm(16), (16, 2, 2)),
                              ("zca", SYNC_CLASSES[BatchWhitening](16, group_size=4), (16, 2, 2))):
        x = torch.randn(3, *shape, requires_grad=True)
        with count_traffic() as traffic:
            layer(x).sum().backward()
        out[f"{key}_calls"] = float(traffic.calls)
        out[f"{key}_numbers"] = float(traffic.per_call[0][0])
    return out


def _float32_errors() -> dict[str, float]:
    """float32 statistics of a shifted input (mean 1e4, spread 1) against float64 on the whole batch.

    ``E[x^2] - E[x]^2`` in float32 would lose every digit of the variance here; the shifted sums
    keep it to float32 rounding.
    """
    rank = dist.get_rank()
    gen = torch.Generator().manual_seed(4)
    x = 1e4 + torch.randn(16, 3, 5, generator=gen, dtype=torch.float64) * torch.tensor([[1.0], [0.1], [3.0]])
    rows = slice(0, 5) if rank == 0 else slice(5, 16)
    bn = SyncBatchNorm(3, momentum=1.0)
    white = SYNC_CLASSES[BatchWhitening](3, momentum=1.0, running_stat="covariance")
    bn(x[rows].float())
    white(x[rows].float())
    x = x.float().double()  # the float32 input exactly: only the arithmetic is compared
    var = x.transpose(0, 1).flatten(1).var(dim=1)
    cov = torch.cov(x.transpose(0, 1).flatten(1))
    return {"f32_running_var": _relative(bn.running_var.double(), var),
            "f32_running_mean": _relative(bn.running_mean.double(), x.mean(dim=(0, 2))),
            "f32_running_cov": _relative(white.running_cov[0].double(), cov)}


def _hessian_vector_errors(shards: list[int]) -> dict[str, float]:
    """Second derivatives through the all-reduce: Hessian-vector products of a synchronized layer.

    For the sum of the ranks' losses, the sum over ranks of each rank's ``d/dw <grad_w, v>``
    equals the single-process Hessian-vector product on the whole batch.
    """
    rank = dist.get_rank()
    torch.manual_seed(0)
    errors = {}
    for name in ("bn", "iternorm"):
        factory, shape = CASES[name]
        # a 1x1 convolution in front: its second derivatives pass through the backward all-reduce
        # (no bias: a shift in front of a centering normalizer has a zero gradient)
        ref = _perturbed(nn.Sequential(nn.Conv2d(shape[0], shape[0], 1, bias=False), factory()).double(), 1)
        layer = convert_sync(copy.deepcopy(ref))
        gen = torch.Generator().manual_seed(5)
        x = torch.randn(sum(shards), *shape, generator=gen, dtype=torch.float64)
        lo = sum(shards[:rank])
        rows = slice(lo, lo + shards[rank])
        vs = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in ref.parameters()]

        def hvp(module, inputs, vs=vs):
            params = list(module.parameters())
            loss = module(inputs).tanh().pow(2).sum()
            grads = torch.autograd.grad(loss, params, create_graph=True)
            dot = sum((g * v).sum() for g, v in zip(grads, vs))
            return torch.autograd.grad(dot, params)

        for i, (h, h_ref) in enumerate(zip(hvp(layer, x[rows]), hvp(ref, x))):
            total = h.clone()
            dist.all_reduce(total)
            errors[f"hvp_{name}_{i}"] = _relative(total, h_ref)
    return errors


def _too_small_batch() -> dict[str, str]:
    """One sample over all ranks: every rank raises the same ValueError (none waits forever)."""
    layer = SyncBatchNorm(3)
    x = torch.randn(1 if dist.get_rank() == 0 else 0, 3)
    try:
        layer(x)
    except ValueError as exc:
        return {"message": str(exc), "counter": str(int(layer.num_batches_tracked))}
    return {"message": "no error", "counter": ""}


def _rank_checks(shards: list[int], extras: bool) -> dict[str, dict]:
    torch.set_default_dtype(torch.float32)
    results = {name: _layer_errors(name, shards) for name in CASES}
    if extras:
        results["ddp"] = _ddp_errors(shard=3)
        results["one_process_group"] = _one_process_group_errors()
        results["traffic"] = _traffic_counts()
        results["float32"] = _float32_errors()
        results["hessian_vector"] = _hessian_vector_errors(shards)
    else:
        results["too_small"] = _too_small_batch()
    return results


@pytest.fixture(scope="module")
def two_ranks():
    return run_local(_rank_checks, 2, [3, 5], True, timeout=240)


@pytest.fixture(scope="module")
def three_ranks_one_empty():
    return run_local(_rank_checks, 3, [4, 0, 3], False, timeout=240)


def _assert_close(results: list[dict], name: str) -> None:
    for rank, per_rank in enumerate(results):
        bad = {k: v for k, v in per_rank[name].items() if not v <= TOL}
        assert not bad, f"rank {rank}, {name}: relative errors above {TOL}: {bad}"


@pytest.mark.parametrize("name", list(CASES))
def test_synchronized_layer_equals_one_process_on_the_concatenated_batch(two_ranks, name):
    _assert_close(two_ranks, name)


@pytest.mark.parametrize("name", list(CASES))
def test_synchronized_layer_with_an_empty_shard_equals_one_process(three_ranks_one_empty, name):
    _assert_close(three_ranks_one_empty, name)


def test_ddp_training_with_converted_batch_norm_equals_one_process_on_the_full_batch(two_ranks):
    _assert_close(two_ranks, "ddp")
    assert any(k.startswith("ddp_buffer_1.running_var") for k in two_ranks[0]["ddp"])


def test_a_group_of_one_process_computes_the_local_layer_without_communication(two_ranks):
    solo = two_ranks[0]["one_process_group"]
    assert solo["solo_calls"] == 0
    assert solo["solo_output"] == 0 and solo["solo_running"] == 0


def test_one_all_reduce_per_pass_of_2c_plus_1_numbers_for_bn_and_d2_plus_d_plus_1_for_whitening(
        two_ranks):
    traffic = two_ranks[0]["traffic"]
    assert traffic["bn_calls"] == 2 and traffic["zca_calls"] == 2  # one forward, one backward
    assert traffic["bn_numbers"] == 2 * 16 + 1
    assert traffic["zca_numbers"] == 4 * (4 * 4 + 4) + 1


def test_float32_statistics_of_a_shifted_input_keep_the_digits_of_the_variance(two_ranks):
    for per_rank in two_ranks:
        errors = per_rank["float32"]
        assert errors["f32_running_var"] < 1e-5 and errors["f32_running_cov"] < 1e-5, errors
        assert errors["f32_running_mean"] < 1e-6, errors


def test_hessian_vector_products_through_synchronized_layers_equal_one_process(two_ranks):
    _assert_close(two_ranks, "hessian_vector")
    assert len(two_ranks[0]["hessian_vector"]) == 6  # convolution and normalizer, BN and IterNorm


def test_a_batch_too_small_over_all_ranks_raises_the_same_error_on_every_rank(three_ranks_one_empty):
    for per_rank in three_ranks_one_empty:
        assert "all ranks must have more than 1 values per statistic" in per_rank["too_small"]["message"]
        assert "got 1;" in per_rank["too_small"]["message"]
        assert per_rank["too_small"]["counter"] == "0"  # the rejected batch is not counted


def _rank_one_fails() -> None:
    if dist.get_rank() == 1:
        raise ValueError("the root cause")
    dist.all_reduce(torch.zeros(1))  # rank 0 fails next, inside the collective
    dist.all_reduce(torch.zeros(1))


def test_run_local_reports_the_failing_rank_before_the_ranks_it_brought_down():
    from normlib.distributed import DistributedRunError

    with pytest.raises(DistributedRunError) as info:
        run_local(_rank_one_fails, 2, timeout=120)
    message = str(info.value)
    assert message.startswith("rank 1 raised") and "the root cause" in message


# ----------------------------------------------------------------------------- one process


@pytest.mark.parametrize("name", list(CASES))
def test_outside_a_process_group_the_synchronized_layer_is_the_local_one(name):
    factory, shape = CASES[name]
    torch.manual_seed(0)
    ref = _perturbed(factory().double(), 1)
    layer = convert_sync(copy.deepcopy(ref))
    x = torch.randn(6, *shape, dtype=torch.float64)
    for _ in range(2):
        assert torch.equal(layer(x), ref(x))
    for b, c in zip(layer.buffers(), ref.buffers()):
        assert torch.equal(b, c)


def test_convert_sync_round_trip_keeps_parameters_buffers_mode_and_dtype_of_a_normlib_model():
    from normlib.models import resnet20

    for norm in ("bn", "zca", "switchable", "gn"):
        model = resnet20(norm=norm).double()
        model.layer1.eval() if hasattr(model, "layer1") else None
        before = {k: v.clone() for k, v in model.state_dict().items()}
        tensors = {k: v for k, v in model.state_dict(keep_vars=True).items()}
        modes = {n: m.training for n, m in model.named_modules()}
        synced = convert_sync(model)
        converted = [m for m in synced.modules() if type(m).__name__.startswith("Sync")]
        assert bool(converted) == (norm != "gn")
        after = synced.state_dict(keep_vars=True)
        assert list(after) == list(tensors)
        assert all(after[k] is tensors[k] for k in tensors)  # the same tensors: optimizers keep working
        assert {n: m.training for n, m in synced.named_modules()} == modes
        back = revert_sync(synced)
        assert not [m for m in back.modules() if type(m).__name__.startswith("Sync")]
        assert all(back.state_dict(keep_vars=True)[k] is tensors[k] for k in tensors)
        assert all(torch.equal(v, before[k]) for k, v in back.state_dict().items())
        assert all(v.dtype == before[k].dtype for k, v in back.state_dict().items())


def test_convert_sync_turns_torch_batch_norm_into_a_cpu_synchronized_layer_and_back():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=None),
                          nn.Sequential(nn.Flatten(2), nn.BatchNorm1d(4, affine=False)),
                          nn.Unflatten(2, (4, 4)), nn.SyncBatchNorm(4).eval()).double()
    model[1].eval()
    reference = copy.deepcopy(model)
    tensors = dict(model.state_dict(keep_vars=True))
    synced = convert_sync(model)
    assert type(synced[1]) is SyncBatchNorm and type(synced[2][1]) is SyncBatchNorm
    assert type(synced[4]) is SyncBatchNorm  # torch's own refuses CPU tensors; this one runs
    assert not synced[1].training and synced[2][1].training
    assert synced[1].momentum is None and synced[2][1].weight is None
    assert all(synced.state_dict(keep_vars=True)[k] is v for k, v in tensors.items())
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    # one process: torch's computation (eval statistics for [1], a batch-statistics update for [2])
    assert torch.allclose(synced(x), reference(x), rtol=0, atol=1e-12)
    for b, c in zip(synced.buffers(), reference.buffers()):
        assert torch.allclose(b, c, rtol=0, atol=1e-12)
    back = revert_sync(synced)
    assert type(back[1]) is nn.BatchNorm2d and type(back[2][1]) is nn.BatchNorm1d
    assert not back[1].training and back[1].momentum is None and back[2][1].training
    assert type(back[4]) is nn.SyncBatchNorm and not back[4].training
    assert all(back.state_dict(keep_vars=True)[k] is v for k, v in tensors.items())


def test_convert_sync_refuses_a_non_module():
    with pytest.raises(TypeError, match="model"):
        convert_sync("resnet")
