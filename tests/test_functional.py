"""Layers without a torch twin against reference formulas written here; equivalences; gradcheck;
property-based tests (hypothesis) and error messages.

Tolerances: float64 comparisons ``atol=rtol=1e-10`` unless stated; the
references are written independently (plain loops, masks, conv2d, avg_pool2d),
so only rounding differs.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_layers import (  # noqa: F401  (one_cpu_thread is an autouse fixture)
    TOL,
    assert_same_layer,
    one_cpu_thread,
    randomize_parameters,
)
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

import normlib
from normlib import functional as NF
from normlib import layers as L

F64 = torch.float64


def channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-channel vector shaped to broadcast over ``(N, C, *)``."""
    return t.reshape((1, -1) + (1,) * (ndim - 2))


# --------------------------------------------------------------------------- reference modules


class RefBatchGroupNorm(nn.Module):
    def __init__(self, c, g, momentum=0.1, eps=1e-5):
        super().__init__()
        self.g, self.momentum, self.eps = g, momentum, eps
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(g))
        self.register_buffer("running_var", torch.ones(g))

    def forward(self, x):
        n = x.shape[0]
        # (G, N * C/G * S): every row holds the elements of one group across the batch.
        rows = x.reshape(n, self.g, -1).transpose(0, 1).reshape(self.g, -1)
        if self.training:
            mean, var = rows.mean(1), rows.var(1, unbiased=False)
            m = rows.shape[1]
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * m / (m - 1))
        else:
            mean, var = self.running_mean, self.running_var
        xg = x.reshape(n, self.g, -1)
        y = ((xg - mean[None, :, None]) / torch.sqrt(var[None, :, None] + self.eps)).reshape(x.shape)
        return y * channel_view(self.weight, x.dim()) + channel_view(self.bias, x.dim())


class RefVarianceNorm(nn.Module):
    def __init__(self, c, momentum=0.1, eps=1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))

    def forward(self, x):
        dims = [0] + list(range(2, x.dim()))
        if self.training:
            sq = (x**2).mean(dims)
            with torch.no_grad():
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * sq)
        else:
            sq = self.running_var
        y = x / torch.sqrt(channel_view(sq, x.dim()) + self.eps)
        return y * channel_view(self.weight, x.dim()) + channel_view(self.bias, x.dim())


class RefEvoNormB0(nn.Module):
    def __init__(self, c, momentum=0.1, eps=1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        self.v = nn.Parameter(torch.ones(c))
        self.register_buffer("running_var", torch.ones(c))

    def forward(self, x):
        nd = x.dim()
        dims = [0] + list(range(2, nd))
        if self.training:
            var = x.var(dims, unbiased=False)
            m = x.numel() // x.shape[1]
            with torch.no_grad():
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * m / (m - 1))
        else:
            var = self.running_var
        spatial = list(range(2, nd))
        inst_var = x.var(spatial, unbiased=False, keepdim=True) if spatial else torch.zeros_like(x)
        den = torch.maximum(torch.sqrt(channel_view(var, nd) + self.eps),
                            channel_view(self.v, nd) * x + torch.sqrt(inst_var + self.eps))
        return x / den * channel_view(self.weight, nd) + channel_view(self.bias, nd)


class RefEvoNormS0(nn.Module):
    def __init__(self, c, g, eps=1e-5):
        super().__init__()
        self.g, self.eps = g, eps
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        self.v = nn.Parameter(torch.ones(c))

    def forward(self, x):
        nd, n = x.dim(), x.shape[0]
        var = x.reshape(n, self.g, -1).var(2, unbiased=False)  # (N, G)
        std = torch.sqrt(var + self.eps).repeat_interleave(x.shape[1] // self.g, dim=1)
        y = x * torch.sigmoid(channel_view(self.v, nd) * x) / std.reshape(std.shape + (1,) * (nd - 2))
        return y * channel_view(self.weight, nd) + channel_view(self.bias, nd)


class RefFRN(nn.Module):
    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        self.tau = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        nd = x.dim()
        nu2 = (x**2).mean(list(range(2, nd)), keepdim=True) if nd > 2 else x**2
        y = x / torch.sqrt(nu2 + self.eps) * channel_view(self.weight, nd) + \
            channel_view(self.bias, nd)
        return torch.max(y, channel_view(self.tau, nd))


class RefPositionalNorm(nn.Module):
    def __init__(self, c, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x):
        nd = x.dim()
        mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
        y = (x - mean) / torch.sqrt(var + self.eps)
        return y * channel_view(self.weight, nd) + channel_view(self.bias, nd)


class RefPopulationNorm(nn.Module):
    """Training-set statistics as cumulative averages; no gradient through them.

    ``center_only``: ``y = (x - mu_hat) * weight + bias``; the variance estimate stays 1.
    """

    def __init__(self, c, eps=1e-5, center_only=False):
        super().__init__()
        self.eps, self.center_only = eps, center_only
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))
        self.seen = 0

    def forward(self, x):
        nd = x.dim()
        dims = [0] + list(range(2, nd))
        if self.training:
            with torch.no_grad():
                self.seen += 1
                w = 1.0 / self.seen
                self.running_mean.mul_(1 - w).add_(w * x.mean(dims))
                if not self.center_only:
                    self.running_var.mul_(1 - w).add_(w * x.var(dims, unbiased=True))
        y = x - channel_view(self.running_mean, nd)
        if not self.center_only:
            y = y / torch.sqrt(channel_view(self.running_var, nd) + self.eps)
        return y * channel_view(self.weight, nd) + channel_view(self.bias, nd)


@pytest.mark.parametrize("dtype", (torch.float32, F64))
@pytest.mark.parametrize("shape", [(6, 8), (4, 8, 3, 3)])
@pytest.mark.parametrize("groups", [1, 2, 8])
def test_batch_group_norm_equals_reference_formula(groups, shape, dtype):
    assert_same_layer(L.BatchGroupNorm(8, num_groups=groups, momentum=0.2),
                      RefBatchGroupNorm(8, groups, momentum=0.2), shape, dtype)


