"""The registry as other people's models use it: norm_factory as a norm_layer, shapes, tracing.

``norm_factory`` is what torchvision and timm call (``norm_layer(C, device=..., dtype=...)``;
timm unpacks a ``functools.partial`` into its function and keywords); ``create_norm`` takes the
normalized-shape form of LayerNorm and RMSNorm; weight normalizers refuse an activation slot;
every registered layer traces with ``torch.fx`` as one leaf and exports with ``torch.export``.
The models of timm and torchvision themselves are in test_integration.py.
"""

from __future__ import annotations

import copy
import functools
import pickle

import pytest
import torch
from torch import nn

import normlib
from normlib.registry import ChannelsLast, available_norms, is_weight_norm, norm_factory

ACTIVATION_NORMS = [n for n in available_norms() if not is_weight_norm(n) and n != "none"]
WEIGHT_NORMS = [n for n in available_norms() if is_weight_norm(n)]


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- the factory


@pytest.mark.parametrize("name", ACTIVATION_NORMS)
def test_norm_factory_takes_device_dtype_and_layer_keywords_as_timm_passes_them(name):
    make = norm_factory(name)
    layer = make(16, device="cpu", dtype=torch.float64)
    tensors = list(layer.parameters()) + [b for b in layer.buffers() if b.is_floating_point()]
    assert all(t.dtype == torch.float64 for t in tensors)
    # timm's get_norm_layer unpacks a partial into func and keywords and rebinds them
    assert isinstance(make, functools.partial) and not make.args
    rebound = functools.partial(make.func, **make.keywords)
    assert type(rebound(16)) is type(make(16))
    assert type(pickle.loads(pickle.dumps(make))(16)) is type(layer)
    out = layer(torch.randn(4, 16, 5, 5, dtype=torch.float64))
    assert out.shape == (4, 16, 5, 5) and out.dtype == torch.float64


def test_norm_factory_passes_call_time_keywords_over_its_own():
    layer = norm_factory("bn", eps=1e-3, momentum=0.01)(8, eps=1e-4)
    assert (layer.eps, layer.momentum) == (1e-4, 0.01)
    assert norm_factory("gn", num_groups=4)(8).num_groups == 4
    with pytest.raises(TypeError):
        norm_factory("lrn")(8, eps=1e-3)  # LRN has no eps: said, not swallowed


@pytest.mark.parametrize("name", ["ln", "rms"])
def test_create_norm_accepts_the_normalized_shape_form_of_ln_and_rms(name):
    layer = normlib.create_norm(name, (12,), device="cpu", dtype=torch.float64)
    reference = {"ln": nn.LayerNorm(12, dtype=torch.float64),
                 "rms": nn.RMSNorm(12, dtype=torch.float64)}[name]
    x = torch.randn(3, 7, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x), reference(x))
    with pytest.raises(TypeError, match="num_features must be a positive int"):
        normlib.create_norm("bn", (12,))
    with pytest.raises(TypeError, match="num_features"):
        normlib.create_norm("ln", "12")


@pytest.mark.parametrize("name", WEIGHT_NORMS)
def test_a_weight_normalizer_in_a_norm_layer_slot_raises_and_points_to_convert_weights(name):
    with pytest.raises(ValueError, match="convert_weights"):
        norm_factory(name)
    with pytest.raises(ValueError, match="convert_weights"):
        normlib.convert(nn.Sequential(nn.BatchNorm2d(4)), name)


def test_norm_factory_on_tokens_builds_per_token_ln_and_rms_and_wraps_the_others():
    x = torch.randn(2, 5, 8)
    ln = norm_factory("ln", channel_dim=-1)(8)
    torch.testing.assert_close(ln(x), nn.functional.layer_norm(x, (8,)))
    assert type(norm_factory("ln2d", channel_dim=-1)(8)) is type(ln)
    rms = norm_factory("rms2d", channel_dim=-1)(8)
    torch.testing.assert_close(rms(x), nn.functional.rms_norm(x, (8,), eps=1e-6))
    bn = norm_factory("bn", channel_dim=-1)(8)
    assert isinstance(bn, ChannelsLast)
    # BatchNorm over batch and tokens: the statistics of x viewed as (N * L, C)
    torch.testing.assert_close(bn(x), nn.functional.batch_norm(
        x.reshape(-1, 8), None, None, training=True).reshape(2, 5, 8))
    with pytest.raises(ValueError, match="channel_dim"):
        norm_factory("bn", channel_dim=2)


# ----------------------------------------------------------------------------- FX and export


@pytest.mark.parametrize("name", ACTIVATION_NORMS)
def test_every_layer_traces_with_fx_as_one_leaf_and_exports(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), normlib.create_norm(name, 8), nn.ReLU())
    x = torch.randn(4, 3, 5, 5)
    traced = torch.fx.symbolic_trace(model)
    assert [n.op for n in traced.graph.nodes] == ["placeholder"] + ["call_module"] * 3 + ["output"]
    torch.testing.assert_close(traced(x), model(x))  # train mode: batch statistics
    model.eval()
    torch.testing.assert_close(traced.eval()(x), model(x))
    h = model[0](x)
    exported = torch.export.export(model[1], (h,))
    torch.testing.assert_close(exported.module()(h), model[1](h))
    # training mode too: batch statistics, and running statistics updated as the layer does
    layer, twin = model[1].train(), copy.deepcopy(model[1]).train()
    exported = torch.export.export(copy.deepcopy(layer), (h,)).module()
    torch.testing.assert_close(exported(h), twin(h))
    for key, buffer in twin.state_dict().items():
        if buffer.is_floating_point():
            torch.testing.assert_close(exported.state_dict()[key], buffer, msg=key)
