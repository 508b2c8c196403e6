"""normlib.diagnose: verdicts on known cases, any model's default points, depth-independent rates, the CLI."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from normlib.__main__ import main
from normlib.diagnose import Thresholds, diagnose, diagnose_config, init_metrics, judge, spearman
from normlib.models import VGG, ResNet
from normlib.propagation.probe import probe_points
from normlib.train import TrainConfig, build_model

ROOT = Path(__file__).resolve().parents[1]


def config(**kw) -> TrainConfig:
    base = dict(model="resnet", depth=20, width=8, norm="bn", batch_size=32, dtype="float64")
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("seed", [0, 1])
def test_no_normalization_in_a_deep_resnet_has_exploding_variance(seed):
    d = diagnose_config(config(depth=56, norm="none", seed=seed))
    # The residual stream doubles its variance per block without a normalizer: growth of
    # thousands over the 26 blocks after the first (measured 3e4 to 3e6 on seeds 0-2, 1.21 to
    # 1.32 per weight layer over 54 of them), limit 10 at rate 1.1 per weight layer.
    assert d.verdicts["stable forward"] == "failure"
    assert d.metrics["depth"] == 54  # 2 convolutions per block, 2 projection shortcuts
    assert d.metrics["variance_growth"] > 100
    assert d.metrics["variance_rate"] > Thresholds().explosion_rate
    assert "exploding variance" in d.checks[0].verdict


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_norm_in_the_same_resnet_is_stable_forward(seed):
    d = diagnose_config(config(depth=56, norm="bn", seed=seed))
    # Linear growth: about 5x over 26 blocks, about 1.03 per weight layer (seeds 0-2).
    assert d.verdicts["stable forward"] == "ok"
    assert d.metrics["variance_rate"] < 1.05


@pytest.mark.parametrize("seed", [0, 1])
def test_instance_norm_in_a_20_layer_cnn_has_exploding_early_gradients(seed):
    d = diagnose_config(config(model="vgg", depth=20, norm="in", seed=seed))
    # First-layer weight gradients 13 to 42 times the last layer's over 19 weight layers,
    # 1.14 to 1.22 per weight layer (widths 8 and 16, seeds 0-2); failure above 1.12.
    assert d.verdicts["stable backward"] == "failure"
    assert d.checks[2].verdict.startswith("exploding early gradients")
    assert "weight-gradient" in d.checks[2].metric and "per weight layer" in d.checks[2].metric
    assert d.checks[2].value == d.metrics["gradient_rate"]
    assert d.metrics["gradient_rate"] == pytest.approx(d.metrics["gradient_ratio"] ** (1 / 19))
    bn = diagnose_config(config(model="vgg", depth=20, norm="bn", seed=seed))
    assert bn.metrics["gradient_ratio"] < d.metrics["gradient_ratio"] / 2
    assert bn.verdicts["stable backward"] != "failure"


@pytest.mark.parametrize("seed, norm, kwargs", [(0, "in", {}), (1, "gn", {"group_size": 1})])
def test_batch_norm_resnet56_is_stable_backward_and_instance_norm_is_flagged(seed, norm, kwargs):
    # BatchNorm's first block gets 12 to 19 times the last block's weight gradient, but over
    # 54 weight layers: 1.05 per layer, linear-like growth that trains. Instance
    # Normalization (GroupNorm of group size 1, the same network here) grows 1.09 to 1.11
    # per layer on the digits, 100 to 260 times over the body.
    bn = diagnose_config(config(depth=56, norm="bn", seed=seed))
    assert bn.metrics["gradient_ratio"] > Thresholds().gradient_explosion_ratio  # not the total
    assert bn.metrics["gradient_rate"] < Thresholds().gradient_rate_warning
    assert bn.verdicts["stable backward"] == "ok", bn.checks
    small = diagnose_config(config(depth=56, norm=norm, norm_kwargs=kwargs, seed=seed))
    assert small.verdicts["stable backward"] in ("warning", "failure"), small.checks
    assert small.metrics["gradient_rate"] > bn.metrics["gradient_rate"] + 0.02
    gn = diagnose_config(config(depth=56, norm="gn", norm_kwargs={"group_size": 4}, seed=seed))
    assert gn.verdicts["stable backward"] == "ok", gn.checks


def test_the_gradient_rate_does_not_depend_on_how_densely_the_blocks_are_probed():
    torch.manual_seed(0)
    model = ResNet(depth=56, width=8, norm="bn", in_channels=1).double()
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(1))
    every = diagnose(model, x, y)
    blocks = list(every.layers.loc[~every.layers["stem"].astype(bool), "name"])
    assert blocks == [f"blocks.{i}" for i in range(27)]
    second = diagnose(model, x, y, at=blocks[1::2])  # blocks 1, 3, ..., 25
    assert second.metrics["depth"] == every.metrics["depth"] - 4 == 50
    # The totals differ (fewer layers between the first and last point), the rate not.
    assert second.metrics["gradient_ratio"] < every.metrics["gradient_ratio"] * 0.9
    rates = [every.metrics["gradient_rate"], second.metrics["gradient_rate"]]
    assert max(rates) / min(rates) < 1.01, rates
    assert every.verdicts["stable backward"] == second.verdicts["stable backward"] == "ok"


@pytest.mark.parametrize("seed", [0, 1])
def test_layer_norm_in_a_deep_resnet_makes_samples_similar_and_batch_norm_does_not(seed):
    ln = diagnose_config(config(depth=56, norm="ln", seed=seed))
    bn = diagnose_config(config(depth=56, norm="bn", seed=seed))
    # Measured 0.97-0.99 for LN and 0.65-0.70 for BN on seeds 0-3.
    assert ln.verdicts["informative forward"] == "failure"
    assert bn.verdicts["informative forward"] == "ok"


def test_skipinit_branches_get_no_weight_gradient_so_activation_gradients_are_used():
    d = diagnose_config(config(skipinit=True, norm="bn"))
    assert d.metrics["gradient_of_activations"] == 1.0
    assert d.checks[2].metric.startswith("activation-gradient")
    assert math.isfinite(d.metrics["gradient_ratio"])
    assert d.ok


def test_diagnose_config_probes_the_initial_weights_of_the_training_run():
    cfg = config(model="vgg", depth=4, seed=3)
    from normlib.train import load_dataset

    data = load_dataset("digits")
    torch.manual_seed(3)
    model = build_model(cfg, (1, 8, 8), 10).double()
    direct = diagnose(model, data.x_train[:32].double(), data.y_train[:32])
    assert diagnose_config(cfg).metrics == pytest.approx(direct.metrics, rel=1e-12)


def test_diagnose_leaves_the_model_exactly_as_found():
    torch.manual_seed(0)
    model = ResNet(depth=8, width=4, norm="bn", in_channels=1).double()
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64)
    model(x).sum().backward()
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    diagnose(model, x, torch.randint(0, 10, (16,)))
    assert not model.training and not any(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n]), n
    assert all(not m._forward_hooks for m in model.modules())


def test_judge_applies_each_threshold():
    base = {"variance_growth": 2.0, "variance_rate": 1.05, "similarity": 0.5, "stable_rank": 3.0,
            "gradient_ratio": 1.0, "gradient_rate": 1.0, "gradient_of_activations": 0.0}
    assert [c.status for c in judge(base)] == ["ok", "ok", "ok"]
    t = Thresholds()
    cases = [
        ({"variance_growth": 50.0, "variance_rate": 1.3}, 0, "failure"),
        ({"variance_growth": 50.0, "variance_rate": 1.1}, 0, "ok"),
        ({"variance_growth": 1e-3}, 0, "warning"),
        ({"similarity": 0.9}, 1, "warning"),
        ({"similarity": 0.99}, 1, "failure"),
        ({"gradient_ratio": 5.0, "gradient_rate": 1.1}, 2, "warning"),
        ({"gradient_ratio": 50.0, "gradient_rate": 1.2}, 2, "failure"),
        # Large in total, slow per weight layer: a deep normalized ResNet, fine.
        ({"gradient_ratio": 50.0, "gradient_rate": 1.05}, 2, "ok"),
        # Fast per layer, small in total: a short network, fine.
        ({"gradient_ratio": 2.0, "gradient_rate": 1.4}, 2, "ok"),
    ]
    for change, index, status in cases:
        assert judge({**base, **change}, t)[index].status == status, change
    checks = judge(base)
    assert [c.path for c in checks] == ["chapters/forward_stable", "chapters/forward_informative",
                                        "chapters/backward_stable"]


def test_non_finite_or_vanished_metrics_are_failures_not_ok():
    base = {"variance_growth": 2.0, "variance_rate": 1.05, "similarity": 0.5, "stable_rank": 3.0,
            "gradient_ratio": 1.0, "gradient_rate": 1.0, "gradient_of_activations": 0.0}
    cases = [
        ({"variance_growth": math.nan, "variance_rate": math.nan}, 0, "not finite"),
        ({"variance_growth": math.inf, "variance_rate": math.inf}, 0, "not finite"),
        ({"variance_growth": 0.0, "variance_rate": 0.0}, 0, "activations vanish"),
        ({"variance_growth": 1e-15, "variance_rate": 0.2}, 0, "activations vanish"),
        ({"similarity": math.nan}, 1, "not finite"),
        ({"stable_rank": math.nan}, 1, "not finite"),
        ({"similarity": 0.0, "stable_rank": 0.0}, 1, "activations vanished at the last layer"),
        ({"variance_growth": 0.0, "variance_rate": 0.0}, 1, "activations vanished before"),
        ({"gradient_ratio": math.nan, "gradient_rate": math.nan}, 2, "not finite"),
        ({"gradient_ratio": math.inf, "gradient_rate": math.inf}, 2, "not finite"),
        ({"gradient_ratio": 0.0, "gradient_rate": 0.0}, 2, "gradients vanish"),
    ]
    for change, index, reason in cases:
        check = judge({**base, **change})[index]
        assert (check.status, reason in check.verdict) == ("failure", True), (change, check)
    # Only the property whose metric degenerates fails.
    assert [c.status for c in judge({**base, "gradient_ratio": 0.0, "gradient_rate": 0.0})] == [
        "ok", "ok", "failure"]
    with pytest.raises(ValueError, match="stable_rank"):
        judge({k: v for k, v in base.items() if k != "stable_rank"})
    with pytest.raises(TypeError, match="similarity"):
        judge({**base, "similarity": "high"})


def test_instance_norm_of_vectors_outputs_zeros_and_every_property_fails():
    # Instance Normalization of (N, C) vectors standardizes single numbers: zeros, up to
    # rounding. Vanished metrics (all 0) must not pass the comparisons that define "ok".
    d = diagnose_config(config(model="mlp", depth=20, width=16, norm="in"))
    assert d.metrics["variance_growth"] < 1e-12 and d.metrics["gradient_ratio"] == 0.0
    assert d.verdicts == dict.fromkeys(d.verdicts, "failure"), d.checks
    assert "activations vanish" in d.checks[0].verdict
    assert "gradients vanish" in d.checks[2].verdict


def test_a_network_with_nan_weights_fails_every_property():
    torch.manual_seed(0)
    model = VGG(in_channels=1, num_classes=10, depth=4, width=4).double()
    with torch.no_grad():
        model.layers[2][0].weight.fill_(math.nan)
    d = diagnose(model, torch.randn(8, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (8,)))
    assert not d.ok and d.verdicts == dict.fromkeys(d.verdicts, "failure"), d.checks
    assert all("not finite" in c.verdict for c in d.checks), d.checks


def test_the_informative_check_reports_the_last_layers_stable_rank():
    d = diagnose_config(config(model="vgg", depth=4))
    rank = d.metrics["stable_rank"]
    assert rank == pytest.approx(float(d.layers["stable_rank"].iloc[-1]))
    assert 1.0 <= rank <= 32
    shown = f"stable rank {rank:.3g}"
    assert shown in d.checks[1].verdict and shown in str(d)


def test_thresholds_reject_bad_limits():
    with pytest.raises(ValueError, match="gradient_rate_failure"):
        Thresholds(gradient_rate_failure=-1.0)
    with pytest.raises(ValueError, match="gradient_rate_warning"):
        Thresholds(gradient_rate_warning=1.2, gradient_rate_failure=1.1)
    with pytest.raises(ValueError, match="similarity_warning"):
        Thresholds(similarity_warning=0.99, similarity_failure=0.9)


def test_init_metrics_needs_two_layers_and_the_gradient_columns():
    d = diagnose_config(config(model="vgg", depth=4))
    with pytest.raises(ValueError, match="two"):
        init_metrics(d.layers.iloc[:1])
    with pytest.raises(ValueError, match="grad_norm"):
        init_metrics(d.layers.drop(columns=["grad_norm"]))


def test_diagnose_rejects_bad_arguments():
    model = VGG(in_channels=1, num_classes=10, depth=4, width=4)
    with pytest.raises(TypeError, match="inputs"):
        diagnose(model, [[0.0]])
    with pytest.raises(TypeError, match="thresholds"):
        diagnose(model, torch.randn(4, 1, 8, 8), thresholds={"gradient_rate_failure": 1.1})
    with pytest.raises(TypeError, match="config"):
        diagnose_config({"model": "vgg"})
    with pytest.raises(ValueError, match="batch_size"):
        diagnose_config(config(batch_size=5000))


def test_the_printed_table_names_properties_verdicts_and_chapters():
    text = str(diagnose_config(config(model="vgg", depth=4)))
    for word in ("stable forward", "informative forward", "stable backward",
                 "Stable forward propagation", "chapters/backward_stable.md", "train mode"):
        assert word in text


def test_spearman_equals_scipy_with_ties_and_infinities():
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randint(0, 6, (20,), generator=g).double().tolist()
        y = (torch.randn(20, generator=g, dtype=torch.float64) + 0.3 * torch.tensor(x)).tolist()
        y[3] = math.inf
        expected = scipy_stats.spearmanr(x, y).statistic
        # Both are exact rank computations: equal to rounding (tolerance 1e-12).
        assert spearman(x, y) == pytest.approx(expected, abs=1e-12)
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == 1.0
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_spearman_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 3"):
        spearman([1, 2], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        spearman([1, 2, math.nan], [1, 2, 3])


def test_command_line_prints_the_table(capsys):
    rc = main(["diagnose", "--model", "vgg", "--depth", "4", "--width", "4", "--norm", "gn",
               "--group-size", "2", "--batch-size", "16", "--layers", "--data", "digits"])
    out = capsys.readouterr().out
    assert rc == (1 if "failure:" in out else 0)
    assert "VGG-4 (width 4), norm=gn (group_size=2), 16 digits samples" in out
    assert out.count("ok:") + out.count("warning:") + out.count("failure:") == 3
    assert "weight_grad_norm" in out and "layers.3" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--norm", "nope"], "unknown normalizer 'nope'"),
        (["--depth", "21"], "6n + 2"),
        (["--norm", "bn", "--group-size", "2"], "do not apply to --norm bn"),
        (["--group-size", "2", "--num-groups", "2", "--norm", "gn"], "not both"),
        (["--norm", "gn", "--group-size", "3"], "divisible"),
        (["--model", "vgg", "--skipinit"], "skipinit"),
        (["--batch-size", "100000", "--data", "digits"], "batch_size"),
        (["--input-shape", "1,8,8", "--data", "digits"], "--input-shape goes with --data random"),
    ],
)
def test_command_line_rejects_bad_values_with_a_clear_message(capsys, args, message):
    assert main(["diagnose", "--width", "4", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m normlib diagnose: error:") and message in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--depth", "-3"], "expected a positive integer, got -3"),
        (["--width", "wide"], "expected a positive integer, got 'wide'"),
        (["--model", "transformer"], "expected one of mlp, vgg, resnet or package.module:factory"),
        (["--input-shape", "3,-2"], "expected positive sizes"),
        (["--data", "imagenet"], "invalid choice: 'imagenet'"),
    ],
)
def test_command_line_rejects_malformed_arguments_before_running(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["diagnose", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("norm", ["wn", "sws", "none"])
@pytest.mark.parametrize("option", ["--group-size", "--num-groups"])
def test_command_line_rejects_group_options_for_normalizers_without_groups(capsys, norm, option):
    # Their slot in the model is an nn.Identity that would swallow the option unnoticed.
    assert main(["diagnose", "--width", "4", "--norm", norm, option, "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m normlib diagnose: error:")
    assert f"do not apply to --norm {norm}" in err and "no groups" in err
    with pytest.raises(ValueError, match=f"norm_kwargs=.* do not apply to norm='{norm}'"):
        TrainConfig(norm=norm, norm_kwargs={"group_size": 2})


# ------------------------------------------------------------------ any model: stand-ins and peers


class TimmStyleViT(nn.Module):
    """The layout of timm's ``VisionTransformer``: ``patch_embed``, ``blocks`` (a
    ``Sequential`` of pre-norm blocks), ``norm``, ``head``; timm's initialization."""

    def __init__(self, img=32, patch=8, dim=64, depth=6, heads=4):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        tokens = (img // patch) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[TimmStyleBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class TimmStyleAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, t, c))


class TimmStyleBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TimmStyleAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


BLOCKS_18 = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]


