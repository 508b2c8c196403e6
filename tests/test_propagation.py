"""normlib.propagation: statistics against direct formulas, probes against direct autograd,
model state left untouched (also on errors), sweeps, and clear errors."""

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from normlib.models import MLP, VGG, ResNet
from normlib.propagation import (
    GRADIENT_STATISTICS,
    STATISTICS,
    activation_variance,
    cosine_similarity_matrix,
    derived_seed,
    effective_rank,
    gram_eigenvalues,
    gram_matrix,
    grid_configurations,
    growth_rate,
    mean_cosine_similarity,
    numerical_rank,
    orthogonality_gap,
    preserved_state,
    probe,
    probe_points,
    representation_statistics,
    second_moment,
    stable_rank,
    sweep,
)

# Statistics are computed in float64 from float64 inputs here: agreement to 1e-10
# relative is rounding, anything larger is a wrong formula.
RTOL = 1e-10


def _singular_values(x: torch.Tensor) -> np.ndarray:
    flat = x.reshape(x.shape[0], -1).double().numpy()
    return np.linalg.svd(flat / math.sqrt(flat.shape[1]), compute_uv=False)


@pytest.fixture
def acts():
    torch.manual_seed(0)
    return torch.randn(6, 4, 3, 3, dtype=torch.float64) + 0.5


# ----------------------------------------------------------------- statistics


def test_activation_variance_is_mean_channel_variance_over_batch_and_positions(acts):
    a = acts.numpy()
    expected = a.transpose(1, 0, 2, 3).reshape(4, -1).var(axis=1).mean()
    assert activation_variance(acts) == pytest.approx(expected, rel=RTOL)
    flat = acts[:, :, 0, 0]
    assert activation_variance(flat) == pytest.approx(flat.numpy().var(axis=0).mean(), rel=RTOL)


def test_second_moment_is_mean_square(acts):
    assert second_moment(acts) == pytest.approx(float((acts**2).mean()), rel=RTOL)


def test_gram_matrix_is_inner_products_over_feature_count(acts):
    flat = acts.reshape(6, -1)
    torch.testing.assert_close(gram_matrix(acts), flat @ flat.T / 36, rtol=RTOL, atol=0)


def test_mean_cosine_similarity_matches_pairwise_loop(acts):
    flat = acts.reshape(6, -1)
    pairs = [float(nn.functional.cosine_similarity(flat[i], flat[j], dim=0))
             for i in range(6) for j in range(6) if i != j]
    assert mean_cosine_similarity(acts) == pytest.approx(np.mean(pairs), rel=1e-9)
    assert cosine_similarity_matrix(acts).diagonal().sub(1).abs().max() < 1e-12


def test_rank_measures_match_singular_value_formulas(acts):
    sv = _singular_values(acts)
    assert gram_eigenvalues(acts).numpy() == pytest.approx(sv**2, rel=1e-9)
    assert stable_rank(acts) == pytest.approx((sv**2).sum() / sv[0] ** 2, rel=1e-9)
    p = sv / sv.sum()
    assert effective_rank(acts) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)


def test_numerical_rank_counts_singular_values_above_threshold_like_torch():
    torch.manual_seed(1)
    low = torch.randn(8, 3, dtype=torch.float64) @ torch.randn(3, 20, dtype=torch.float64)
    assert numerical_rank(low) == int(torch.linalg.matrix_rank(low, rtol=1e-6)) == 3
    low32 = low.float()
    assert numerical_rank(low32) == int(torch.linalg.matrix_rank(low32)) == 3
    diag = torch.diag(torch.tensor([1.0, 1e-2, 1e-5, 0.0], dtype=torch.float64))
    assert numerical_rank(diag, rtol=1e-3) == 2
    assert numerical_rank(diag, rtol=1e-6) == 3
    with pytest.raises(ValueError, match="rtol"):
        numerical_rank(diag, rtol=1e-9)


def test_orthogonality_gap_is_zero_for_orthonormal_and_maximal_for_parallel_samples():
    q, _ = torch.linalg.qr(torch.randn(10, 5, dtype=torch.float64))
    assert orthogonality_gap(q.T) == pytest.approx(0.0, abs=1e-12)
    parallel = torch.randn(1, 7, dtype=torch.float64) * torch.arange(1.0, 6.0, dtype=torch.float64)[:, None]
    assert orthogonality_gap(parallel) == pytest.approx(math.sqrt(1 - 1 / 5), rel=1e-9)
    x = np.random.default_rng(0).normal(size=(5, 8))
    m = x @ x.T
    expected = np.linalg.norm(m / np.trace(m) - np.eye(5) / 5)
    assert orthogonality_gap(torch.from_numpy(x)) == pytest.approx(expected, rel=1e-10)