@pytest.mark.parametrize("dtype", (torch.float32, F64))
@pytest.mark.parametrize("shape", [(6, 5), (4, 5, 3, 2)])
def test_variance_norm_equals_reference_formula(shape, dtype):
    assert_same_layer(L.VarianceNorm(5), RefVarianceNorm(5), shape, dtype, buffers=("running_var",))


@pytest.mark.parametrize("dtype", (torch.float32, F64))
@pytest.mark.parametrize("shape", [(6, 5), (4, 5, 3, 2)])
def test_evonorm_b0_equals_reference_formula(shape, dtype):
    assert_same_layer(L.EvoNormB0(5), RefEvoNormB0(5), shape, dtype, buffers=("running_var",))


@pytest.mark.parametrize("dtype", (torch.float32, F64))
@pytest.mark.parametrize("shape", [(6, 8), (3, 8, 3, 2)])
def test_evonorm_s0_equals_reference_formula(shape, dtype):
    assert_same_layer(L.EvoNormS0(8, num_groups=4), RefEvoNormS0(8, 4), shape, dtype)


@pytest.mark.parametrize("dtype", (torch.float32, F64))
@pytest.mark.parametrize("shape", [(6, 5), (4, 5, 3, 2)])
def test_filter_response_norm_equals_reference_formula(shape, dtype):
    assert_same_layer(L.FilterResponseNorm(5), RefFRN(5), shape, dtype)


@pytest.mark.parametrize("dtype", (torch.float32, F64))
@pytest.mark.parametrize("shape", [(6, 5), (4, 5, 3, 2)])
def test_positional_norm_equals_reference_formula(shape, dtype):
    assert_same_layer(L.PositionalNorm(5), RefPositionalNorm(5), shape, dtype)


@pytest.mark.parametrize("dtype", (torch.float32, F64))
def test_population_norm_equals_cumulative_training_set_statistics(dtype):
    assert_same_layer(L.PopulationNorm(5), RefPopulationNorm(5), (6, 5, 2, 2), dtype, steps=4)


@pytest.mark.parametrize("dtype", (torch.float32, F64))
@pytest.mark.parametrize("shape", [(6, 5), (4, 5, 2, 2)])
def test_population_norm_center_only_equals_reference_centering_formula(shape, dtype):
    # train steps, then eval: y = (x - cumulative mean estimate) * weight + bias, no scaling
    ours = L.PopulationNorm(5, center_only=True)
    assert_same_layer(ours, RefPopulationNorm(5, center_only=True), shape, dtype, steps=4)
    assert torch.equal(ours.running_var, torch.ones(5, dtype=dtype))  # never estimated


def test_population_norm_center_only_learns_the_mean_from_batches_of_one_sample():
    # a mean estimate needs one value per channel (a variance estimate needs two)
    layer = L.PopulationNorm(3, center_only=True, affine=False).double()
    xs = torch.randn(20, 1, 3, dtype=F64) * 2 + torch.tensor([1.0, -2.0, 5.0], dtype=F64)
    for x in xs:
        layer(x)
    torch.testing.assert_close(layer.running_mean, xs.mean(dim=(0, 1)), **TOL[F64])
    layer.eval()
    torch.testing.assert_close(layer(xs[0]), xs[0] - xs.mean(dim=(0, 1)), **TOL[F64])


def test_population_norm_output_of_a_sample_does_not_depend_on_its_batch_mates():
    layer = L.PopulationNorm(3, momentum=0.0)  # frozen estimates: only the batch-mates change
    x = torch.randn(1, 3, 4, 4, dtype=F64)
    alone = layer.double()(x)
    with_others = layer(torch.cat([x, 10 * torch.randn(5, 3, 4, 4, dtype=F64)]))[:1]
    torch.testing.assert_close(alone, with_others, **TOL[F64])


def test_population_norm_sends_no_gradient_through_its_statistics():
    x = torch.randn(8, 3, dtype=F64, requires_grad=True)
    layer = L.PopulationNorm(3).double()
    layer(x).sum().backward()
    expected = (layer.weight / torch.sqrt(layer.running_var + layer.eps)).detach().expand(8, 3)
    torch.testing.assert_close(x.grad, expected, **TOL[F64])


def test_region_norm_equals_instance_norm_within_each_region():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 6, generator=g, dtype=F64)
    labels = torch.randint(0, 3, (2, 5, 6), generator=g)
    weight, bias = torch.randn(3, dtype=F64), torch.randn(3, dtype=F64)
    y = NF.region_norm(x, labels, weight, bias)
    expected = torch.empty_like(x)
    for n in range(2):
        for c in range(3):
            for r in range(3):
                sel = labels[n] == r
                vals = x[n, c][sel]
                z = (vals - vals.mean()) / torch.sqrt(vals.var(unbiased=False) + 1e-5)
                expected[n, c][sel] = z * weight[c] + bias[c]
    torch.testing.assert_close(y, expected, **TOL[F64])


def test_region_norm_with_one_region_equals_instance_norm():
    x = torch.randn(2, 3, 4, 4, dtype=F64)
    layer = L.RegionNorm(3).double()
    torch.testing.assert_close(layer(x), NF.instance_norm(x, weight=layer.weight, bias=layer.bias),
                               **TOL[F64])
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    torch.testing.assert_close(layer(x, mask), layer(x), **TOL[F64])