@pytest.fixture(scope="module")
def resnet18_case():
    from peers import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, x, diagnose(model, x)


def test_the_default_points_of_a_torchvision_resnet18_are_its_eight_blocks(resnet18_case):
    model, x, d = resnet18_case
    assert [n for n, _ in probe_points(model)] == BLOCKS_18
    assert list(d.layers["name"]) == BLOCKS_18 and not d.layers["stem"].any()
    # Between layer1.0 and layer4.1: 2 + 5 + 5 + 5 convolutions (downsample projections count).
    assert d.metrics["depth"] == 17
    assert d.ok, d.checks


def test_a_bn_resnet18_probed_at_its_stem_and_blocks_is_not_exploding(resnet18_case):
    model, x, auto = resnet18_case
    d = diagnose(model, x, at=["conv1", *BLOCKS_18])
    # The raw stem convolution has a tenth of the blocks' variance: measured from it the
    # variance "grows" about tenfold, which is the scale of the input, not depth.
    assert d.layers["variance"].iloc[-1] / d.layers["variance"].iloc[0] > 5
    assert list(d.layers["stem"]) == [True] + [False] * 8
    assert d.metrics == pytest.approx(auto.metrics, rel=1e-12)
    assert d.verdicts["stable forward"] == "ok" and "not compared (stem): conv1" in str(d)
    with pytest.raises(ValueError, match=r"two probed points after the stem.*conv1"):
        diagnose(model, x, at=["conv1", "layer4.1"])


