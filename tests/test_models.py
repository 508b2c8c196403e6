"""normlib.models: shapes, initialization, normalizer plumbing, SkipInit and errors."""

import math

import pytest
import torch
from torch import nn

import normlib
from normlib.models import MLP, VGG, ResNet, resnet20, resnet56
from normlib.registry import _REGISTRY, _WEIGHT, register_weight_norm


@pytest.mark.parametrize("norm", ["bn", "gn", "none", None])
def test_models_produce_logits_for_each_normalizer(norm):
    x_img = torch.randn(4, 3, 16, 16)
    assert MLP(12, 5, width=16, depth=3, norm=norm)(torch.randn(4, 12)).shape == (4, 5)
    assert VGG(3, 5, depth=5, width=8, norm=norm)(x_img).shape == (4, 5)
    assert resnet20(num_classes=5, width=8, norm=norm)(x_img).shape == (4, 5)


def test_layer_counts_follow_depth():
    assert len(MLP(4, 2, width=8, depth=7).layers) == 7
    vgg = VGG(3, 2, depth=10, width=4)
    assert len(vgg.layers) == 10
    convs = [m for m in vgg.modules() if isinstance(m, nn.Conv2d)]
    assert [c.stride[0] for c in convs].count(2) == 2  # two downsamplings for three stages
    assert len(resnet56(width=4).blocks) == 27 and len(resnet20(width=4).blocks) == 9


def test_kaiming_init_gives_fan_in_variance():
    torch.manual_seed(0)
    mlp = MLP(400, 10, width=400, depth=2)
    w = mlp.layers[1][0].weight
    # std of 160,000 Gaussian draws is within 1% of sqrt(2 / fan_in)
    assert abs(float(w.detach().std()) / math.sqrt(2 / 400) - 1) < 0.01
    assert float(mlp.layers[0][0].bias.detach().abs().max()) == 0.0


def test_layers_followed_by_a_normalizer_have_no_bias():
    assert all(m.bias is None for m in VGG(3, 2, depth=3, width=4, norm="bn").modules()
               if isinstance(m, nn.Conv2d))
    assert all(m.bias is not None for m in VGG(3, 2, depth=3, width=4, norm=None).modules()
               if isinstance(m, nn.Conv2d))


def test_norm_kwargs_reach_the_normalizer():
    model = VGG(3, 2, depth=3, width=8, norm="gn", norm_kwargs={"num_groups": 2})
    gns = [m for m in model.modules() if hasattr(m, "num_groups")]
    assert gns and all(m.num_groups == 2 for m in gns)


def test_callable_norm_factory_is_used():
    model = MLP(4, 2, width=6, depth=2, norm=lambda c: nn.LayerNorm(c))
    assert sum(isinstance(m, nn.LayerNorm) for m in model.modules()) == 2


def test_skipinit_zero_makes_each_block_its_shortcut():
    torch.manual_seed(0)
    model = resnet20(width=4, norm="bn", skipinit=True).eval()
    block = model.blocks[0]
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(block(x), torch.relu(x))
    assert all(b.alpha.item() == 0.0 for b in model.blocks)
    assert ResNet(20, width=4, skipinit=0.5).blocks[3].alpha.item() == 0.5


def test_weight_normalizer_is_applied_to_layers_in_place_of_activation_norm():
    name = "test_only_weight_norm"
    if name not in _REGISTRY:
        @register_weight_norm(name)
        def _wn(module):
            return nn.utils.parametrizations.weight_norm(module)
    try:
        model = VGG(3, 2, depth=3, width=4, norm=name)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert all(hasattr(c, "parametrizations") for c in convs)
        assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in model.modules())
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 2)
    finally:
        _REGISTRY.pop(name, None)
        _WEIGHT.pop(name, None)


@pytest.mark.parametrize("kwargs, error", [({"depth": 0}, ValueError), ({"width": -3}, ValueError),
                                           ({"depth": 2.5}, TypeError)])
def test_non_positive_depth_or_width_raises(kwargs, error):
    with pytest.raises(error, match="must be a positive int"):
        VGG(3, 2, **{"depth": 3, "width": 4, **kwargs})
    with pytest.raises(error, match="must be a positive int"):
        MLP(3, 2, **{"depth": 3, "width": 4, **kwargs})


@pytest.mark.parametrize("width, error", [(0, ValueError), (-16, ValueError), (8.0, TypeError)])
def test_resnet_rejects_a_width_that_is_not_a_positive_int(width, error):
    with pytest.raises(error, match="width"):
        ResNet(depth=20, width=width)


def test_resnet_depth_must_be_6n_plus_2():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        ResNet(depth=21)


def test_unknown_normalizer_lists_known_names():
    with pytest.raises(ValueError) as err:
        MLP(3, 2, norm="batchnrom")
    assert "batchnrom" in str(err.value) and "bn" in str(err.value)
    with pytest.raises(ValueError, match="known names"):
        normlib.create_norm("nope", 4)


def test_mlp_rejects_wrong_input_size():
    with pytest.raises(ValueError, match="expected 8 input features"):
        MLP(8, 2, width=4, depth=1)(torch.randn(3, 9))


def test_a_normalizer_that_needs_arguments_still_replaces_the_bias():
    from normlib.registry import register_norm

    name = "test_only_grouped_norm"

    @register_norm(name, override=True)
    def _grouped(num_features, *, groups):  # no default: cannot be built without norm_kwargs
        return nn.GroupNorm(groups, num_features)

    try:
        model = MLP(4, 2, width=8, depth=2, norm=name, norm_kwargs={"groups": 2})
        linears = [m for m in model.layers.modules() if isinstance(m, nn.Linear)]
        assert linears and all(m.bias is None for m in linears)
        assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    finally:
        _REGISTRY.pop(name, None)