def test_region_norm_label_not_below_num_regions_raises_value_error_before_computing():
    x, labels = torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)
    labels[1, 2:] = 2
    with pytest.raises(ValueError, match=r"regions holds the label 2 but num_regions=2.*"
                                         r"num_regions=3 or None"):
        NF.region_norm(x, labels, num_regions=2)
    with pytest.raises(ValueError, match=r"num_regions must be a positive int"):
        NF.region_norm(x, labels, num_regions=0)
    with pytest.raises(ValueError, match=r"labels >= 0, got the label -1"):
        NF.region_norm(x, labels - 1)
    assert NF.region_norm(x, labels, num_regions=3).shape == x.shape  # unused labels are fine


def test_region_norm_layer_rejects_a_wrong_mask():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"regions must have shape \(2, 4, 4\)"):
        L.RegionNorm(3)(x, torch.zeros(2, 4, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="integer or boolean"):
        L.RegionNorm(3)(x, torch.zeros(2, 4, 4))
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[0, 0, 0] = 2
    with pytest.raises(ValueError, match=r"label 2 but num_regions=2"):
        L.RegionNorm(3, num_regions=2)(x, labels)
    with pytest.raises(ValueError, match=r"num_regions must be a positive int, got 0"):
        L.RegionNorm(3, num_regions=0)


# --------------------------------------------------------------------------- local normalizers


def test_local_contrast_norm_equals_2d_gaussian_convolution_reference():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 9, 10, generator=g, dtype=F64)
    k, sigma = 5, 1.5
    r = torch.arange(k, dtype=F64) - (k - 1) / 2
    w2 = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    w2 = (w2 / w2.sum())[None, None]

    def local_mean(t):  # t: (N, 1, H, W); border windows renormalized by the weight inside
        return F.conv2d(t, w2, padding=k // 2) / F.conv2d(torch.ones_like(t), w2, padding=k // 2)

    v = x - local_mean(x.mean(1, keepdim=True))
    s = torch.sqrt(local_mean((v**2).mean(1, keepdim=True)))
    c = s.mean(dim=(2, 3), keepdim=True)
    expected = v / torch.maximum(s, c)
    torch.testing.assert_close(NF.local_contrast_norm(x, k, sigma), expected, **TOL[F64])


class _Float64OffCPU(TorchFunctionMode):
    """Records every float64 tensor that a torch call creates on a device other than the CPU."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == F64 and t.device.type != "cpu":
                self.seen.append(getattr(func, "__name__", str(func)))
        return out


def test_local_contrast_norm_creates_no_float64_tensor_off_the_cpu():
    # MPS has no float64: the Gaussian window is built in float64 on the CPU and moved.
    # The meta device stands in for an accelerator (shapes and dtypes, no data).
    x = torch.randn(2, 3, 8, 8, device="meta")
    with _Float64OffCPU() as mode:
        y = NF.local_contrast_norm(x, kernel_size=5, sigma=1.5)
    assert y.dtype == torch.float32 and y.device.type == "meta"
    assert mode.seen == []


def test_local_contrast_norm_of_a_constant_image_is_zero():
    y = NF.local_contrast_norm(torch.full((1, 2, 8, 8), 3.0))
    assert torch.isfinite(y).all() and y.abs().max() < 1e-5


@pytest.mark.parametrize("channel_size", [None, 3])
def test_divisive_norm_equals_box_average_reference(channel_size):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 7, 6, generator=g, dtype=F64)
    k, sigma = 3, 0.7

    def field(t):
        if channel_size is None:
            t = t.mean(1, keepdim=True)
            return F.avg_pool2d(t, k, stride=1, padding=k // 2, count_include_pad=False)
        # box over (channels, H, W) with counts that exclude padding
        return F.avg_pool3d(t[:, None], (channel_size, k, k), stride=1,
                            padding=(channel_size // 2, k // 2, k // 2),
                            count_include_pad=False)[:, 0]

    v = x - field(x)
    expected = v / torch.sqrt(sigma**2 + field(v**2))
    torch.testing.assert_close(NF.divisive_norm(x, k, channel_size, sigma), expected, **TOL[F64])


def test_local_context_norm_equals_loop_reference():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 5, 6, generator=g, dtype=F64) + 3
    groups, (wh, ww) = 2, (3, 5)
    y = NF.local_context_norm(x, groups, (wh, ww))
    expected = torch.empty_like(x)
    xg = x.reshape(2, groups, 2, 5, 6)
    for i in range(5):
        for j in range(6):
            # window of position (i, j): i - wh//2 .. i + (wh-1)//2, clipped at the borders
            rows = slice(max(0, i - wh // 2), min(5, i + (wh - 1) // 2 + 1))
            cols = slice(max(0, j - ww // 2), min(6, j + (ww - 1) // 2 + 1))
            win = xg[:, :, :, rows, cols].reshape(2, groups, -1)
            mean, var = win.mean(-1), win.var(-1, unbiased=False)
            z = (xg[:, :, :, i, j] - mean[..., None]) / torch.sqrt(var[..., None] + 1e-5)
            expected[:, :, i, j] = z.reshape(2, 4)
    torch.testing.assert_close(y, expected, atol=1e-9, rtol=1e-9)


# --------------------------------------------------------------------------- equivalences


@pytest.mark.parametrize("backend", ("auto", "framework"))
def test_group_norm_equals_layer_norm_when_one_group(backend):
    x, w, b = torch.randn(3, 6, 4, 4, dtype=F64), torch.randn(6, dtype=F64), torch.randn(6, dtype=F64)
    torch.testing.assert_close(NF.group_norm(x, 1, w, b, backend=backend),
                               NF.layer_norm(x, None, w, b, backend="framework"), **TOL[F64])


@pytest.mark.parametrize("backend", ("auto", "framework"))
def test_group_norm_equals_instance_norm_when_one_channel_per_group(backend):
    x, w, b = torch.randn(3, 6, 4, 4, dtype=F64), torch.randn(6, dtype=F64), torch.randn(6, dtype=F64)
    torch.testing.assert_close(NF.group_norm(x, 6, w, b, backend=backend),
                               NF.instance_norm(x, weight=w, bias=b, backend="framework"),
                               **TOL[F64])


def test_batch_group_norm_equals_batch_norm_when_one_channel_per_group():
    bgn, bn = L.BatchGroupNorm(6, num_groups=6), L.BatchNorm(6, backend="framework")
    assert_same_layer(bgn, bn, (5, 6, 3, 3), F64)


def test_batch_group_norm_equals_group_norm_for_a_batch_of_one_sample():
    x = torch.randn(1, 6, 4, 4, dtype=F64)
    torch.testing.assert_close(NF.batch_group_norm(x, 3), NF.group_norm(x, 3), **TOL[F64])


def test_local_context_norm_equals_group_norm_when_the_window_covers_the_image():
    x = torch.randn(2, 6, 5, 7, dtype=F64) * 3 + 1
    w, b = torch.randn(6, dtype=F64), torch.randn(6, dtype=F64)
    y = NF.local_context_norm(x, 3, (2 * 5 - 1, 2 * 7 - 1), w, b)
    torch.testing.assert_close(y, NF.group_norm(x, 3, w, b), atol=1e-9, rtol=1e-9)


def test_divisive_norm_equals_layer_norm_with_whole_windows_and_small_sigma():
    x = torch.randn(2, 4, 5, 5, dtype=F64)
    y = NF.divisive_norm(x, spatial_size=9, sigma=1e-3)
    torch.testing.assert_close(y, NF.layer_norm(x, eps=1e-6), **TOL[F64])


def test_positional_norm_equals_layer_norm_on_vectors():
    x = torch.randn(5, 7, dtype=F64)
    torch.testing.assert_close(NF.positional_norm(x), NF.layer_norm(x), **TOL[F64])


def test_variance_norm_equals_batch_norm_on_channel_centered_inputs():
    x = torch.randn(8, 3, 2, 2, dtype=F64)
    x = x - x.mean(dim=(0, 2, 3), keepdim=True)
    torch.testing.assert_close(NF.variance_norm(x), NF.batch_norm(x), **TOL[F64])


def test_layer_norm_forms_agree_on_vectors():
    x, w, b = torch.randn(5, 7, dtype=F64), torch.randn(7, dtype=F64), torch.randn(7, dtype=F64)
    torch.testing.assert_close(NF.layer_norm(x, None, w, b), NF.layer_norm(x, (7,), w, b),
                               **TOL[F64])


def test_batch_norm_eval_with_frozen_statistics_equals_population_norm():
    x = torch.randn(6, 3, 2, 2, dtype=F64)
    mean, var = torch.randn(3, dtype=F64), torch.rand(3, dtype=F64) + 0.5
    bn = NF.batch_norm(x, mean.clone(), var.clone(), training=False)
    pop = NF.population_norm(x, mean.clone(), var.clone(), training=False)
    torch.testing.assert_close(bn, pop, **TOL[F64])


# --------------------------------------------------------------------------- gradcheck


def _gradcheck_layer(layer: nn.Module, x: torch.Tensor, *extra) -> None:
    layer = layer.double()
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in layer.named_parameters()]
    with torch.no_grad():
        for p in params:  # away from 1/0 so that every term of the gradient is exercised
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p.shape == x.shape[1:2] else 0.0))
    buffers = {n: b.clone() for n, b in layer.named_buffers()}

    def fn(inp, *ps):
        # restore buffers so every evaluation sees the same running statistics
        state = {**dict(zip(names, ps, strict=True)), **{n: b.clone() for n, b in buffers.items()}}
        return functional_call(layer, state, (inp, *extra))

    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), *params), eps=1e-6, atol=1e-5)


GRADCHECK_LAYERS = {
    "bn": lambda: L.BatchNorm(3),
    "bn_framework": lambda: L.BatchNorm(3, backend="framework"),
    "ln": lambda: L.LayerNorm(3),
    "ln_framework": lambda: L.LayerNorm(3, backend="framework"),
    "ln_last_dims": lambda: L.LayerNorm((3, 2)),
    "in": lambda: L.InstanceNorm(3),
    "in_framework": lambda: L.InstanceNorm(3, backend="framework"),
    "gn": lambda: L.GroupNorm(4, num_groups=2),
    "gn_framework": lambda: L.GroupNorm(4, num_groups=2, backend="framework"),
    "bgn": lambda: L.BatchGroupNorm(4, num_groups=2),
    "pn": lambda: L.PositionalNorm(3),
    "rms": lambda: L.RMSNorm(3),
    "rms_framework": lambda: L.RMSNorm(3, backend="framework"),
    "vn": lambda: L.VarianceNorm(3),
    "frn": lambda: L.FilterResponseNorm(3, eps=1e-3),
    "frn_learnable_eps": lambda: L.FilterResponseNorm(3, eps=1e-3, learnable_eps=True),
    "evonorm_b0": lambda: L.EvoNormB0(3),
    "evonorm_s0": lambda: L.EvoNormS0(4, num_groups=2),
    "lrn": lambda: L.LocalResponseNorm(3, size=2),
    "local_contrast": lambda: L.LocalContrastNorm(3, kernel_size=3, sigma=1.0),
    "divisive": lambda: L.DivisiveNorm(3, spatial_size=3, channel_size=2),
    "local_context": lambda: L.LocalContextNorm(4, num_groups=2, window_size=3),
}


@pytest.mark.parametrize("name", sorted(GRADCHECK_LAYERS))
def test_gradcheck_in_float64_for_every_layer(name):
    layer = GRADCHECK_LAYERS[name]()
    c = layer.num_features if isinstance(layer.num_features, int) else 2
    shape = (2, 2, 3, 2) if name == "ln_last_dims" else (2, c, 3, 2)
    torch.manual_seed(0)
    _gradcheck_layer(layer, torch.randn(shape, dtype=F64))


EVAL_GRADCHECK_LAYERS = {
    "bn": lambda: L.BatchNorm(4),
    "bn_framework": lambda: L.BatchNorm(4, backend="framework"),
    "bgn": lambda: L.BatchGroupNorm(4, num_groups=2),
    "vn": lambda: L.VarianceNorm(4),
    "evonorm_b0": lambda: L.EvoNormB0(4),
    "in_running": lambda: L.InstanceNorm(4, track_running_stats=True),
    "in_running_framework": lambda: L.InstanceNorm(4, track_running_stats=True,
                                                   backend="framework"),
}


@pytest.mark.parametrize("name", sorted(EVAL_GRADCHECK_LAYERS))
def test_gradcheck_in_evaluation_mode_with_running_statistics(name):
    layer = EVAL_GRADCHECK_LAYERS[name]().double()
    layer(torch.randn(5, 4, 3, 3, dtype=F64) * 2 + 1)
    layer.eval()
    _gradcheck_layer(layer, torch.randn(2, 4, 2, 2, dtype=F64))


def test_gradcheck_population_norm_in_evaluation_mode():
    layer = L.PopulationNorm(3).double()
    layer(torch.randn(5, 3, 2, 2, dtype=F64))
    layer.eval()
    _gradcheck_layer(layer, torch.randn(2, 3, 2, 2, dtype=F64))


def test_gradcheck_region_norm_with_a_mask():
    mask = torch.rand(3, 3, 3, generator=torch.Generator().manual_seed(0)) > 0.4
    _gradcheck_layer(L.RegionNorm(2), torch.randn(3, 2, 3, 3, dtype=F64), mask)


# --------------------------------------------------------------------------- properties

STANDARDIZERS = {
    # name: (function of (x, groups, backend), axes of x that share statistics)
    "bn": (lambda x, g, be: NF.batch_norm(x, backend=be), "batch"),
    "ln": (lambda x, g, be: NF.layer_norm(x, backend=be), "layer"),
    "in": (lambda x, g, be: NF.instance_norm(x, backend=be), "instance"),
    "gn": (lambda x, g, be: NF.group_norm(x, g, backend=be), "group"),
    "bgn": (lambda x, g, be: NF.batch_group_norm(x, g), "batch_group"),
    "pn": (lambda x, g, be: NF.positional_norm(x), "positional"),
}


def pooled_rows(t: torch.Tensor, kind: str, groups: int) -> torch.Tensor:
    """Rows of elements that share statistics, written with plain reshapes (not the framework)."""
    n, c = t.shape[:2]
    t3 = t.reshape(n, c, -1)
    if kind == "batch":
        return t3.transpose(0, 1).reshape(c, -1)
    if kind == "layer":
        return t3.reshape(n, -1)
    if kind == "instance":
        return t3.reshape(n * c, -1)
    if kind == "group":
        return t3.reshape(n * groups, -1)
    if kind == "batch_group":
        return t3.reshape(n, groups, -1).transpose(0, 1).reshape(groups, -1)
    return t3.transpose(1, 2).reshape(-1, c)  # positional


shape_strategy = st.tuples(
    st.integers(2, 4),  # N
    st.sampled_from([1, 2, 3, 6]),  # groups; channels = groups * group size
    st.sampled_from([1, 2]),  # group size
    st.lists(st.integers(1, 4), min_size=0, max_size=2),  # spatial
)


def property_tolerance(rows_x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-row tolerance of mean 0 / unit variance for the rows of ``x`` that share statistics.

    Computing the mean of a row in ``dtype`` leaves an error of a few ulps of ``max|x|``
    (slowly growing with the row length ``m``), and centering and dividing by
    ``sqrt(var + eps)`` amplifies it to ``eps_dtype * max|x| / sqrt(var + eps)``; the
    ``+ 1`` covers rounding the O(1) output. An input at -1e3 with spread 1e-2 in float32
    keeps ~1e-2 of its deviations: its tolerance is 3 such units, about 4e-2 to 1e-1
    (torch's own float32 kernels deviate by up to 3e-2 there).
    """
    m = rows_x.shape[1]
    spread = torch.sqrt(rows_x.var(1, unbiased=False) + 1e-5)
    amplification = rows_x.abs().amax(1) / spread + 1
    return 3 * torch.finfo(dtype).eps * (1 + math.log2(m) / 4) * amplification


def assert_standardized(rows_x: torch.Tensor, rows_y: torch.Tensor, dtype: torch.dtype) -> None:
    """Each row of ``y`` has mean 0 and variance ``var_x / (var_x + eps)`` (0 for one element)."""
    var_x = rows_x.var(1, unbiased=False)
    tol = property_tolerance(rows_x, dtype)
    mean_err = rows_y.mean(1).abs()
    var_err = (rows_y.var(1, unbiased=False) - var_x / (var_x + 1e-5)).abs()
    assert (mean_err <= tol).all(), f"mean off by {(mean_err / tol).max():.3g} tolerances"
    assert (var_err <= tol).all(), f"variance off by {(var_err / tol).max():.3g} tolerances"


def test_property_tolerance_is_tight_enough_to_catch_an_unbiased_variance_at_large_shift():
    # the worst-conditioned case of the property test: shift -1e3, spread 1e-2, float32
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 6, 3, generator=g, dtype=F64) * 1e-2 - 1e3).float()
    rows_x = pooled_rows(x.double(), "batch", 6)
    assert property_tolerance(rows_x, torch.float32).max() < 0.15
    assert_standardized(rows_x, pooled_rows(NF.batch_norm(x).double(), "batch", 6), torch.float32)
    # dividing by the unbiased standard deviation (m = 6) shrinks the variance by 17%
    m = rows_x.shape[1]
    wrong = NF.batch_norm(x).double() * math.sqrt((m - 1) / m)
    with pytest.raises(AssertionError, match="variance off"):
        assert_standardized(rows_x, pooled_rows(wrong, "batch", 6), torch.float32)


