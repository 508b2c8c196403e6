"""The NAP / NOP / NRR framework: partitions, operations, recovery, and plugging in a new NOP."""

from __future__ import annotations

import pytest
import torch
from test_layers import one_cpu_thread  # noqa: F401  (autouse fixture)

from normlib import functional as NF
from normlib.framework import (
    BATCH,
    BATCH_GROUP,
    GROUP,
    INSTANCE,
    LAYER,
    POSITIONAL,
    Affine,
    Operation,
    Partition,
    RegionPartition,
    Standardize,
    normalize,
    update_running,
)

F64 = torch.float64
SHAPE = (3, 6, 2, 5)  # N, C, H, W
N, C, H, W = SHAPE


@pytest.mark.parametrize("partition, count", [
    (BATCH, N * H * W), (LAYER, C * H * W), (INSTANCE, H * W), (GROUP(2), 3 * H * W),
    (BATCH_GROUP(3), N * 2 * H * W), (POSITIONAL, C),
])
def test_each_partition_pools_the_number_of_elements_its_method_defines(partition, count):
    mask = partition.shares_statistics_with(SHAPE, (1, 4, 1, 3))
    assert int(mask.sum()) == count == partition.count(partition.view(torch.zeros(SHAPE)).shape)
    assert mask[1, 4, 1, 3]


def test_partition_masks_pool_over_the_axes_each_method_names():
    idx = (1, 4, 1, 3)
    bn = BATCH.shares_statistics_with(SHAPE, idx)
    assert bn[:, 4].all() and not bn[:, 3].any()  # one channel, every sample and position
    ln = LAYER.shares_statistics_with(SHAPE, idx)
    assert ln[1].all() and not ln[0].any()  # one sample, all channels and positions
    inst = INSTANCE.shares_statistics_with(SHAPE, idx)
    assert inst[1, 4].all() and int(inst.sum()) == H * W
    pn = POSITIONAL.shares_statistics_with(SHAPE, idx)
    assert pn[1, :, 1, 3].all() and int(pn.sum()) == C
    gn = GROUP(2).shares_statistics_with(SHAPE, idx)
    assert gn[1, 3:].all() and not gn[1, :3].any()  # channels 3..5 form the second group


@pytest.mark.parametrize("partition", [BATCH, LAYER, INSTANCE, GROUP(3), BATCH_GROUP(2),
                                       POSITIONAL])
def test_matrix_form_round_trips_and_rows_hold_the_pooled_elements(partition):
    x = torch.randn(SHAPE, dtype=F64)
    xv = partition.view(x)
    mat = partition.to_matrix(xv)
    g = partition.groups(C)
    assert mat.shape[1] == g and mat.shape[2] == partition.count(xv.shape)
    assert torch.equal(partition.from_matrix(mat, xv.shape), xv)
    # every row of the matrix has the same mean as the framework's statistic
    means = partition.mean(xv).expand_as(xv)
    row_means = partition.from_matrix(mat.mean(-1, keepdim=True).expand_as(mat), xv.shape)
    torch.testing.assert_close(row_means, means, atol=1e-12, rtol=0)


def test_matrix_form_of_batch_norm_is_channels_by_samples_and_positions():
    x = torch.randn(SHAPE, dtype=F64)
    mat = BATCH.to_matrix(BATCH.view(x))
    assert torch.equal(mat[0], x.transpose(0, 1).reshape(C, -1))


def test_normalize_with_batch_partition_equals_manual_standardization_and_affine():
    x = torch.randn(SHAPE, dtype=F64)
    w, b = torch.randn(C, dtype=F64), torch.randn(C, dtype=F64)
    y = normalize(x, BATCH, Standardize(1e-5), Affine(w, b))
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * w.view(1, C, 1, 1) + b.view(1, C, 1, 1)
    torch.testing.assert_close(y, expected, atol=1e-12, rtol=1e-12)


def test_running_update_uses_unbiased_variance_and_momentum():
    x = torch.randn(SHAPE, dtype=F64)
    running = {"mean": torch.zeros(C, dtype=F64), "var": torch.ones(C, dtype=F64)}
    normalize(x, BATCH, Standardize(), running=running, momentum=0.25)
    var = x.var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(running["var"], 0.75 + 0.25 * var, atol=1e-12, rtol=0)
    torch.testing.assert_close(running["mean"], 0.25 * x.mean(dim=(0, 2, 3)), atol=1e-12, rtol=0)


def test_evaluation_uses_running_statistics_and_leaves_them_unchanged():
    running = {"mean": torch.full((C,), 2.0, dtype=F64), "var": torch.full((C,), 4.0, dtype=F64)}
    x = torch.randn(SHAPE, dtype=F64)
    y = normalize(x, BATCH, Standardize(eps=1e-5), running=running, use_batch_stats=False)
    torch.testing.assert_close(y, (x - 2.0) / (4.0 + 1e-5) ** 0.5, atol=1e-12, rtol=0)
    assert torch.equal(running["mean"], torch.full((C,), 2.0, dtype=F64))