def test_a_timm_style_vit_is_probed_at_its_blocks_sequential():
    torch.manual_seed(0)
    model = TimmStyleViT()
    d = diagnose(model, torch.randn(6, 3, 32, 32))
    assert list(d.layers["name"]) == [f"blocks.{i}" for i in range(6)]
    # Each block runs the attention's qkv and output projections and two MLP layers.
    assert d.metrics["depth"] == 5 * 4
    assert d.verdicts["stable forward"] == "ok", d.checks
    assert all(math.isfinite(v) for v in d.metrics.values())


def _plain_cnn(gain: float, depth: int = 30, width: int = 16) -> nn.Sequential:
    """A plain (unnormalized, non-residual) CNN, He-initialized times ``gain``."""
    layers = []
    for i in range(depth):
        conv = nn.Conv2d(3 if i == 0 else width, width, 3, padding=1, bias=False)
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        conv.weight.data.mul_(gain)
        layers.append(nn.Sequential(conv, nn.ReLU()))
    return nn.Sequential(*layers, nn.Flatten(), nn.LazyLinear(10))


@pytest.mark.parametrize("gain, verdict", [(1.2, "failure"), (1.1, "ok")])
def test_the_verdict_of_a_30_layer_plain_cnn_does_not_depend_on_how_densely_it_is_probed(gain, verdict):
    torch.manual_seed(0)
    x = torch.randn(8, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    model = _plain_cnn(gain)
    model(x[:2])  # materialize the lazy head
    every = diagnose(model, x)
    names = list(every.layers["name"])
    assert names == [str(i) for i in range(30)]  # the longest run of repeated siblings
    third = diagnose(model, x, at=names[::3])  # layers 1, 4, ..., 28
    convs = diagnose(model, x, at=nn.Conv2d)
    rates = [d.metrics["variance_rate"] for d in (every, third, convs)]
    assert third.metrics["depth"] == 27 and every.metrics["depth"] == 29
    # Per weight layer the three agree (the points differ, not the rate); per probed point
    # they would differ by a factor of 3 in the exponent.
    assert max(rates) / min(rates) < 1.03, rates
    assert {d.verdicts["stable forward"] for d in (every, third, convs)} == {verdict}
    if verdict == "failure":
        # Growth of hundreds at about 1.2 per layer: a rate per probed point would call it
        # stable (below 1.25) at every layer and exploding (1.2**3) at every third.
        assert every.metrics["variance_growth"] > 50 and 1.1 < rates[0] < 1.25


def test_without_blocks_the_default_points_are_the_normalization_then_the_weight_layers():
    norms = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 8),
                          nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 2))
    assert [n for n, _ in probe_points(norms)] == ["1", "4"]
    weights = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    assert [n for n, _ in probe_points(weights)] == ["0", "2", "4"]
    d = diagnose(weights, torch.randn(8, 8))
    assert d.metrics["depth"] == 2 and len(d.layers) == 3


