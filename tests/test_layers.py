"""normlib.layers against torch's own layers (oracles) and independent reference formulas.

Tolerances: float64 comparisons use ``atol=rtol=1e-10`` (only summation order
differs); float32 comparisons use ``atol=1e-5, rtol=1e-4`` (a few ulps of the
reductions over at most ~10^3 elements, amplified by 1/sigma).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import normlib
from normlib import layers as L


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """These problems are tiny: on a busy 2-core machine torch's thread pool costs more
    (tens of ms per kernel waiting for a second core) than the arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TOL = {torch.float64: {"atol": 1e-10, "rtol": 1e-10}, torch.float32: {"atol": 1e-5, "rtol": 1e-4}}
BACKENDS = ("auto", "framework")


def randomize_parameters(*modules: nn.Module, seed: int = 0) -> None:
    """Give the modules the same non-trivial parameters by position (ones/zeros would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    for m in modules:
        for p in m.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
        g.manual_seed(seed)


def paired_parameters(ours: nn.Module, oracle: nn.Module) -> list[tuple[str, nn.Parameter,
                                                                        nn.Parameter]]:
    """``(name, ours_param, oracle_param)``: paired by name where both modules use the name,
    the rest by position (an oracle may call its gain differently)."""
    a, b = dict(ours.named_parameters()), dict(oracle.named_parameters())
    common = [n for n in a if n in b]
    rest_a, rest_b = [n for n in a if n not in b], [n for n in b if n not in a]
    assert len(rest_a) == len(rest_b), f"parameters differ: {sorted(a)} vs {sorted(b)}"
    pairs = [(n, a[n], b[n]) for n in common]
    pairs += [(f"{na}~{nb}", a[na], b[nb]) for na, nb in zip(rest_a, rest_b, strict=True)]
    for name, pa, pb in pairs:
        assert pa.shape == pb.shape, f"{name}: {tuple(pa.shape)} vs {tuple(pb.shape)}"
    return pairs


def _randomize_pairs(pairs, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, pa, pb in pairs:
            value = torch.randn(pa.shape, generator=g, dtype=torch.float64)
            pa.copy_(value.to(pa.dtype))
            pb.copy_(value.to(pb.dtype))


def _assert_same_step(ours, oracle, pairs, x, g, tol) -> None:
    """Outputs, input gradients and parameter gradients of one forward/backward agree."""
    for _, pa, pb in pairs:
        pa.grad = pb.grad = None
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), oracle(xb)
    mode = "train" if ours.training else "eval"
    torch.testing.assert_close(ya, yb, **tol, msg=lambda m: f"{mode} output: {m}")
    grad_out = torch.randn(ya.shape, generator=g, dtype=torch.float64).to(ya.dtype)
    ya.backward(grad_out)
    yb.backward(grad_out)
    torch.testing.assert_close(xa.grad, xb.grad, **tol, msg=lambda m: f"{mode} input grad: {m}")
    for name, pa, pb in pairs:
        assert (pa.grad is None) == (pb.grad is None), f"{mode} grad of {name}"
        if pa.grad is not None:
            torch.testing.assert_close(pa.grad, pb.grad, **tol,
                                       msg=lambda m, name=name: f"{mode} grad of {name}: {m}")


def assert_same_layer(ours: nn.Module, oracle: nn.Module, shape, dtype, *, steps: int = 3,
                      buffers=("running_mean", "running_var"), seed: int = 0) -> None:
    """Train ``steps`` batches then evaluate one: in both modes outputs, input gradients and
    parameter gradients (paired by name) agree, and after each training step the buffers."""
    ours, oracle = ours.to(dtype), oracle.to(dtype)
    pairs = paired_parameters(ours, oracle)
    _randomize_pairs(pairs, seed)
    tol = TOL[dtype]
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype)
        _assert_same_step(ours, oracle, pairs, x, g, tol)
        for name in buffers:
            a, b = getattr(ours, name, None), getattr(oracle, name, None)
            assert (a is None) == (b is None), name
            if a is not None:
                torch.testing.assert_close(a, b, **tol, msg=name)
    ours.eval()
    oracle.eval()
    x = (torch.randn(shape, generator=g, dtype=torch.float64) + 1).to(dtype)
    _assert_same_step(ours, oracle, pairs, x, g, tol)


DTYPES = (torch.float32, torch.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "shape, oracle_cls",
    [((8, 5), nn.BatchNorm1d), ((6, 5, 7), nn.BatchNorm1d), ((4, 5, 3, 6), nn.BatchNorm2d),
     ((3, 5, 2, 3, 4), nn.BatchNorm3d)],
)
def test_batch_norm_equals_torch_batch_norm(shape, oracle_cls, backend, dtype):
    assert_same_layer(L.BatchNorm(5, momentum=0.3, backend=backend), oracle_cls(5, momentum=0.3),
                      shape, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_cumulative_average_equals_torch_when_momentum_is_none(backend):
    ours, oracle = L.BatchNorm(4, momentum=None, backend=backend), nn.BatchNorm2d(4, momentum=None)
    assert_same_layer(ours, oracle, (5, 4, 3, 3), torch.float64, steps=4)
    assert ours.num_batches_tracked.item() == oracle.num_batches_tracked.item() == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_without_running_stats_uses_batch_stats_in_eval_like_torch(backend):
    assert_same_layer(L.BatchNorm(4, track_running_stats=False, backend=backend),
                      nn.BatchNorm2d(4, track_running_stats=False), (5, 4, 3, 3), torch.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_norm_cnn_form_equals_torch_group_norm_with_one_group(backend, dtype):
    assert_same_layer(L.LayerNorm(6, backend=backend), nn.GroupNorm(1, 6), (4, 6, 3, 5), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_norm_on_vectors_equals_torch_layer_norm(backend, dtype):
    assert_same_layer(L.LayerNorm(6, backend=backend), nn.LayerNorm(6), (7, 6), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalized_shape, shape", [((8,), (3, 5, 8)), ((4, 5), (2, 3, 4, 5))])
def test_layer_norm_transformer_form_equals_torch_layer_norm(normalized_shape, shape, backend,
                                                             dtype):
    assert_same_layer(L.LayerNorm(normalized_shape, backend=backend),
                      nn.LayerNorm(normalized_shape), shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(4, 6, 5, 5), (3, 6, 7)])
def test_instance_norm_equals_torch_instance_norm(shape, backend, dtype):
    oracle = (nn.InstanceNorm2d if len(shape) == 4 else nn.InstanceNorm1d)(6, affine=True)
    assert_same_layer(L.InstanceNorm(6, backend=backend), oracle, shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_instance_norm_running_stats_equal_torch(backend, dtype):
    assert_same_layer(L.InstanceNorm(6, track_running_stats=True, momentum=0.2, backend=backend),
                      nn.InstanceNorm2d(6, affine=True, track_running_stats=True, momentum=0.2),
                      (4, 6, 5, 5), dtype)


# On (N, C) inputs with 12 groups each group holds one element; torch's float32
# kernel then returns bias + O(1e-4) rounding noise, so that case is checked
# against the exact answer in the next test instead.
GROUP_CASES = [(g, s) for g in (1, 3, 12) for s in ((4, 12, 3, 3), (5, 12), (2, 12, 2, 3, 2))
               if (g, s) != (12, (5, 12))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("groups, shape", GROUP_CASES)
def test_group_norm_equals_torch_group_norm(groups, shape, backend, dtype):
    assert_same_layer(L.GroupNorm(12, num_groups=groups, backend=backend),
                      nn.GroupNorm(groups, 12), shape, dtype)


def test_group_norm_with_one_element_per_group_outputs_the_bias():
    x = torch.randn(5, 12) * 2 + 0.5
    exact = L.GroupNorm(12, num_groups=12, backend="framework")
    randomize_parameters(exact)
    assert torch.equal(exact(x), exact.bias.detach().expand(5, 12))
    # torch's kernel (the default path) leaves rounding noise of order 1e-7 / sqrt(eps).
    dispatched = L.GroupNorm(12, num_groups=12)
    randomize_parameters(dispatched)
    torch.testing.assert_close(dispatched(x), dispatched.bias.detach().expand(5, 12),
                               atol=1e-3, rtol=0)


def test_group_norm_by_group_size_equals_torch_group_norm_with_matching_groups():
    assert_same_layer(L.GroupNorm(12, group_size=4), nn.GroupNorm(3, 12), (3, 12, 4, 4),
                      torch.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalized_shape, shape", [((8,), (3, 8)), ((8,), (2, 5, 8))])
def test_rms_norm_equals_torch_rms_norm(normalized_shape, shape, backend, dtype):
    assert_same_layer(L.RMSNorm(normalized_shape, backend=backend),
                      nn.RMSNorm(normalized_shape), shape, dtype)  # both default eps: finfo(dtype).eps


@pytest.mark.parametrize("backend", BACKENDS)
def test_rms_norm_int_form_on_vectors_equals_torch_rms_norm(backend):
    assert_same_layer(L.RMSNorm(8, backend=backend), nn.RMSNorm(8), (5, 8),
                      torch.float64)


class _TorchRMSOverChannelsAndSpace(nn.Module):
    """Oracle for the CNN form: torch's RMSNorm over (C, H, W) without gain, then a channel gain."""

    def __init__(self, shape):
        super().__init__()
        self.inner = nn.RMSNorm(shape, elementwise_affine=False)
        self.weight = nn.Parameter(torch.ones(shape[0]))

    def forward(self, x):
        return self.inner(x) * self.weight.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_rms_norm_cnn_form_equals_torch_rms_norm_over_channels_and_space(backend, dtype):
    assert_same_layer(L.RMSNorm(4, backend=backend), _TorchRMSOverChannelsAndSpace((4, 3, 5)),
                      (3, 4, 3, 5), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_local_response_norm_equals_torch_local_response_norm(size, dtype):
    assert_same_layer(L.LocalResponseNorm(6, size=size, alpha=0.3, beta=0.6, k=1.5),
                      nn.LocalResponseNorm(size, alpha=0.3, beta=0.6, k=1.5), (3, 6, 4, 4), dtype)


# --------------------------------------------------------------------------- registry


CORE_NAMES = ("bn", "ln", "in", "gn", "bgn", "pn", "rms", "vn", "frn", "evonorm_b0", "evonorm_s0")


def test_registry_has_every_core_name_and_the_aliases():
    names = normlib.available_norms()
    for name in CORE_NAMES + ("lrn", "local_contrast", "divisive", "local_context", "population"):
        assert name in names
    for alias, cls in [("batchnorm", L.BatchNorm), ("layernorm", L.LayerNorm),
                       ("instancenorm", L.InstanceNorm), ("groupnorm", L.GroupNorm)]:
        assert isinstance(normlib.create_norm(alias, 8), cls)


@pytest.mark.parametrize("name", CORE_NAMES + ("lrn", "local_contrast", "divisive",
                                               "local_context", "population"))
@pytest.mark.parametrize("shape", [(4, 8), (4, 8, 5), (4, 8, 5, 5)])
def test_every_registered_layer_accepts_vectors_and_feature_maps(name, shape):
    layer = normlib.create_norm(name, 8)
    y = layer(torch.randn(shape))
    assert y.shape == shape and torch.isfinite(y).all()
    layer.eval()
    assert torch.isfinite(layer(torch.randn(shape))).all()


def test_group_norm_factory_takes_groups_or_group_size_and_defaults_to_32_capped():
    assert normlib.create_norm("gn", 64).num_groups == 32
    assert normlib.create_norm("gn", 16).num_groups == 16
    assert normlib.create_norm("gn", 48).num_groups == 24
    assert normlib.create_norm("gn", 64, num_groups=4).num_groups == 4
    assert normlib.create_norm("gn", 64, group_size=4).num_groups == 16


def test_layers_have_torch_style_repr_reset_and_factory_arguments():
    bn = L.BatchNorm(3, device="cpu", dtype=torch.float64)
    assert bn.weight.dtype == torch.float64 and bn.running_var.dtype == torch.float64
    assert "3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True" in repr(bn)
    bn(torch.randn(4, 3, dtype=torch.float64) * 5)
    with torch.no_grad():
        bn.weight.fill_(3.0)
    bn.reset_parameters()
    assert torch.equal(bn.weight, torch.ones(3, dtype=torch.float64))
    assert torch.equal(bn.running_var, torch.ones(3, dtype=torch.float64))
    assert bn.num_batches_tracked.item() == 0


def test_state_dict_round_trip_preserves_running_statistics():
    bn = L.BatchNorm(3)
    bn(torch.randn(10, 3) * 4 + 2)
    clone = L.BatchNorm(3)
    clone.load_state_dict(copy.deepcopy(bn.state_dict()))
    assert torch.equal(clone.running_mean, bn.running_mean)
    assert set(bn.state_dict()) == set(nn.BatchNorm1d(3).state_dict())


# --------------------------------------------------------------------------- the oracle helper


class _BiasFirstBatchNorm(nn.Module):
    """torch's BatchNorm2d with its parameters registered in the other order (bias, weight)."""

    def __init__(self, c):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(c))
        self.weight = nn.Parameter(torch.ones(c))
        self.inner = nn.BatchNorm2d(c, affine=False)

    def forward(self, x):
        return self.inner(x) * self.weight.reshape(1, -1, 1, 1) + self.bias.reshape(1, -1, 1, 1)