@settings(max_examples=80, deadline=None)
@given(shape=shape_strategy, name=st.sampled_from(sorted(STANDARDIZERS)),
       backend=st.sampled_from(["auto", "framework"]), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1e-2, 1.0, 1e3]), shift=st.sampled_from([0.0, 5.0, -1e3]),
       dtype=st.sampled_from([torch.float32, F64]))
def test_standardizers_give_zero_mean_and_unit_variance_over_their_partition(
    shape, name, backend, seed, scale, shift, dtype
):
    n, groups, gsize, spatial = shape
    x = torch.randn((n, groups * gsize, *spatial), generator=torch.Generator().manual_seed(seed),
                    dtype=F64) * scale + shift
    x = x.to(dtype)
    fn, kind = STANDARDIZERS[name]
    y = fn(x, groups, backend).double()
    # The promise up to eps: mean 0, variance var_x / (var_x + eps) (which is 0 for one element).
    assert_standardized(pooled_rows(x.double(), kind, groups), pooled_rows(y, kind, groups), dtype)


RMS_SCALERS = {
    # name: (layer with affine off, axes of x that share the mean square)
    "rms": (lambda c, be: L.RMSNorm(c, eps=1e-5, affine=False, backend=be), "layer"),
    "vn": (lambda c, be: L.VarianceNorm(c, affine=False), "batch"),
    "frn": (lambda c, be: L.FilterResponseNorm(c, eps=1e-5, affine=False, use_tlu=False),
            "instance"),
}


