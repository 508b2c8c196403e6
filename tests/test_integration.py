"""normlib inside other people's models: torchvision's and timm's ResNets and ViTs.

Every registered activation normalizer is built through ``norm_factory`` as the models'
``norm_layer`` and through ``convert`` from their own normalizers, and trains a step (forward
and backward). The per-position LayerNorm and RMSNorm equal timm's; normlib's BatchNorm passes
the tools written for torch's (timm's ``freeze_batch_norm_2d``, ``fuse_modules``,
``convert_sync_batchnorm``); torchvision's FX feature extractor works on a model holding
normlib's layers (each layer's own tracing and export: test_registry.py). Sizes are tiny:
these are wiring tests, the numerics are tested per layer in test_layers.py.
"""

from __future__ import annotations

import pytest
import torch
from peers import timm  # imports torchvision too, on this CPU torch
from torch import nn

import normlib
from normlib.conversion import find_norms, fuser_method_mapping
from normlib.layers import BatchNorm, LayerNorm2d, RMSNorm2d
from normlib.registry import available_norms, is_weight_norm, norm_factory

ACTIVATION_NORMS = [n for n in available_norms() if not is_weight_norm(n) and n != "none"]
WEIGHT_NORMS = [n for n in available_norms() if is_weight_norm(n)]


pytestmark = pytest.mark.usefixtures("one_thread")