def test_representation_statistics_agree_with_individual_functions(acts):
    stats = representation_statistics(acts)
    assert list(stats) == list(STATISTICS)
    assert stats["variance"] == pytest.approx(activation_variance(acts), rel=RTOL)
    assert stats["second_moment"] == pytest.approx(second_moment(acts), rel=RTOL)
    assert stats["cosine_similarity"] == pytest.approx(mean_cosine_similarity(acts), rel=RTOL)
    assert stats["stable_rank"] == pytest.approx(stable_rank(acts), rel=RTOL)
    assert stats["numerical_rank"] == numerical_rank(acts)
    assert stats["effective_rank"] == pytest.approx(effective_rank(acts), rel=RTOL)
    assert stats["orthogonality_gap"] == pytest.approx(orthogonality_gap(acts), rel=RTOL)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 7), d=st.integers(1, 9), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 1000))
def test_similarity_and_rank_are_scale_invariant_and_within_their_ranges(n, d, scale, seed):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    a, b = representation_statistics(x), representation_statistics(scale * x)
    for key in ("cosine_similarity", "stable_rank", "effective_rank", "orthogonality_gap"):
        assert b[key] == pytest.approx(a[key], rel=1e-8, abs=1e-12)
    # stable rank <= 1 / sum(p^2) <= effective rank (Renyi-2 entropy <= Shannon entropy)
    r = min(n, d)
    assert 1 - 1e-9 <= a["stable_rank"] <= a["effective_rank"] + 1e-9 <= r + 1e-9
    assert -1 - 1e-12 <= a["cosine_similarity"] <= 1 + 1e-12
    assert 0 <= a["orthogonality_gap"] <= math.sqrt(1 - 1 / n) + 1e-9


def test_zero_activations_give_defined_statistics():
    stats = representation_statistics(torch.zeros(3, 4))
    assert stats["cosine_similarity"] == 0.0 and stats["stable_rank"] == 0.0
    assert stats["orthogonality_gap"] == pytest.approx(math.sqrt(2 / 3))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_activations_give_nan_statistics_instead_of_an_eigensolver_error(bad):
    x = torch.randn(6, 4, dtype=torch.float64)
    x[2, 1] = bad
    stats = representation_statistics(x)
    for key in ("cosine_similarity", "stable_rank", "numerical_rank", "effective_rank",
                "orthogonality_gap"):
        assert math.isnan(stats[key]), (key, stats[key])
    assert math.isnan(stable_rank(x)) and math.isnan(effective_rank(x))
    with pytest.raises(ValueError, match="NaN or infinite"):
        numerical_rank(x)


def test_statistics_reject_bad_inputs_with_clear_errors():
    with pytest.raises(ValueError, match="at least 2"):
        mean_cosine_similarity(torch.randn(1, 5))
    with pytest.raises(ValueError, match=r"\(N, \*\)"):
        stable_rank(torch.randn(5))
    with pytest.raises(TypeError, match="torch.Tensor"):
        stable_rank(np.ones((3, 3)))
    with pytest.raises(TypeError, match="floating point"):
        stable_rank(torch.ones(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="rtol"):
        numerical_rank(torch.randn(3, 3), rtol=2.0)
    with pytest.raises(ValueError, match="2 values per channel"):
        activation_variance(torch.randn(1, 3))


# ----------------------------------------------------------------- probes


def _mlp(norm="bn", depth=3, **kw):
    torch.manual_seed(0)
    return MLP(5, 3, width=12, depth=depth, norm=norm, **kw).double()


def test_probe_statistics_equal_direct_computation_on_layer_outputs():
    model = _mlp()
    x = torch.randn(7, 5, dtype=torch.float64)
    table = probe(model, x, backward=False)
    h = x
    for i, layer in enumerate(model.layers):
        h = layer(h)
        row = table[table.name == f"layers.{i}"].iloc[0]
        direct = representation_statistics(h)
        for key in STATISTICS:
            assert row[key] == pytest.approx(direct[key], rel=1e-10), key
        assert row["layer"] == i + 1
    assert table.iloc[0]["name"] == "input"
    assert table.iloc[0]["variance"] == pytest.approx(activation_variance(x), rel=1e-12)


def test_probe_gradient_norms_equal_direct_autograd():
    model = _mlp(depth=4)
    reference = copy.deepcopy(model)
    x = torch.randn(9, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (9,))
    table = probe(model, x, y)
    outs = []
    h = x.clone().requires_grad_(True)
    inp = h
    for layer in reference.layers:
        h = layer(h)
        h.retain_grad()
        outs.append(h)
    nn.functional.cross_entropy(reference.head(h), y).backward()
    assert table.iloc[0]["grad_norm"] == pytest.approx(float(inp.grad.norm()), rel=1e-10)
    for i, (out, layer) in enumerate(zip(outs, reference.layers)):
        row = table.iloc[i + 1]
        assert row["grad_norm"] == pytest.approx(float(out.grad.norm()), rel=1e-10)
        assert row["weight_grad_norm"] == pytest.approx(float(layer[0].weight.grad.norm()), rel=1e-10)
        assert row["weight_norm"] == pytest.approx(float(layer[0].weight.detach().norm()), rel=1e-12)


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()],
            [None if p.grad is None else (id(p.grad), p.grad.clone()) for p in model.parameters()])


