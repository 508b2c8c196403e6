"""normlib.diagnose: verdicts on known cases, the model left as found, rank correlation, the CLI."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from normlib.__main__ import main
from normlib.diagnose import Thresholds, diagnose, diagnose_config, init_metrics, judge, spearman
from normlib.models import VGG, ResNet
from normlib.train import TrainConfig, build_model

ROOT = Path(__file__).resolve().parents[1]


def config(**kw) -> TrainConfig:
    base = dict(model="resnet", depth=20, width=8, norm="bn", batch_size=32, dtype="float64")
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("seed", [0, 1])
def test_no_normalization_in_a_deep_resnet_has_exploding_variance(seed):
    d = diagnose_config(config(depth=56, norm="none", seed=seed))
    # The residual stream doubles its variance per block without a normalizer: growth of
    # thousands over 27 blocks (measured 2e3 to 3e6 on seeds 0-3), limit 10 at rate 1.25.
    assert d.verdicts["stable forward"] == "failure"
    assert d.metrics["variance_growth"] > 100 and d.metrics["variance_rate"] > 1.25
    assert "exploding variance" in d.checks[0].verdict


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_norm_in_the_same_resnet_is_stable_forward(seed):
    d = diagnose_config(config(depth=56, norm="bn", seed=seed))
    # Linear growth: about 10x over 27 blocks, about 1.09 per block.
    assert d.verdicts["stable forward"] == "ok"
    assert d.metrics["variance_rate"] < 1.15


@pytest.mark.parametrize("seed", [0, 1])
def test_instance_norm_in_a_20_layer_cnn_has_exploding_early_gradients(seed):
    d = diagnose_config(config(model="vgg", depth=20, norm="in", seed=seed))
    # First-layer weight gradients 13 to 42 times the last layer's (seeds 0-3); limit 10.
    assert d.verdicts["stable backward"] == "failure"
    assert d.checks[2].verdict == "exploding early gradients"
    assert "weight-gradient" in d.checks[2].metric
    bn = diagnose_config(config(model="vgg", depth=20, norm="bn", seed=seed))
    assert bn.metrics["gradient_ratio"] < d.metrics["gradient_ratio"] / 2


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
            "gradient_ratio": 1.0, "gradient_of_activations": 0.0}
    assert [c.status for c in judge(base)] == ["ok", "ok", "ok"]
    t = Thresholds()
    cases = [
        ({"variance_growth": 50.0, "variance_rate": 1.3}, 0, "failure"),
        ({"variance_growth": 50.0, "variance_rate": 1.1}, 0, "ok"),
        ({"variance_growth": 1e-3}, 0, "warning"),
        ({"similarity": 0.9}, 1, "warning"),
        ({"similarity": 0.99}, 1, "failure"),
        ({"gradient_ratio": 5.0}, 2, "warning"),
        ({"gradient_ratio": 50.0}, 2, "failure"),
    ]
    for change, index, status in cases:
        assert judge({**base, **change}, t)[index].status == status, change
    checks = judge(base)
    assert [c.path for c in checks] == ["chapters/forward_stable", "chapters/forward_informative",
                                        "chapters/backward_stable"]


def test_non_finite_or_vanished_metrics_are_failures_not_ok():
    base = {"variance_growth": 2.0, "variance_rate": 1.05, "similarity": 0.5, "stable_rank": 3.0,
            "gradient_ratio": 1.0, "gradient_of_activations": 0.0}
    cases = [
        ({"variance_growth": math.nan, "variance_rate": math.nan}, 0, "not finite"),
        ({"variance_growth": math.inf, "variance_rate": math.inf}, 0, "not finite"),
        ({"variance_growth": 0.0, "variance_rate": 0.0}, 0, "activations vanish"),
        ({"variance_growth": 1e-15, "variance_rate": 0.2}, 0, "activations vanish"),
        ({"similarity": math.nan}, 1, "not finite"),
        ({"stable_rank": math.nan}, 1, "not finite"),
        ({"similarity": 0.0, "stable_rank": 0.0}, 1, "activations vanished at the last layer"),
        ({"variance_growth": 0.0, "variance_rate": 0.0}, 1, "activations vanished before"),
        ({"gradient_ratio": math.nan}, 2, "not finite"),
        ({"gradient_ratio": math.inf}, 2, "not finite"),
        ({"gradient_ratio": 0.0}, 2, "gradients vanish"),
    ]
    for change, index, reason in cases:
        check = judge({**base, **change})[index]
        assert (check.status, reason in check.verdict) == ("failure", True), (change, check)
    # Only the property whose metric degenerates fails.
    assert [c.status for c in judge({**base, "gradient_ratio": 0.0})] == ["ok", "ok", "failure"]
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
    with pytest.raises(ValueError, match="gradient_failure"):
        Thresholds(gradient_failure=-1.0)
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
        diagnose(model, torch.randn(4, 1, 8, 8), thresholds={"gradient_failure": 3})
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
               "--group-size", "2", "--batch-size", "16", "--layers"])
    out = capsys.readouterr().out
    assert rc == 0
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
        (["--batch-size", "100000"], "batch_size"),
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
        (["--model", "transformer"], "invalid choice: 'transformer'"),
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


def test_python_dash_m_normlib_diagnose_runs_as_a_program():
    # `python -m` executes normlib/__main__.py as the module __main__: the command must still
    # be registered there.
    out = subprocess.run([sys.executable, "-m", "normlib", "diagnose", "--model", "resnet",
                          "--depth", "8", "--width", "4", "--norm", "none", "--batch-size", "8"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "stable backward" in out.stdout and "ResNet-8 (width 4), norm=none" in out.stdout
