"""Layers without a torch twin against reference formulas written here; equivalences; gradcheck;
property-based tests (hypothesis) and error messages.

Tolerances: float64 comparisons ``atol=rtol=1e-10`` unless stated; the
references are written independently (plain loops, masks, conv2d, avg_pool2d),
so only rounding differs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_layers import (  # noqa: F401  (one_cpu_thread is an autouse fixture)
    TOL,
    assert_same_layer,
    one_cpu_thread,
    randomize_parameters,
)
from torch import nn
from torch.func import functional_call

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
    """Training-set statistics as cumulative averages; no gradient through them."""

    def __init__(self, c, eps=1e-5):
        super().__init__()
        self.eps = eps
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
                self.running_var.mul_(1 - w).add_(w * x.var(dims, unbiased=True))
        mean, var = channel_view(self.running_mean, nd), channel_view(self.running_var, nd)
        y = (x - mean) / torch.sqrt(var + self.eps)
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


@pytest.mark.parametrize("name", ["bn", "bgn", "vn", "evonorm_b0", "in_running"])
def test_gradcheck_in_evaluation_mode_with_running_statistics(name):
    layer = {"bn": L.BatchNorm(4), "bgn": L.BatchGroupNorm(4, num_groups=2),
             "vn": L.VarianceNorm(4), "evonorm_b0": L.EvoNormB0(4),
             "in_running": L.InstanceNorm(4, track_running_stats=True)}[name].double()
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


def property_tolerance(dtype: torch.dtype, scale: float, shift: float) -> float:
    """Rounding of x is amplified by (|shift| + spread) / spread once x is centered: an input
    at -1e3 with spread 1e-2 keeps only ~2 significant float32 digits of its deviations."""
    return max(1e-7, 100 * torch.finfo(dtype).eps * (abs(shift) + 3 * scale) / scale)


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
    rows_x, rows_y = pooled_rows(x.double(), kind, groups), pooled_rows(y, kind, groups)
    var_x = rows_x.var(1, unbiased=False)
    # The promise up to eps: mean 0, variance var_x / (var_x + eps) (which is 0 for one element).
    tol = property_tolerance(dtype, scale, shift)
    torch.testing.assert_close(rows_y.mean(1), torch.zeros_like(var_x), atol=tol, rtol=0)
    torch.testing.assert_close(rows_y.var(1, unbiased=False), var_x / (var_x + 1e-5),
                               atol=tol, rtol=tol)


LOW = [torch.float16, torch.bfloat16]
# Relative resolution of the output dtype: the result is computed in float32 and rounded once.
RESOLUTION = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}

ALL_LAYERS = ["bn", "ln", "in", "gn", "bgn", "pn", "rms", "vn", "frn", "evonorm_b0",
              "evonorm_s0", "lrn", "local_contrast", "divisive", "local_context", "population"]


CENTERING = {"bn", "ln", "in", "gn", "bgn", "pn", "local_contrast", "local_context", "population"}


@settings(max_examples=50, deadline=None)
@given(name=st.sampled_from(ALL_LAYERS), dtype=st.sampled_from(LOW + [torch.float32]),
       constant=st.sampled_from([None, 0.0, 3.0, -250.0]), seed=st.integers(0, 2**16),
       spatial=st.sampled_from([(), (3,), (3, 3)]))
def test_no_nan_or_inf_for_finite_inputs_including_constant_and_half_precision(
    name, dtype, constant, seed, spatial
):
    shape = (4, 8, *spatial)
    if constant is None:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 100
    else:
        x = torch.full(shape, constant)
    x = x.to(dtype)
    exact = normlib.create_norm(name, 8)(x.float())
    assert torch.isfinite(exact).all()
    layer = normlib.create_norm(name, 8).to(dtype)
    y = layer(x)
    assert y.dtype == dtype
    # A non-centering layer maps a constant c to about c / sqrt(eps) (EvoNorm), which
    # may exceed the float16 range; only then is inf the correctly rounded answer.
    if exact.abs().max() < torch.finfo(dtype).max / 2:
        assert torch.isfinite(y).all()
    if constant is not None and name in CENTERING:
        assert y.float().abs().max() < 0.1  # a constant carries no signal after centering
    layer.eval()
    assert torch.isfinite(layer(x).float()).all() or name.startswith("evonorm")


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("name", ["bn", "ln", "in", "gn", "bgn", "pn", "rms", "vn", "frn",
                                  "evonorm_s0"])
@pytest.mark.parametrize("backend_kw", [{}, {"backend": "framework"}])
def test_half_precision_inputs_are_normalized_with_float32_statistics(name, dtype, backend_kw):
    # Values near 300: their squares overflow float16 (max 65504), so float16
    # statistics would give inf variance and an output of 0.
    torch.manual_seed(0)
    x = (torch.randn(4, 8, 5, 5) * 20 + 300).to(dtype)
    kw = backend_kw if name in ("bn", "ln", "in", "gn", "rms") else {}
    low, full = normlib.create_norm(name, 8, **kw).to(dtype), normlib.create_norm(name, 8, **kw)
    expected = full(x.float())
    y = low(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), expected, atol=RESOLUTION[dtype] * 4,
                               rtol=RESOLUTION[dtype])
    assert expected.abs().amax() > 1.0  # the check above is not vacuous


# --------------------------------------------------------------------------- errors

ERROR_LAYERS = ["bn", "ln", "in", "gn", "bgn", "pn", "rms", "vn", "frn", "evonorm_b0",
                "evonorm_s0", "lrn", "local_contrast", "divisive", "local_context", "population"]


@pytest.mark.parametrize("name", ERROR_LAYERS)
def test_wrong_rank_raises_value_error_naming_the_shape(name):
    with pytest.raises(ValueError, match=r"shape \(N, C, \*\).*got shape \(8,\)"):
        normlib.create_norm(name, 8)(torch.randn(8))


@pytest.mark.parametrize("name", ERROR_LAYERS)
def test_channel_mismatch_raises_value_error_naming_num_features(name):
    with pytest.raises(ValueError, match=r"has 6 channels.*num_features=8"):
        normlib.create_norm(name, 8)(torch.randn(4, 6, 3, 3))


@pytest.mark.parametrize("name", ERROR_LAYERS)
def test_integer_input_raises_type_error(name):
    with pytest.raises(TypeError, match=r"floating-point tensor, got dtype torch.int64"):
        normlib.create_norm(name, 8)(torch.ones(4, 8, 3, 3, dtype=torch.long))


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


@pytest.mark.parametrize("name", ["bn", "bgn", "vn", "evonorm_b0"])
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


@pytest.mark.parametrize("num_features", [0, -3, 2.5, True])
def test_bad_num_features_raises_value_error(num_features):
    with pytest.raises(ValueError, match="num_features must be a positive int"):
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
