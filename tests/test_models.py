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


# --------------------------------------------------------------- activations, shortcuts, residual MLP

from normlib.models import ACTIVATIONS, ResidualMLP, StandardizedActivation  # noqa: E402
from normlib.weight import normprop_relu  # noqa: E402


def _activation_types(model):
    return {type(m) for m in model.modules() if isinstance(m, (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh))}


@pytest.mark.parametrize("name, kind", [("relu", nn.ReLU), ("gelu", nn.GELU), ("silu", nn.SiLU),
                                        ("tanh", nn.Tanh)])
def test_every_model_uses_the_activation_it_is_given_by_name(name, kind):
    x_img = torch.randn(2, 3, 8, 8)
    models = [MLP(6, 2, width=8, depth=2, activation=name), VGG(3, 2, depth=3, width=4, activation=name),
              resnet20(width=4, activation=name), ResidualMLP(6, 2, width=8, depth=2, activation=name)]
    for model in models:
        assert _activation_types(model) == {kind}, type(model).__name__
    assert models[1](x_img).shape == (2, 2) and models[2](x_img).shape == (2, 10)
    assert models[0](x_img[:, 0, 0, :6]).shape == models[3](x_img[:, 0, 0, :6]).shape == (2, 2)


def test_activation_given_as_a_class_a_module_or_a_function():
    by_class = resnet20(width=4, activation=nn.SiLU)
    assert _activation_types(by_class) == {nn.SiLU}
    shared = nn.LeakyReLU(0.2)
    by_module = VGG(3, 2, depth=3, width=4, activation=shared)
    leaky = [m for m in by_module.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(leaky) == 3 and all(m is not shared and m.negative_slope == 0.2 for m in leaky)
    by_function = MLP(4, 2, width=6, depth=2, activation=torch.tanh)
    x = torch.randn(3, 4)
    h = by_function.layers[0][0](x)
    assert torch.equal(by_function.layers[0](x), torch.tanh(h))


def test_identity_activation_makes_an_unnormalized_mlp_linear():
    torch.manual_seed(0)
    model = MLP(5, 3, width=7, depth=3, activation="identity")
    x, y = torch.randn(4, 5), torch.randn(4, 5)
    assert torch.allclose(model(2 * x - y) - model(torch.zeros(1, 5)),
                          2 * (model(x) - model(torch.zeros(1, 5))) - (model(y) - model(torch.zeros(1, 5))),
                          atol=1e-5)


def test_resnet_block_applies_its_activation_after_the_sum():
    torch.manual_seed(0)
    model = resnet20(width=4, norm="bn", activation="tanh").eval()
    block = model.blocks[0]
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(block(x), torch.tanh(x + block.branch(x)))


@pytest.mark.parametrize("activation", [3, "swishy"])
def test_unknown_activation_raises_naming_the_argument(activation):
    error = TypeError if activation == 3 else ValueError
    with pytest.raises(error, match="activation must be"):
        ResNet(20, width=4, activation=activation)


@pytest.mark.parametrize("kernel", [1, 3])
def test_projection_shortcut_kernel_and_shape(kernel):
    model = resnet20(width=4, shortcut_kernel_size=kernel)
    projections = [b.shortcut[0] for b in model.blocks if isinstance(b.shortcut, nn.Sequential)]
    assert len(projections) == 2  # the first block of stages 2 and 3
    assert all(p.kernel_size == (kernel, kernel) and p.stride == (2, 2) for p in projections)
    x = torch.randn(2, 3, 8, 8)
    assert model(x).shape == (2, 10)
    assert model.blocks[3].shortcut(model.blocks[2](model.stem(x))).shape == (2, 8, 4, 4)


def test_shortcut_kernel_other_than_1_or_3_raises():
    with pytest.raises(ValueError, match="shortcut_kernel_size must be one of"):
        ResNet(20, width=4, shortcut_kernel_size=2)


def test_residual_mlp_is_a_pre_activation_stack_of_blocks():
    torch.manual_seed(0)
    model = ResidualMLP(10, 3, width=12, depth=4, norm="ln", branch_layers=2)
    assert len(model.blocks) == 4 and model(torch.randn(5, 2, 5)).shape == (5, 3)
    block = model.blocks[1]
    units = list(block.branch)
    assert len(units) == 2
    # each unit is norm -> activation -> linear: the stream itself is never normalized
    assert [type(m) for m in units[0]] == [type(units[0][0]), nn.ReLU, nn.Linear]
    assert isinstance(units[0][0], nn.Module) and not isinstance(units[0][0], nn.Identity)
    x = torch.randn(5, 12)
    assert torch.equal(block(x), x + block.branch(x))
    assert all(m.bias is None for m in block.modules() if isinstance(m, nn.Linear))


def test_residual_mlp_skipinit_makes_every_block_the_identity():
    torch.manual_seed(0)
    model = ResidualMLP(6, 2, width=8, depth=3, norm=None, skipinit=True)
    x = torch.randn(4, 8)
    assert all(torch.equal(b(x), x) for b in model.blocks)
    model(torch.randn(4, 6)).sum().backward()
    assert all(b.alpha.grad is not None for b in model.blocks)


def test_residual_mlp_variance_grows_linearly_with_bn_and_exponentially_without():
    torch.manual_seed(0)
    x = torch.randn(512, 64)

    def stream_variances(norm):
        model = ResidualMLP(64, 2, width=256, depth=8, norm=norm, branch_layers=2)
        h, out = model.stem(x), []
        for block in model.blocks:
            h = block(h)
            out.append(float(h.var()))
        return torch.tensor(out)

    with torch.no_grad():
        bn, plain = stream_variances("bn"), stream_variances(None)
    # BN: each branch ends in Linear(relu(bn(.))) with He init, so it adds about one
    # unit of variance per block: linear growth
    steps = bn.diff()
    assert float(steps.min()) > 0.5 and float(steps.max()) < 1.5, bn
    # no normalization: each branch multiplies the variance by about (1 + 1): doubling
    ratios = plain[1:] / plain[:-1]
    assert float(ratios.min()) > 1.6 and float(ratios.max()) < 2.5, plain


# ------------------------------------------------------------------ the two weight-normalized networks


def _filter_norms(model):
    return torch.cat([m.weight.detach().flatten(1).norm(dim=1) for m in model.modules()
                      if isinstance(m, (nn.Conv2d, nn.Linear)) and hasattr(m, "parametrizations")])


def test_lubana_weight_norm_gives_unit_norm_filters_at_init():
    torch.manual_seed(0)
    for model in [resnet20(width=8, norm="wn", weight_norm_style="lubana", shortcut_kernel_size=3),
                  VGG(3, 2, depth=4, width=8, norm="wn", weight_norm_style="lubana"),
                  MLP(6, 2, width=8, depth=3, norm="wn", weight_norm_style="lubana"),
                  ResidualMLP(6, 2, width=8, depth=3, norm="wn", weight_norm_style="lubana")]:
        norms = _filter_norms(model)
        assert len(norms) > 0 and torch.allclose(norms, torch.ones_like(norms), atol=1e-6), norms
        convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert all(m.bias is not None for m in convs)  # the weight-normalized layers keep a bias
    torch_style = _filter_norms(resnet20(width=8, norm="wn"))
    # He initialization: rows of norm about sqrt(2), not 1
    assert abs(float(torch_style.mean()) - math.sqrt(2)) < 0.1


def test_lubana_weight_norm_uses_the_normprop_scaled_relu_everywhere():
    model = resnet20(width=4, norm="wn", weight_norm_style="lubana")
    acts = [m for m in model.modules() if isinstance(m, StandardizedActivation)]
    assert len(acts) == 1 + 2 * 9  # stem, then two per block
    assert not any(isinstance(m, nn.ReLU) and m not in [a.act for a in acts] for m in model.modules())
    x = torch.randn(1000)
    # the module, NormProp's ReLU and Lubana et al.'s sqrt(2 pi / (pi - 1)) (relu(x) - 1/sqrt(2 pi))
    lubana = math.sqrt(2 * math.pi / (math.pi - 1)) * (torch.relu(x) - math.sqrt(1 / (2 * math.pi)))
    assert torch.allclose(acts[0](x), normprop_relu(x), rtol=0, atol=1e-6)
    assert torch.allclose(acts[0](x), lubana, rtol=0, atol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "silu"])