def test_the_json_of_a_diagnosis_is_strict_and_keeps_every_number():
    torch.manual_seed(0)
    model = VGG(in_channels=1, num_classes=10, depth=4, width=4).double()
    d = diagnose(model, torch.randn(8, 1, 8, 8, dtype=torch.float64))
    out = json.loads(json.dumps(d.to_dict(), allow_nan=False))
    assert out["metrics"]["variance_growth"] == pytest.approx(d.metrics["variance_growth"])
    assert [c["status"] for c in out["checks"]] == list(d.verdicts.values())
    assert [row["name"] for row in out["layers"]] == list(d.layers["name"])
    assert out["failed"] == d.failed and out["thresholds"]["explosion_rate"] == 1.1
    d.metrics["variance_growth"] = math.inf
    assert d.to_dict()["metrics"]["variance_growth"] is None


def _peers():
    """``(timm, torchvision)`` from tests/peers.py (a missing peer is its ImportError, naming the
    install line: never a skip)."""
    import peers

    return peers.timm, peers.torchvision


def test_torchvision_resnet18_is_diagnosed_with_default_arguments(resnet18_case):
    _, torchvision = _peers()
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    _, x, _ = resnet18_case
    d = diagnose(model, x)
    assert list(d.layers["name"]) == BLOCKS_18 and d.metrics["depth"] == 17
    assert d.ok, d.checks


@pytest.mark.parametrize("name, points", [("resnet18", BLOCKS_18),
                                          ("vit_tiny_patch16_224", [f"blocks.{i}" for i in range(12)])])
def test_timm_models_are_diagnosed_with_default_arguments(name, points):
    timm, _ = _peers()
    torch.manual_seed(0)
    kwargs = {"img_size": 32} if name.startswith("vit") else {}
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    d = diagnose(model, torch.randn(4, 3, 32, 32))
    assert list(d.layers["name"]) == points
    assert d.verdicts["stable forward"] == "ok", d.checks


@pytest.mark.parametrize("norm", ["bn", "gn", "ln2d", "frn"])
def test_a_torchvision_resnet18_with_a_normlib_norm_layer_is_diagnosed_at_its_blocks(norm):
    import normlib

    _, torchvision = _peers()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(norm_layer=normlib.norm_factory(norm), num_classes=10)
    d = diagnose(model, torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert list(d.layers["name"]) == BLOCKS_18 and d.metrics["depth"] == 17
    assert all(math.isfinite(v) for v in d.metrics.values()), d.metrics
    assert d.verdicts["stable forward"] == "ok", d.checks