def _train_step(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One forward and backward in training mode; every parameter that took part has a finite gradient."""
    model.train()
    out = model(x)
    out.square().mean().backward()
    assert torch.isfinite(out).all()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    return out


def _tv_resnet(**kw) -> nn.Module:
    # torchvision's own ResNet class, one BasicBlock per stage (resnet18 has two).
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=5, **kw)


def _timm_resnet(**kw) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=5, layers=(1, 1, 1, 1),
                             channels=(16, 32, 32, 32), stem_width=16, **kw)


def _timm_vit(**kw) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=16,
                             patch_size=4, depth=1, embed_dim=32, num_heads=2, **kw)


def _normlib_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__module__.startswith("normlib.")]


# ----------------------------------------------------------------------------- LN2d, RMS2d


@pytest.mark.parametrize("backend", ["auto", "framework"])
def test_layer_norm_2d_equals_timms_and_positional_norm(backend):
    torch.manual_seed(0)
    ours = LayerNorm2d(6, eps=1e-6, backend=backend).double()
    theirs = timm.layers.LayerNorm2d(6, eps=1e-6).double()
    with torch.no_grad():
        for p in (ours.weight, ours.bias):
            p.normal_()
        theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 6, 4, 5, dtype=torch.float64, requires_grad=True)
    for mode in (True, False):
        ours.train(mode)
        theirs.train(mode)
        torch.testing.assert_close(ours(x), theirs(x))
    g_ours = torch.autograd.grad(ours(x).sin().sum(), (x, ours.weight, ours.bias))
    g_theirs = torch.autograd.grad(theirs(x).sin().sum(), (x, theirs.weight, theirs.bias))
    torch.testing.assert_close(g_ours, g_theirs)
    pn = normlib.create_norm("pn", 6, eps=1e-6).double()
    pn.load_state_dict(ours.state_dict())
    torch.testing.assert_close(pn(x), ours(x))
    assert torch.autograd.gradcheck(ours, (x[:2, :, :2, :2].detach().requires_grad_(),))


@pytest.mark.parametrize("backend", ["auto", "framework"])
def test_rms_norm_2d_equals_timms(backend):
    torch.manual_seed(0)
    ours = RMSNorm2d(6, eps=1e-6, backend=backend).double()
    theirs = timm.layers.RmsNorm2d(6, eps=1e-6).double()
    with torch.no_grad():
        ours.weight.normal_()
        theirs.weight.copy_(ours.weight)
    x = torch.randn(3, 6, 4, 5, dtype=torch.float64, requires_grad=True)
    for mode in (True, False):
        ours.train(mode)
        theirs.train(mode)
        torch.testing.assert_close(ours(x), theirs(x))
    g_ours = torch.autograd.grad(ours(x).sin().sum(), (x, ours.weight))
    g_theirs = torch.autograd.grad(theirs(x).sin().sum(), (x, theirs.weight))
    torch.testing.assert_close(g_ours, g_theirs)
    assert torch.autograd.gradcheck(ours, (x[:2, :, :2, :2].detach().requires_grad_(),))


def test_per_position_norms_take_feature_maps_of_any_rank_and_half_precision():
    for shape in [(4, 6), (4, 6, 7), (2, 6, 3, 3, 3)]:
        x = torch.randn(shape, dtype=torch.float64)
        ref = nn.functional.layer_norm(x.movedim(1, -1), (6,)).movedim(-1, 1)
        torch.testing.assert_close(LayerNorm2d(6).double()(x), ref)
    y = RMSNorm2d(6)(torch.randn(2, 6, 3, 3).bfloat16())
    assert y.dtype == torch.bfloat16


# ----------------------------------------------------------------------------- BN as torch's


def _trained_bn(c: int = 4) -> BatchNorm:
    torch.manual_seed(0)
    bn = BatchNorm(c)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    for _ in range(3):
        bn(torch.randn(8, c, 3, 3) * 2 + 1)
    return bn.eval()


def test_normlib_batch_norm_is_frozen_by_timms_freeze_batch_norm_2d():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _trained_bn()).eval()
    x = torch.randn(2, 3, 6, 6)
    before = model(x)
    frozen = timm.layers.freeze_batch_norm_2d(model)
    assert type(frozen[1]).__name__ == "FrozenBatchNorm2d"
    torch.testing.assert_close(frozen(x), before)


def test_normlib_batch_norm_fuses_into_the_convolution_with_fuse_modules():
    from torch.ao.quantization import fuse_modules

    model = nn.Sequential(nn.Conv2d(3, 4, 3), _trained_bn(), nn.ReLU()).eval()
    x = torch.randn(2, 3, 6, 6)
    before = model(x)
    config = {"additional_fuser_method_mapping": fuser_method_mapping()}
    fused = fuse_modules(model, [["0", "1", "2"]], fuse_custom_config_dict=config)
    assert isinstance(fused[1], nn.Identity) and isinstance(fused[2], nn.Identity)
    torch.testing.assert_close(fused(x), before)
    # or revert to torch's type first, after convert: fuse_modules then needs nothing more
    model2 = normlib.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval(), "bn")
    fused2 = fuse_modules(normlib.revert(model2), [["0", "1"]])
    assert isinstance(fused2[1], nn.Identity)


def test_convert_sync_batchnorm_converts_normlib_batch_norm_with_its_state():
    bn = _trained_bn()
    model = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(bn))
    sync = model[0]
    assert isinstance(sync, nn.SyncBatchNorm)
    for key, value in bn.state_dict().items():
        torch.testing.assert_close(sync.state_dict()[key], value)


def test_a_torch_batch_norm_checkpoint_loads_into_normlib_and_back():
    theirs = nn.BatchNorm2d(4)
    theirs(torch.randn(8, 4, 3, 3))
    ours = BatchNorm(4)
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x))


# ----------------------------------------------------------------------------- FX


def test_torchvision_feature_extractor_works_on_a_model_with_normlib_layers():
    from torchvision.models.feature_extraction import create_feature_extractor

    model = _tv_resnet(norm_layer=norm_factory("gn", num_groups=8)).eval()
    x = torch.randn(2, 3, 16, 16)
    features = create_feature_extractor(model, {"layer2": "mid", "fc": "out"})(x)
    assert features["mid"].shape == (2, 128, 2, 2)
    torch.testing.assert_close(features["out"], model(x))


def test_timm_fx_feature_extraction_works_on_models_with_normlib_layers():
    from timm.models._features_fx import create_feature_extractor

    torch.manual_seed(0)
    resnet = timm.create_model("resnet18", pretrained=False, features_only=True, feature_cls="fx",
                               layers=(1, 1, 1, 1), channels=(16, 32, 32, 32), stem_width=16,
                               norm_layer=norm_factory("gn", num_groups=4))
    assert type(resnet).__name__ == "FeatureGraphNet"
    assert [f.shape[1] for f in resnet(torch.randn(2, 3, 32, 32))][1:] == [16, 32, 32, 32]
    vit = _timm_vit(norm_layer=norm_factory("bn", channel_dim=-1)).eval()
    x = torch.randn(2, 3, 16, 16)
    features = create_feature_extractor(vit, ["blocks.0", "head"])(x)
    assert features["blocks.0"].shape == (2, 17, 32)
    torch.testing.assert_close(features["head"], vit(x))


# ----------------------------------------------------------------------------- whole models


# Whitening estimates a covariance of G rows from the values of a batch (batch whitening: N * H
# * W of them; group and instance whitening: those of one sample): at 1 x 1 maps and 4 samples
# the groups must be small, and switchable whitening (which includes instance whitening) needs
# maps larger than 1 x 1.
SMALL_GROUPS = {"zca": {"group_size": 2}, "pca": {"group_size": 2}, "cholesky": {"group_size": 2},
                "iternorm": {"group_size": 2}, "switchable_whitening": {"group_size": 2},
                "gw": {"num_groups": 2}}
# torchvision's ResNet initializes every BatchNorm2d's weight and bias, so it cannot hold a
# BatchNorm2d without them (torch's own BatchNorm2d(affine=False) fails the same way); the
# attentive norm's inner normalizer is such a layer, so there it is a GroupNorm.
TV_KWARGS = {**SMALL_GROUPS, "attentive": {"norm": "gn"}}


def _image(name: str) -> torch.Tensor:
    size = 64 if name == "switchable_whitening" else 16
    return torch.randn(4, 3, size, size)


@pytest.mark.parametrize("name", ACTIVATION_NORMS)
def test_every_normalizer_trains_in_torchvision_and_timm_resnets_as_norm_layer(name):
    x = _image(name)
    for model in (_tv_resnet(norm_layer=norm_factory(name, **TV_KWARGS.get(name, {}))),
                  _timm_resnet(norm_layer=norm_factory(name, **SMALL_GROUPS.get(name, {})))):
        assert _normlib_layers(model)
        assert _train_step(model, x).shape == (4, 5)


@pytest.mark.parametrize("name", ACTIVATION_NORMS)
def test_every_normalizer_trains_in_a_timm_vit_as_norm_layer_on_tokens(name):
    model = _timm_vit(norm_layer=norm_factory(name, channel_dim=-1))
    assert _normlib_layers(model)
    assert _train_step(model, torch.randn(4, 3, 16, 16)).shape == (4, 5)


@pytest.mark.parametrize("name", ACTIVATION_NORMS)
def test_convert_puts_every_normalizer_into_torchvision_and_timm_models_and_revert_undoes_it(name):
    for model, x in ((_tv_resnet(), _image(name)), (_timm_vit(), torch.randn(4, 3, 16, 16))):
        originals = {k: type(m) for k, m in find_norms(model).items()}
        assert originals
        normlib.convert(model, name, **TV_KWARGS.get(name, {}))
        assert not any(type(m) is t for m, t in zip(
            (model.get_submodule(k) for k in originals), originals.values())) or name in ("ln",)
        _train_step(model, x)
        normlib.revert(model)
        assert {k: type(model.get_submodule(k)) for k in originals} == originals


@pytest.mark.parametrize("name", ACTIVATION_NORMS)
def test_convert_finds_and_replaces_every_normlib_layer_and_revert_brings_it_back(name):
    layer = norm_factory(name)(8)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), layer, nn.ReLU())
    assert find_norms(model) == {"1": layer}
    normlib.convert(model, "gn", num_groups=2)
    assert isinstance(model[1], normlib.layers.GroupNorm) and model[1] is not layer
    assert normlib.revert(model)[1] is layer


def test_convert_to_the_same_normalizer_keeps_the_function_and_the_statistics():
    model = _tv_resnet()
    for _ in range(2):
        model.train()(torch.randn(4, 3, 16, 16))
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    before = model(x)
    normlib.convert(model, "bn")
    assert all(isinstance(m, BatchNorm) for m in find_norms(model).values())
    assert not model.training and not model.bn1.training
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    vit = _timm_vit().eval()
    before = vit(x)
    normlib.convert(vit, "ln")
    torch.testing.assert_close(vit(x), before)
    assert vit.blocks[0].norm1.eps == 1e-6  # timm's ViT LayerNorm eps is kept


def test_convert_to_a_torch_class_keeps_the_settings_and_statistics_of_the_same_normalizer():
    model = normlib.convert(_tv_resnet(), "bn", momentum=0.3, eps=1e-3)
    model.train()(torch.randn(4, 3, 16, 16))
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    before = model(x)
    normlib.convert(model, nn.BatchNorm2d)
    assert type(model.bn1) is nn.BatchNorm2d and (model.bn1.momentum, model.bn1.eps) == (0.3, 1e-3)
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_convert_keeps_the_affine_parameters_device_dtype_and_filters_by_name_and_type():
    model = _tv_resnet().double()
    with torch.no_grad():
        model.layer1[0].bn1.weight.fill_(2.0)
    normlib.convert(model, "gn", include="layer1.*", num_groups=4)
    gn = model.layer1[0].bn1
    assert isinstance(gn, normlib.layers.GroupNorm) and gn.num_groups == 4
    assert gn.weight.dtype == torch.float64 and torch.all(gn.weight == 2.0)
    assert isinstance(model.bn1, nn.BatchNorm2d) and not isinstance(model.bn1, BatchNorm)
    normlib.convert(model, "frn", exclude=["layer1.*", "layer2.*"])
    assert isinstance(model.layer3[0].bn1, normlib.layers.FilterResponseNorm)
    assert isinstance(model.layer2[0].bn1, nn.BatchNorm2d)
    normlib.convert(model, "in", include=nn.BatchNorm2d)
    assert isinstance(model.layer2[0].bn1, normlib.layers.InstanceNorm)
    normlib.convert(model, "pn", include=lambda name, m: name == "bn1")
    assert isinstance(model.bn1, normlib.layers.PositionalNorm)
    with pytest.raises(TypeError, match="include"):
        normlib.convert(model, "bn", include=3)
    # revert goes back to the very first modules, not to the intermediate ones
    normlib.revert(model)
    assert all(type(m) is nn.BatchNorm2d for m in find_norms(model).values())
    assert torch.all(model.layer1[0].bn1.weight == 2.0)


def test_convert_a_local_response_norm_reads_its_channels_from_an_example_input():
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.LocalResponseNorm(3), nn.ReLU()).double()
    with pytest.raises(ValueError, match="example_input"):
        normlib.convert(model, "bn")
    normlib.convert(model, "bn", example_input=torch.randn(2, 3, 6, 6, dtype=torch.float64))
    assert model[1].num_features == 6
    assert model[1].weight.dtype == torch.float64  # the model's dtype: LRN has no tensors


def test_convert_none_drops_the_normalizers_and_convert_weights_normalizes_the_weights():
    x = torch.randn(4, 3, 16, 16)
    model = normlib.convert(_tv_resnet(), "none")
    assert not find_norms(model)
    model = normlib.convert_weights(model, "ws", exclude="fc")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(hasattr(m, "parametrizations") for m in convs)
    assert not hasattr(model.fc, "parametrizations")
    w = convs[0].weight
    torch.testing.assert_close(w.mean(dim=(1, 2, 3)), torch.zeros(w.shape[0]), atol=1e-6, rtol=0)
    _train_step(model, x)
    model.eval()
    before = model(x)
    normlib.remove_weight_norms(model)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    torch.testing.assert_close(model(x), before)


@pytest.mark.parametrize("name", WEIGHT_NORMS)
def test_every_weight_normalizer_converts_a_timm_resnet_and_is_removed_exactly(name):
    model = normlib.convert_weights(_timm_resnet(), name, types=nn.Conv2d)
    x = torch.randn(2, 3, 16, 16)
    _train_step(model, x)
    model.eval()
    before = model(x)
    normlib.remove_weight_norms(model)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    torch.testing.assert_close(model(x), before)