@settings(max_examples=60, deadline=None)
@given(shape=shape_strategy, name=st.sampled_from(sorted(RMS_SCALERS)),
       backend=st.sampled_from(["auto", "framework"]), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1e-2, 1.0, 1e3]), shift=st.sampled_from([0.0, 5.0, -1e3]),
       dtype=st.sampled_from([torch.float32, F64]))
def test_rms_vn_and_frn_give_unit_mean_square_over_their_partition(
    shape, name, backend, seed, scale, shift, dtype
):
    n, groups, gsize, spatial = shape
    c = groups * gsize
    x = torch.randn((n, c, *spatial), generator=torch.Generator().manual_seed(seed),
                    dtype=F64) * scale + shift
    x = x.to(dtype)
    make, kind = RMS_SCALERS[name]
    y = make(c, backend).to(dtype)(x).double()
    rows_x, rows_y = pooled_rows(x.double(), kind, c), pooled_rows(y, kind, c)
    ms_x = rows_x.pow(2).mean(1)
    # No centering, so no cancellation: only a few relative roundings of the mean square.
    tol = 3 * torch.finfo(dtype).eps * (1 + math.log2(rows_x.shape[1]))
    torch.testing.assert_close(rows_y.pow(2).mean(1), ms_x / (ms_x + 1e-5), atol=tol, rtol=tol)