def _assert_unchanged(model, snap):
    state, flags, grads = snap
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0, msg=k)
    assert [m.training for m in model.modules()] == flags
    for p, g in zip(model.parameters(), grads):
        if g is None:
            assert p.grad is None
        else:
            assert id(p.grad) == g[0] and torch.equal(p.grad, g[1])
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
        assert not m._backward_hooks and not getattr(m, "_backward_pre_hooks", {})


def _with_history(model):
    # running statistics away from their initial values, some .grad set, mixed modes
    with torch.no_grad():
        model.train()
        model(torch.randn(6, 5, dtype=torch.float64))
    model.layers[0][0].weight.grad = torch.ones_like(model.layers[0][0].weight)
    model.eval()
    model.layers[1].train()
    return model


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_probe_leaves_model_exactly_as_found(mode):
    model = _with_history(_mlp())
    snap = _snapshot(model)
    probe(model, torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,)), mode=mode)
    _assert_unchanged(model, snap)


def test_probe_restores_model_when_the_backward_pass_fails():
    model = _with_history(_mlp())
    snap = _snapshot(model)

    def failing_loss(output, targets):
        raise RuntimeError("loss exploded")

    with pytest.raises(RuntimeError, match="loss exploded"):
        probe(model, torch.randn(8, 5, dtype=torch.float64), loss_fn=failing_loss)
    _assert_unchanged(model, snap)


def test_probe_restores_model_when_the_forward_pass_fails_midway():
    model = _with_history(_mlp())

    class Boom(nn.Module):
        def forward(self, x):
            raise FloatingPointError("boom")

    model.layers[2].append(Boom())
    snap = _snapshot(model)
    with pytest.raises(FloatingPointError, match="boom"):
        probe(model, torch.randn(8, 5, dtype=torch.float64))
    _assert_unchanged(model, snap)


def test_preserved_state_restores_running_statistics_and_modes_after_an_exception():
    model = _with_history(_mlp())
    snap = _snapshot(model)
    with pytest.raises(KeyError), preserved_state(model):
        model.train()
        model(torch.randn(5, 5, dtype=torch.float64))
        model.layers[0][0].weight.grad = None
        raise KeyError("interrupted")
    _assert_unchanged(model, snap)


def test_probe_in_train_mode_uses_batch_statistics_and_eval_mode_running_ones():
    model = _mlp().eval()
    x = torch.randn(8, 5, dtype=torch.float64)
    train = probe(model, x, backward=False, mode="train")
    evals = probe(model, x, backward=False, mode="eval")
    # BN output in train mode has unit variance per feature before the ReLU; running
    # statistics at their initial values (mean 0, var 1) do not normalize.
    bn_train = probe(model, x, backward=False, at="norms", mode="train", include_input=False)
    assert bn_train["variance"].to_numpy() == pytest.approx(1.0, rel=1e-4)
    assert not np.allclose(train["variance"], evals["variance"])
    assert set(train["mode"]) == {"train"} and set(evals["mode"]) == {"eval"}
    assert not model.training


def test_probe_averages_statistics_over_batches_without_keeping_them():
    model = _mlp()
    xs = [torch.randn(6, 5, dtype=torch.float64) for _ in range(3)]
    together = probe(model, xs)
    separate = [probe(model, x) for x in xs]
    for key in (*STATISTICS, *GRADIENT_STATISTICS):
        mean = np.mean([t[key].to_numpy() for t in separate], axis=0)
        np.testing.assert_allclose(together[key].to_numpy(), mean, rtol=1e-10)
    assert set(together["num_batches"]) == {3} and set(together["batch_size"]) == {6}