def test_scale_only_operation_divides_by_root_mean_square_and_tracks_it_without_correction():
    x = torch.randn(SHAPE, dtype=F64) + 3
    running = {"var": torch.ones(C, dtype=F64)}
    y = normalize(x, BATCH, Standardize(center=False), running=running, momentum=1.0)
    ms = (x**2).mean(dim=(0, 2, 3))
    torch.testing.assert_close(running["var"], ms, atol=1e-12, rtol=0)
    torch.testing.assert_close(y, x / torch.sqrt(ms.view(1, C, 1, 1) + 1e-5), atol=1e-12, rtol=0)


def test_center_only_operation_subtracts_the_mean():
    x = torch.randn(SHAPE, dtype=F64) * 3
    y = normalize(x, LAYER, Standardize(scale=False))
    torch.testing.assert_close(y, x - x.mean(dim=(1, 2, 3), keepdim=True), atol=1e-12, rtol=0)


class MeanAbsoluteDeviationScaling(Operation):
    """A NOP the framework does not ship: divide the centered value by the mean |deviation|."""

    keys = ("mean", "mad")

    def statistics(self, xv, partition):
        mean = partition.mean(xv)
        return {"mean": mean, "mad": partition.mean((xv - mean).abs())}

    def apply(self, xv, stats, partition):
        return (xv - stats["mean"]) / (stats["mad"] + 1e-8)


def test_a_new_operation_plugs_into_every_partition_and_keeps_running_statistics():
    op = MeanAbsoluteDeviationScaling()
    x = torch.randn(SHAPE, dtype=F64)
    y = normalize(x, GROUP(3), op)
    xg = x.reshape(N, 3, -1)
    mean = xg.mean(-1, keepdim=True)
    expected = ((xg - mean) / ((xg - mean).abs().mean(-1, keepdim=True) + 1e-8)).reshape(SHAPE)
    torch.testing.assert_close(y, expected, atol=1e-12, rtol=0)
    running = {"mean": torch.zeros(C, dtype=F64), "mad": torch.ones(C, dtype=F64)}
    normalize(x, BATCH, op, running=running, momentum=1.0)
    mad = (x - x.mean(dim=(0, 2, 3), keepdim=True)).abs().mean(dim=(0, 2, 3))
    torch.testing.assert_close(running["mad"], mad, atol=1e-12, rtol=0)


class DecorrelateGroups(Operation):
    """A whitening-style NOP through the matrix form: ZCA-whiten the G rows of each problem."""

    keys = ()

    def statistics(self, xv, partition):
        mat = partition.to_matrix(xv)  # (B, d, m)
        centered = mat - mat.mean(-1, keepdim=True)
        cov = centered @ centered.transpose(1, 2) / mat.shape[-1]
        evals, evecs = torch.linalg.eigh(cov + 1e-6 * torch.eye(cov.shape[-1], dtype=cov.dtype))
        return {"whiten": evecs @ torch.diag_embed(evals.rsqrt()) @ evecs.transpose(1, 2),
                "centered": centered}

    def apply(self, xv, stats, partition):
        return partition.from_matrix(stats["whiten"] @ stats["centered"], xv.shape)


def test_a_matrix_form_operation_whitens_the_partition_rows():
    x = torch.randn(64, 4, 3, 3, dtype=F64) @ torch.randn(3, 3, dtype=F64)
    x = x + 0.5 * x[:, :1]  # correlate the channels
    y = normalize(x, BATCH, DecorrelateGroups())
    rows = y.transpose(0, 1).reshape(4, -1)
    cov = rows @ rows.T / rows.shape[1]
    torch.testing.assert_close(cov, torch.eye(4, dtype=F64), atol=1e-4, rtol=0)


def test_region_partition_pools_each_label_separately():
    regions = torch.tensor([[[0, 0], [1, 2]]])
    x = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]], dtype=F64)
    p = RegionPartition(regions)
    assert p.mean(p.view(x)).flatten().tolist() == [2.0, 2.0, 5.0, 7.0]
    var, _ = p.var_mean(p.view(x))
    assert var.flatten().tolist() == [1.0, 1.0, 0.0, 0.0]


def test_region_partition_has_no_running_estimate():
    with pytest.raises(ValueError, match="no running estimate"):
        RegionPartition(torch.zeros(1, 2, 2, dtype=torch.long)).count(torch.Size([1, 1, 1, 4]))


def test_half_precision_statistics_are_computed_in_float32():
    x = (torch.randn(4, 3, 8, 8) * 30 + 300).half()  # squares overflow float16
    y = normalize(x, INSTANCE, Standardize())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), normalize(x.float(), INSTANCE, Standardize()),
                               atol=4e-3, rtol=2e-3)


def test_framework_argument_errors():
    with pytest.raises(ValueError, match="center=True or scale=True"):
        Standardize(center=False, scale=False)
    with pytest.raises(ValueError, match="eps must be a positive float"):
        Standardize(eps=0.0)
    with pytest.raises(ValueError, match="num_groups must be a positive int"):
        Partition("g", False, True, num_groups=0)
    with pytest.raises(ValueError, match="not divisible by num_groups=4"):
        GROUP(4).view(torch.zeros(2, 6))
    with pytest.raises(ValueError, match="one entry per axis"):
        BATCH.shares_statistics_with((2, 3), (0,))