def test_assert_same_layer_pairs_parameters_by_name_not_position():
    oracle = _BiasFirstBatchNorm(4)
    names = [n for n, _, _ in paired_parameters(L.BatchNorm(4), oracle)]
    assert names == ["weight", "bias"]
    assert_same_layer(L.BatchNorm(4), oracle, (5, 4, 3, 3), torch.float64,
                      buffers=())


class _DetachedInEval(nn.Module):
    """Same outputs as BatchNorm in both modes, but no gradient to the input in evaluation."""

    def __init__(self, c):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return self.bn(x if self.training else x.detach())


def test_assert_same_layer_catches_a_gradient_that_is_wrong_only_in_evaluation():
    ours = L.BatchNorm(4)
    oracle = _DetachedInEval(4)
    with pytest.raises(AssertionError, match="eval input grad"):
        assert_same_layer(ours, oracle, (5, 4, 3, 3), torch.float64, buffers=())


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("train", [True, False])
def test_single_value_groups_give_the_bias_on_both_paths_for_any_batch_size(batch, train):
    # Each statistic of (N, C) vectors with one channel per group has a single value: the
    # standardized value is 0 and the output the bias, on torch's kernel and the framework alike.
    x = torch.randn(batch, 4)
    for make in (lambda b: L.InstanceNorm(4, backend=b), lambda b: L.GroupNorm(4, num_groups=4, backend=b)):
        outs = []
        for backend in ("auto", "framework"):
            layer = make(backend).train(train)
            with torch.no_grad():
                layer.bias.copy_(torch.arange(4.0))
            outs.append(layer(x))
        # torch's kernel rounds the mean of one value (errors ~1e-5 after dividing by sqrt(eps)).
        torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=0)
        torch.testing.assert_close(outs[1], torch.arange(4.0).expand(batch, 4), atol=0, rtol=0)