def test_standardized_activation_of_a_standard_normal_has_mean_0_and_variance_1(activation):
    torch.manual_seed(0)
    z = torch.randn(2_000_000, dtype=torch.float64)
    y = StandardizedActivation(activation)(z)
    # 2e6 samples: the standard errors of mean and variance are below 1e-3 and 2e-3
    assert abs(float(y.mean())) < 5e-3 and abs(float(y.var()) - 1) < 1e-2, (y.mean(), y.var())
    raw = ACTIVATIONS[activation]()(z)
    assert abs(float(raw.var()) - 1) > 0.1  # the unscaled activation is not standardized


def test_lubana_unit_weight_norm_layer_preserves_the_second_moment():
    # a unit-norm row applied to iid unit-variance inputs gives unit variance; the scaled ReLU
    # then gives mean 0, variance 1 again: one block of Arpit et al.'s NormProp
    torch.manual_seed(0)
    model = MLP(512, 2, width=512, depth=1, norm="wn", weight_norm_style="lubana")
    x = torch.randn(4096, 512)
    with torch.no_grad():
        pre = model.layers[0][0](x)
        post = model.layers[0](x)
    assert abs(float(pre.var()) - 1) < 0.05
    assert abs(float(post.mean())) < 0.05 and abs(float(post.var()) - 1) < 0.1