def test_update_running_ignores_keys_without_buffers():
    running = {"mean": torch.zeros(3, dtype=F64)}
    stats = Standardize().statistics(BATCH.view(torch.randn(4, 3, dtype=F64)), BATCH)
    update_running(running, Standardize(), stats, 4, 1.0)
    torch.testing.assert_close(running["mean"], stats["mean"].flatten(), atol=0, rtol=0)


def test_functional_default_and_framework_paths_agree_for_every_dispatching_function():
    x = torch.randn(SHAPE, dtype=F64)
    w, b = torch.randn(C, dtype=F64), torch.randn(C, dtype=F64)
    calls = [
        lambda be: NF.batch_norm(x, weight=w, bias=b, backend=be),
        lambda be: NF.layer_norm(x, None, w, b, backend=be),
        lambda be: NF.layer_norm(x, (H, W), backend=be),
        lambda be: NF.instance_norm(x, weight=w, bias=b, backend=be),
        lambda be: NF.group_norm(x, 3, w, b, backend=be),
        lambda be: NF.rms_norm(x, None, w, backend=be),
        lambda be: NF.rms_norm(x, (W,), backend=be),
    ]
    for call in calls:
        torch.testing.assert_close(call("auto"), call("framework"), atol=1e-12, rtol=1e-12)


# ----------------------------------------------------------------------------- the fused path


def _composed(x, partition, op, weight, bias):
    """Standardize then Affine, step by step in plain tensor operations (the oracle)."""
    xv = partition.view(x)
    dims = partition.dims
    out = xv
    if op.center:
        out = out - xv.mean(dim=dims, keepdim=True)
    if op.scale:
        out = out / torch.sqrt((out * out).mean(dim=dims, keepdim=True) + op.eps)
    shape = (1, xv.shape[1], xv.shape[2], 1)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out.reshape(x.shape)


FUSED_CASES = (
    [(p, center, scale, True, True)
     for p in (BATCH, LAYER, INSTANCE, GROUP(3), BATCH_GROUP(2), POSITIONAL)
     for center, scale in ((True, True), (False, True), (True, False))]
    + [(p, True, True, w, b) for p in (BATCH, GROUP(3))
       for w, b in ((True, False), (False, True), (False, False))]
)


@pytest.mark.parametrize("partition, center, scale, has_weight, has_bias", FUSED_CASES)
def test_fused_standardize_affine_equals_the_composition_with_gradients(
        partition, center, scale, has_weight, has_bias):
    # The hand-derived backward of the one-function path against autograd of the steps,
    # first derivatives (gradcheck) and second ones (Hessian-vector products recompute).
    torch.manual_seed(0)
    x = (torch.randn(2, C, 1, 3, dtype=F64) * 2 + 3).requires_grad_()
    weight = torch.randn(C, dtype=F64, requires_grad=True) if has_weight else None
    bias = torch.randn(C, dtype=F64, requires_grad=True) if has_bias else None
    op = Standardize(1e-3, center=center, scale=scale)
    inputs = tuple(t for t in (x, weight, bias) if t is not None)

    def fused(*args):
        it = iter(args)
        xx = next(it)
        w = next(it) if has_weight else None
        b = next(it) if has_bias else None
        recovery = Affine(w, b) if (w is not None or b is not None) else None
        return normalize(xx, partition, op, recovery)

    expected = _composed(x, partition, op, weight, bias)
    torch.testing.assert_close(fused(*inputs), expected)
    assert torch.autograd.gradcheck(fused, inputs)
    if has_weight and has_bias and center and scale and partition in (BATCH, GROUP(3)):
        assert torch.autograd.gradgradcheck(fused, inputs, fast_mode=True)


def test_fused_path_returns_statistics_for_running_averages():
    x = torch.randn(SHAPE, dtype=F64) * 3 + 1
    mean, var = torch.zeros(C, dtype=F64), torch.ones(C, dtype=F64)
    normalize(x, BATCH, Standardize(), Affine(torch.ones(C, dtype=F64), None),
              running={"mean": mean, "var": var}, momentum=1.0)
    torch.testing.assert_close(mean, x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(var, x.var(dim=(0, 2, 3), unbiased=True))


def test_variance_is_accurate_at_a_large_offset():
    # Two passes (mean, then the mean of squared deviations): no cancellation at an offset
    # 1e4 times the spread, where E[x^2] - E[x]^2 in float32 loses every digit.
    x = torch.randn(2, 4, 64) * 1e-2 + 100.0
    var, _ = LAYER.var_mean(LAYER.view(x))
    exact = x.double().var(dim=(1, 2), unbiased=False)
    torch.testing.assert_close(var.flatten().double(), exact, rtol=1e-3, atol=0)
    y = normalize(x, LAYER, Standardize(1e-12))
    expected = (x.double() - x.double().mean(dim=(1, 2), keepdim=True)) / exact.sqrt().reshape(2, 1, 1)
    torch.testing.assert_close(y.double(), expected, rtol=1e-3, atol=1e-3)