def test_probe_accepts_labelled_batches_and_custom_losses():
    model = _mlp()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    pairs = probe(model, [(x, y)])
    single = probe(model, x, y)
    pd.testing.assert_frame_equal(pairs, single)
    doubled = probe(model, x, y, loss_fn=lambda out, t: 2 * nn.functional.cross_entropy(out, t))
    np.testing.assert_allclose(doubled["grad_norm"], 2 * single["grad_norm"], rtol=1e-10)


def test_probe_points_follow_the_models_layouts():
    resnet = ResNet(depth=8, width=4, norm="bn")
    assert [n for n, _ in probe_points(resnet)] == ["stem", "blocks.0", "blocks.1", "blocks.2"]
    vgg = VGG(3, 2, depth=4, width=4, norm="gn", norm_kwargs={"num_groups": 2})
    assert [n for n, _ in probe_points(vgg)] == [f"layers.{i}" for i in range(4)]
    assert len(probe_points(vgg, "norms")) == 4
    assert len(probe_points(vgg, nn.Conv2d)) == 4
    assert [n for n, _ in probe_points(vgg, ["layers.1", "head"])] == ["layers.1", "head"]


def test_probe_on_resnet_blocks_and_weight_normalized_convs_restores_state():
    torch.manual_seed(0)
    for norm in ("bn", "wn"):
        model = ResNet(depth=8, width=4, norm=norm).double()
        snap = _snapshot(model)
        table = probe(model, torch.randn(4, 3, 8, 8, dtype=torch.float64))
        assert list(table["name"]) == ["input", "stem", "blocks.0", "blocks.1", "blocks.2"]
        assert table[GRADIENT_STATISTICS[0]].iloc[1:].gt(0).all()
        _assert_unchanged(model, snap)


def test_probe_errors_are_clear():
    x = torch.randn(4, 5)
    with pytest.raises(ValueError, match="no normalization layer"):
        probe(MLP(5, 3, width=8, depth=2, norm=None), x, at="norms")
    with pytest.raises(ValueError, match="no .blocks"):
        probe(MLP(5, 3, width=8, depth=2), x, at="blocks")
    with pytest.raises(ValueError, match="at least 2 samples"):
        probe(MLP(5, 3, width=8, depth=2), torch.randn(1, 5))
    with pytest.raises(ValueError, match="unknown module name"):
        probe(MLP(5, 3, width=8, depth=2), x, at=["layers.9"])
    with pytest.raises(ValueError, match="no module of type Conv2d"):
        probe(MLP(5, 3, width=8, depth=2), x, at=nn.Conv2d)
    with pytest.raises(ValueError, match="mode"):
        probe(MLP(5, 3, width=8, depth=2), x, mode="test")
    with pytest.raises(ValueError, match="no residual blocks, repeated layers, normalization"):
        probe(nn.Sequential(nn.ReLU(), nn.Tanh()), x)
    with pytest.raises(TypeError, match="nn.Module"):
        probe("model", x)
    with pytest.raises(ValueError, match="never reached"):
        probe(_SkipsLayer(), x, at=["used", "unused"], backward=False)
    with pytest.raises(ValueError, match="scalar"):
        probe(MLP(5, 3, width=8, depth=2), x, loss_fn=lambda out, t: out)
    with pytest.raises(ValueError, match="empty"):
        probe(MLP(5, 3, width=8, depth=2), [])
    with pytest.raises(TypeError, match=r"inputs=\[\(x, y\)\]"):
        probe(MLP(5, 3, width=8, depth=2), (x, torch.randint(0, 3, (4,))))


def test_a_point_never_reached_is_a_clear_error_with_the_backward_pass_too():
    model = _SkipsLayer()
    snap = _snapshot(model)
    for backward in (False, True):
        with pytest.raises(ValueError, match=r"never reached \['unused'\]"):
            probe(model, torch.randn(4, 5), torch.randn(4, 5), at=["used", "unused"],
                  backward=backward)
    _assert_unchanged(model, snap)


@pytest.mark.parametrize("norm", ["wn", "cwn"])
def test_weight_columns_of_weight_normalized_layers_count_the_direction_not_the_gain(norm):
    torch.manual_seed(0)
    model = MLP(5, 3, width=8, depth=3, norm=norm).double()
    x, y = torch.randn(9, 5, dtype=torch.float64), torch.randint(0, 3, (9,))
    table = probe(model, x, y, include_input=False)
    chains = [layer[0].parametrizations.weight for layer in model.layers]
    gains, directions = [c.original0 for c in chains], [c.original1 for c in chains]
    assert all(g.dim() >= 2 for g in gains)  # (out, 1): only its role says it is a gain
    grads = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), directions)
    for row, v, g in zip(table.itertuples(), directions, grads):
        assert row.weight_grad_norm == pytest.approx(float(g.norm()), rel=1e-10)
        assert row.weight_norm == pytest.approx(float(v.detach().norm()), rel=1e-12)
    # The gains start at the norm of the rows, so counting them would move weight_norm by
    # sqrt(1 + 1) = 1.41x for weight normalization.
    if norm == "wn":
        with_gain = math.hypot(float(directions[0].detach().norm()), float(gains[0].detach().norm()))
        assert table["weight_norm"].iloc[0] < with_gain / 1.3