def test_torch_weight_norm_at_init_is_the_unnormalized_network():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # g = ||v|| computed in float64, not rounded to float32
    try:
        torch.manual_seed(0)
        wn = resnet20(width=4, norm="wn", shortcut_kernel_size=3)
        plain = resnet20(width=4, norm=None, shortcut_kernel_size=3)
        torch.manual_seed(0)
        lubana = resnet20(width=4, norm="wn", weight_norm_style="lubana")
    finally:
        torch.set_default_dtype(previous)
    # give the unnormalized network the directions v (g = ||v|| at init) and the same biases
    wn_layers = [m for m in wn.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    plain_layers = [m for m in plain.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for a, b in zip(wn_layers, plain_layers):
            v = a.parametrizations.weight.original1 if hasattr(a, "parametrizations") else a.weight
            b.weight.copy_(v)
            b.bias.copy_(a.bias)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(wn(x), plain(x), rtol=1e-12, atol=0)  # float64 rounding of g v / ||v||
    # the Lubana network (unit-norm filters, scaled ReLUs) computes something else
    assert not torch.allclose(lubana(x), plain(x), rtol=1e-3)


def test_weight_norm_style_lubana_needs_norm_wn():
    with pytest.raises(ValueError, match="weight_norm_style must be"):
        resnet20(width=4, norm="bn", weight_norm_style="lubana")
    with pytest.raises(ValueError, match="weight_norm_style must be one of"):
        resnet20(width=4, norm="wn", weight_norm_style="salimans")
    # an alias of "wn" is accepted
    assert resnet20(width=4, norm="weight_norm", weight_norm_style="lubana") is not None


@pytest.mark.parametrize("style", ["torch", "lubana"])
def test_norm_kwargs_reach_the_weight_normalizer(style):
    model = VGG(3, 2, depth=3, width=4, norm="wn", norm_kwargs={"eps": 1e-3}, weight_norm_style=style)
    params = [m.parametrizations.weight[0] for m in model.modules() if hasattr(m, "parametrizations")]
    assert len(params) == 3 and all(p.eps == 1e-3 for p in params)
    with pytest.raises((TypeError, ValueError)):
        VGG(3, 2, depth=3, width=4, norm="wn", norm_kwargs={"num_groups": 2}, weight_norm_style=style)
    sws = resnet20(width=4, norm="sws", norm_kwargs={"eps": 1e-3})
    chains = [m.parametrizations.weight[0] for m in sws.modules() if hasattr(m, "parametrizations")]
    assert chains and all(c.eps == 1e-3 for c in chains)


@pytest.mark.parametrize("activation", ["relu", "gelu", torch.tanh])
def test_standardized_activation_gradients_match_finite_differences(activation):
    act = StandardizedActivation(activation)
    x = (torch.randn(12, dtype=torch.float64) + 0.05).requires_grad_()  # away from relu's kink
    assert torch.autograd.gradcheck(act, (x,))
    # its derivative is f' / sigma_f: for ReLU, 1 / sqrt((1 - 1/pi) / 2) where x > 0
    if activation == "relu":
        (grad,) = torch.autograd.grad(act(x).sum(), x)
        expected = (x > 0).double() / math.sqrt(0.5 * (1 - 1 / math.pi))
        assert torch.allclose(grad, expected, rtol=1e-12, atol=0)


def test_residual_mlp_is_probed_at_its_stem_and_blocks():
    from normlib.propagation import probe_points

    model = ResidualMLP(6, 2, width=8, depth=3, norm="gn", norm_kwargs={"num_groups": 2})
    assert [name for name, _ in probe_points(model, "auto")] == ["stem", "blocks.0", "blocks.1", "blocks.2"]
    assert len(probe_points(model, "norms")) == 3 * 2 + 1  # two per branch and the final one