LOW = [torch.float16, torch.bfloat16]
# Relative resolution of the output dtype: the result is computed in float32 and rounded once.
RESOLUTION = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}

ALL_LAYERS = ["bn", "ln", "in", "gn", "bgn", "pn", "rms", "vn", "frn", "evonorm_b0",
              "evonorm_s0", "lrn", "local_contrast", "divisive", "local_context", "population",
              "region"]


CENTERING = {"bn", "ln", "in", "gn", "bgn", "pn", "local_contrast", "local_context", "population",
             "region"}


def build_layer(name: str, num_features: int = 8, **kwargs) -> nn.Module:
    """``create_norm``, plus RegionNorm: not in the registry since it takes a mask."""
    if name == "region":
        return L.RegionNorm(num_features, **kwargs)
    return normlib.create_norm(name, num_features, **kwargs)


def run_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``; RegionNorm gets a checkerboard of two regions over the spatial axes."""
    if isinstance(layer, L.RegionNorm):
        grids = torch.meshgrid(*(torch.arange(s) for s in x.shape[2:]), indexing="ij")
        labels = (sum(grids) % 2).expand(x.shape[0], *x.shape[2:])
        return layer(x, labels)
    return layer(x)


@settings(max_examples=50, deadline=None)
@given(name=st.sampled_from(ALL_LAYERS), dtype=st.sampled_from(LOW + [torch.float32]),
       constant=st.sampled_from([None, 0.0, 3.0, -250.0]), seed=st.integers(0, 2**16),
       spatial=st.sampled_from([(), (3,), (3, 3)]))
def test_no_nan_or_inf_for_finite_inputs_including_constant_and_half_precision(
    name, dtype, constant, seed, spatial
):
    assume(name != "region" or spatial)  # regions are spatial
    shape = (4, 8, *spatial)
    if constant is None:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 100
    else:
        x = torch.full(shape, constant)
    x = x.to(dtype)
    full = build_layer(name)
    exact = run_layer(full, x.float())
    assert torch.isfinite(exact).all()
    layer = build_layer(name).to(dtype)
    y = run_layer(layer, x)
    assert y.dtype == dtype
    # A non-centering layer maps a constant c to about c / sqrt(eps) (EvoNorm), and
    # EvoNorm-S0 with one element per group maps x to about x / sqrt(eps): that may exceed
    # the float16 range, and only then is inf the correctly rounded answer.
    in_range = torch.finfo(dtype).max / 2
    if exact.abs().max() < in_range:
        assert torch.isfinite(y).all()
    if constant is not None and name in CENTERING:
        assert y.float().abs().max() < 0.1  # a constant carries no signal after centering
    # The same in evaluation (running statistics after the training step above); no layer
    # is exempt, EvoNorm included.
    full.eval()
    layer.eval()
    exact = run_layer(full, x.float())
    assert torch.isfinite(exact).all()
    if exact.abs().max() < in_range:
        assert torch.isfinite(run_layer(layer, x).float()).all()


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("name", ["bn", "ln", "in", "gn", "bgn", "pn", "rms", "vn", "frn",
                                  "evonorm_s0", "evonorm_b0", "region", "lrn", "local_contrast",
                                  "divisive", "local_context", "population"])
@pytest.mark.parametrize("backend_kw", [{}, {"backend": "framework"}])
def test_half_precision_inputs_are_normalized_with_float32_statistics(name, dtype, backend_kw):
    # Values near 300: their squares overflow float16 (max 65504), so float16
    # statistics would give inf variance and an output of 0.
    torch.manual_seed(0)
    x = (torch.randn(4, 8, 5, 5) * 20 + 300).to(dtype)
    kw = backend_kw if name in ("bn", "ln", "in", "gn", "rms") else {}
    low, full = build_layer(name, **kw).to(dtype), build_layer(name, **kw)
    expected = run_layer(full, x.float())
    y = run_layer(low, x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), expected, atol=RESOLUTION[dtype] * 4,
                               rtol=RESOLUTION[dtype])
    assert expected.abs().amax() > 0.5  # the check above is not vacuous (0 is the overflow failure)


# --------------------------------------------------------------------------- errors

ERROR_LAYERS = ["bn", "ln", "in", "gn", "bgn", "pn", "rms", "vn", "frn", "evonorm_b0",
                "evonorm_s0", "lrn", "local_contrast", "divisive", "local_context", "population",
                "region"]


@pytest.mark.parametrize("name", ERROR_LAYERS)
def test_wrong_rank_raises_value_error_naming_the_shape(name):
    with pytest.raises(ValueError, match=r"shape \(N, C, \*\).*got shape \(8,\)"):
        build_layer(name)(torch.randn(8))


@pytest.mark.parametrize("name", ERROR_LAYERS)
def test_channel_mismatch_raises_value_error_naming_num_features(name):
    with pytest.raises(ValueError, match=r"has 6 channels.*num_features=8"):
        build_layer(name)(torch.randn(4, 6, 3, 3))


@pytest.mark.parametrize("name", ERROR_LAYERS)
def test_integer_input_raises_type_error(name):
    with pytest.raises(TypeError, match=r"floating-point tensor, got dtype torch.int64"):
        build_layer(name)(torch.ones(4, 8, 3, 3, dtype=torch.long))


@pytest.mark.parametrize("name", ["gn", "bgn", "evonorm_s0", "local_context"])
def test_channels_not_divisible_by_groups_raise_value_error(name):
    with pytest.raises(ValueError, match=r"num_features=6 is not divisible by num_groups=4"):
        normlib.create_norm(name, 6, num_groups=4)
    with pytest.raises(ValueError, match=r"group_size=4"):
        normlib.create_norm(name, 6, group_size=4)


def test_functional_group_norm_with_indivisible_groups_names_a_divisor():
    with pytest.raises(ValueError, match=r"6 channels are not divisible by num_groups=4.*e.g. 3"):
        NF.group_norm(torch.randn(2, 6), 4)


def test_groups_and_group_size_together_raise_value_error():
    with pytest.raises(ValueError, match="not both"):
        L.GroupNorm(8, num_groups=2, group_size=4)


@pytest.mark.parametrize("name", ["bn", "bgn", "vn", "evonorm_b0", "population"])
@pytest.mark.parametrize("shape", [(1, 8), (1, 8, 1, 1)])
def test_batch_statistics_from_one_value_per_channel_raise_in_training(name, shape):
    layer = normlib.create_norm(name, 8, **({"num_groups": 8} if name == "bgn" else {}))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.randn(shape))
    for k, v in layer.state_dict().items():  # raised before touching the running statistics
        assert torch.equal(v, before[k]), k
    layer.eval()
    assert layer(torch.randn(shape)).shape == shape


@pytest.mark.parametrize("name", ["bn", "bgn", "vn", "evonorm_b0"])
def test_batch_statistics_without_running_stats_in_eval_raise_naming_evaluation(name):
    kw = {"num_groups": 8} if name == "bgn" else {}
    layer = normlib.create_norm(name, 8, track_running_stats=False, **kw).eval()
    with pytest.raises(ValueError, match=r"in evaluation has no running statistics.*"
                                         r"more than 1 value per channel") as info:
        layer(torch.randn(1, 8))
    assert "in training" not in str(info.value)
    fn = {"bn": NF.batch_norm, "vn": NF.variance_norm, "evonorm_b0": NF.evonorm_b0,
          "bgn": lambda x, training: NF.batch_group_norm(x, 8, training=training)}[name]
    with pytest.raises(ValueError, match=r"in evaluation has no running statistics"):
        fn(torch.randn(1, 8), training=False)
    assert layer(torch.randn(2, 8)).shape == (2, 8)  # two values: batch statistics exist


@pytest.mark.parametrize("backend", ("auto", "framework"))
@pytest.mark.parametrize("shape", [(4, 8), (4, 8, 1, 1), (4, 8, 1)])
def test_instance_norm_running_stats_from_one_value_per_instance_raise_in_training(backend,
                                                                                  shape):
    layer = L.InstanceNorm(8, track_running_stats=True, backend=backend)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(ValueError, match=r"more than 1 spatial element per \(sample, channel\)"
                                         r".*track_running_stats=False"):
        layer(torch.randn(shape) * 3 + 1)
    for k, v in layer.state_dict().items():  # running_var was not driven toward 0
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match=r"more than 1 spatial element"):
        NF.instance_norm(torch.randn(shape), torch.zeros(8), torch.ones(8), backend=backend)
    layer.eval()  # evaluation with running statistics is well defined
    assert layer(torch.randn(shape)).shape == shape
    # without running statistics each statistic covers one element: the output is the bias
    no_running = L.InstanceNorm(8, backend=backend)
    randomize_parameters(no_running)
    out = no_running(torch.randn(shape))
    torch.testing.assert_close(out, no_running.bias.detach().reshape((1, 8) + (1,) * (len(shape) - 2))
                               .expand(shape), atol=1e-3, rtol=0)


@pytest.mark.parametrize("make, match, error", [
    (lambda: L.LocalContrastNorm(4, sigma=0.0), r"sigma must be a positive float, got 0.0",
     ValueError),
    (lambda: L.LocalContrastNorm(4, sigma=-1.0), r"sigma .* got -1.0", ValueError),
    (lambda: L.LocalContrastNorm(4, sigma="a"), r"sigma must be a positive float, got 'a'",
     TypeError),
    (lambda: L.LocalContrastNorm(4, kernel_size=0), r"kernel_size must be a positive int.*got 0",
     ValueError),
    (lambda: L.DivisiveNorm(4, sigma=0), r"sigma must be a positive float, got 0",
     ValueError),
    (lambda: L.DivisiveNorm(4, sigma="a"), r"sigma must be a positive float, got 'a'", TypeError),
    (lambda: L.DivisiveNorm(4, spatial_size=(3, 0)), r"spatial_size .* got \(3, 0\)",
     ValueError),
    (lambda: L.DivisiveNorm(4, channel_size=0), r"channel_size must be a positive int, got 0",
     ValueError),
    (lambda: L.LocalContextNorm(4, num_groups=2, window_size=0),
     r"window_size must be a positive int.*got 0", ValueError),
    (lambda: L.LocalContextNorm(4, num_groups=2, window_size=2.5),
     r"window_size must be a positive int.*got 2.5", ValueError),
])
def test_local_normalizer_arguments_are_checked_at_construction(make, match, error):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("call, error", [
    (lambda x: NF.local_contrast_norm(x, sigma="a"), TypeError),
    (lambda x: NF.local_contrast_norm(x, sigma=float("nan")), ValueError),
    (lambda x: NF.divisive_norm(x, sigma="a"), TypeError),
    (lambda x: NF.local_context_norm(x, 2, window_size=2.5), ValueError),
])
def test_functional_local_normalizers_name_a_bad_sigma_or_window(call, error):
    with pytest.raises(error, match=r"sigma|window_size"):
        call(torch.randn(2, 4, 5, 5))


def test_functional_batch_norm_with_one_value_per_channel_raises_like_torch():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        NF.batch_norm(torch.randn(1, 3))
    with pytest.raises(ValueError):  # torch's own message, for comparison
        F.batch_norm(torch.randn(1, 3), None, None, training=True)


def test_region_mask_of_wrong_shape_raises_value_error():
    with pytest.raises(ValueError, match=r"regions must have shape \(2, 4, 4\)"):
        NF.region_norm(torch.randn(2, 3, 4, 4), torch.zeros(2, 5, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="integer or boolean"):
        NF.region_norm(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4))


@pytest.mark.parametrize("kwargs, match", [
    ({"eps": 0.0}, "eps must be a positive float"),
    ({"eps": -1e-5}, "eps must be a positive float"),
    ({"momentum": 1.5}, "momentum must be"),
    ({"backend": "cuda"}, "backend must be one of"),
])
def test_bad_layer_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        L.BatchNorm(4, **kwargs)


@pytest.mark.parametrize("num_features, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError),
                                                  (True, TypeError)])
def test_bad_num_features_raises_value_error_or_type_error_for_a_non_int(num_features, error):
    with pytest.raises(error, match="num_features must be a positive int"):
        L.BatchNorm(num_features)


def test_layer_norm_transformer_form_checks_trailing_shape():
    with pytest.raises(ValueError, match=r"normalized_shape=\(5,\) must equal the last"):
        L.LayerNorm((5,))(torch.randn(2, 3, 4))


def test_functional_weight_of_wrong_shape_raises_value_error():
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        NF.batch_norm(torch.randn(4, 3), weight=torch.ones(4))


def test_unknown_registry_name_lists_known_names():
    with pytest.raises(ValueError, match="known names: .*bn"):
        normlib.create_norm("batchnormx", 4)


def test_randomized_parameters_helper_differs_from_default_initialization():
    # guards the oracle helper: with ones/zeros an affine bug would go unnoticed
    layer = L.BatchNorm(4)
    randomize_parameters(layer)
    assert not torch.equal(layer.weight, torch.ones(4))


def _layer_norm_2d(x, weight, bias, eps=1e-5):
    """timm's ``LayerNorm2d``: channels last, torch's layer norm over them, channels first."""
    x = x.permute(0, 2, 3, 1)
    x = F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    return x.permute(0, 3, 1, 2)


@pytest.mark.parametrize("backend", ["auto", "framework"])
def test_positional_norm_equals_timm_layer_norm_2d_values_and_gradients(backend):
    torch.manual_seed(0)
    x = (torch.randn(2, 6, 3, 4, dtype=F64) * 2 + 1).requires_grad_()
    weight = torch.randn(6, dtype=F64, requires_grad=True)
    bias = torch.randn(6, dtype=F64, requires_grad=True)
    y = NF.positional_norm(x, weight, bias, backend=backend)
    ref = _layer_norm_2d(x, weight, bias)
    torch.testing.assert_close(y, ref)
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(y, (x, weight, bias), grad),
                    torch.autograd.grad(ref, (x, weight, bias), grad)):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(
        lambda *t: NF.positional_norm(*t, backend=backend), (x, weight, bias))


def test_positional_norm_layer_equals_layer_norm_2d_in_float32():
    torch.manual_seed(0)
    layer = L.PositionalNorm(8)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    x = torch.randn(4, 8, 5, 5)
    torch.testing.assert_close(layer(x), _layer_norm_2d(x, layer.weight, layer.bias))