class _SkipsLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Linear(5, 5), nn.Linear(5, 5)

    def forward(self, x):
        return self.used(x)


# ----------------------------------------------------------------- sweeps


def _make(norm, depth, seed):
    return MLP(6, 2, width=8, depth=depth, norm=norm)


def test_sweep_returns_a_tidy_table_with_one_row_per_configuration_and_layer():
    table = sweep(_make, {"norm": ["bn", "ln"], "depth": [1, 2], "seed": [0, 1]},
                  lambda **c: torch.randn(5, 6), progress=False)
    assert list(table.columns[:3]) == ["norm", "depth", "seed"]
    # (1 + 1) + (1 + 2) rows per (norm, seed): input plus layers
    assert len(table) == 2 * 2 * (2 + 3)
    assert table.groupby(["norm", "depth", "seed"]).size().to_dict()[("bn", 2, 1)] == 3


def test_sweep_is_reproducible_and_gives_every_normalizer_the_same_inputs_and_weights():
    grid = {"norm": ["bn", "ln"], "depth": [2], "seed": [0, 1]}
    make_inputs = lambda **c: torch.randn(5, 6)  # noqa: E731
    a = sweep(_make, grid, make_inputs, progress=False)
    b = sweep(_make, grid, make_inputs, progress=False)
    pd.testing.assert_frame_equal(a, b)
    inputs = a[a.layer == 0].set_index(["norm", "seed"])["variance"]
    assert inputs[("bn", 0)] == inputs[("ln", 0)] != inputs[("bn", 1)]
    weights = a[a.layer == 1].set_index(["norm", "seed"])["weight_norm"]
    assert weights[("bn", 0)] == weights[("ln", 0)]


def test_sweep_runs_in_float64_on_request():
    seen = []

    def make(seed):
        model = MLP(6, 2, width=8, depth=1)
        seen.append(model)
        return model

    sweep(make, {"seed": [3]}, lambda **c: torch.randn(4, 6), dtype=torch.float64, progress=False)
    assert seen[0].head.weight.dtype == torch.float64


def test_sweep_and_grid_errors_are_clear():
    with pytest.raises(ValueError, match="empty"):
        sweep(_make, {}, lambda **c: torch.randn(4, 6), progress=False)
    with pytest.raises(ValueError, match="no values|empty"):
        grid_configurations({"norm": []})
    with pytest.raises(TypeError, match="list of values"):
        grid_configurations({"norm": "bn"})
    with pytest.raises(TypeError, match="callables"):
        sweep(None, {"seed": [0]}, lambda **c: None)
    with pytest.raises(ValueError, match="seed"):
        derived_seed(-1, "model")
    assert derived_seed(0, "inputs") != derived_seed(0, "model")


def test_growth_rate_is_the_geometric_mean_ratio_of_squared_values_towards_the_input():
    layers = np.arange(1, 7)
    table = pd.DataFrame({
        "norm": ["a"] * 6 + ["b"] * 6,
        "layer": np.concatenate([layers, layers]),
        # a: norm halves per layer towards the output (squared ratio 4); b: constant
        "grad_norm": np.concatenate([2.0 ** -layers, np.ones(6)]),
    })
    rates = growth_rate(table, by="norm")
    assert rates["a"] == pytest.approx(4.0) and rates["b"] == pytest.approx(1.0)
    assert growth_rate(table[table.norm == "a"], squared=False, first=2, last=4) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="fewer than two"):
        growth_rate(table, by="norm", first=6)
    with pytest.raises(ValueError, match="no column"):
        growth_rate(table, column="missing")
    with pytest.raises(ValueError, match="positive"):
        growth_rate(table.assign(grad_norm=0.0), by="norm")


def test_growth_rate_of_a_probed_batchnorm_mlp_exceeds_one():
    torch.manual_seed(0)
    table = probe(MLP(16, 4, width=64, depth=12, norm="bn"), torch.randn(8, 16))
    assert growth_rate(table, first=2, last=10) > 1.2
