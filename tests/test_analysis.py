"""Tests of normlib.analysis: scale dynamics, invariance table, effective learning rate, SND.

Every computation runs in float64. Tolerances are stated where they are used; the ones that
allow for a normalizer's ``eps`` are set with the layers' ``eps`` tiny (1e-12) so that exact
identities hold to about 1e-9.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normlib  # noqa: F401  (fills the registry)
from normlib import analysis as A
from normlib.models import MLP

DT = torch.float64
ALPHAS = [2.0, 0.5, 3.0, 1.5]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny float64 problems: on a loaded 2-core machine a second thread per small op made the
    SGD runs here several times slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mlp(norm, activation="relu", depth=3, eps=1e-12, **norm_kwargs):
    torch.manual_seed(0)
    kw = dict(norm_kwargs, eps=eps) if norm is not None else None
    return MLP(10, 3, width=16, depth=depth, norm=norm, activation=activation, norm_kwargs=kw).to(DT)


def _x(n=64, d=10, seed=1):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _state(model):
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        {n: m.training for n, m in model.named_modules()},
        {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
    )


def _assert_same_state(model, state):
    sd, modes, grads = state
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert {n: m.training for n, m in model.named_modules()} == modes
    for n, p in model.named_parameters():
        assert (p.grad is None and grads[n] is None) or torch.equal(p.grad, grads[n]), n


# ----------------------------------------------------------------------------- scale dynamics


def test_predicted_scale_dynamics_are_the_products_of_the_deck_table_without_normalization():
    a = torch.tensor(ALPHAS, dtype=DT)
    p = A.predicted_scale_dynamics(ALPHAS, [False] * 4)
    for k in range(4):
        # input of layer k is x_{k-1}: prod_{i<k}; output gradient prod_{i>k}; weight prod_{i!=k}
        assert math.isclose(p.input[k], float(a[:k].prod()), rel_tol=1e-14)
        assert math.isclose(p.output_grad[k], float(a[k + 1:].prod()), rel_tol=1e-14)
        assert math.isclose(p.weight_grad[k], float(a.prod() / a[k]), rel_tol=1e-14)


def test_predicted_scale_dynamics_are_one_over_alpha_when_every_layer_is_normalized():
    p = A.predicted_scale_dynamics(ALPHAS, [True] * 4)
    expected = 1.0 / torch.tensor(ALPHAS, dtype=DT)
    assert torch.equal(p.input, torch.ones(4, dtype=DT))
    torch.testing.assert_close(p.output_grad, expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(p.weight_grad, expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("activation", ["relu", "identity"])
def test_measured_scale_dynamics_of_plain_network_match_products_of_alphas(activation):
    net = _mlp(None, activation)
    m = A.scale_dynamics(net, _x(), ALPHAS)
    p = A.predicted_scale_dynamics(ALPHAS, [False] * 4)
    # positively homogeneous network with zero biases: exact up to float64 rounding (1e-12)
    for q in ("input", "output_grad", "weight_grad"):
        torch.testing.assert_close(getattr(m, q), getattr(p, q), rtol=1e-12, atol=0)
    assert float(m.residual.max()) < 1e-12
    assert m.names == ["layers.0.0", "layers.1.0", "layers.2.0", "head"] and m.mode == "train"


@pytest.mark.parametrize("norm,kw", [("bn", {}), ("ln", {}), ("gn", {"num_groups": 4})])
def test_measured_scale_dynamics_of_normalized_network_are_one_and_one_over_alpha(norm, kw):
    net = _mlp(norm, **kw)
    alphas = ALPHAS[:3] + [1.0]  # the head has no normalizer after it: keep its scale
    m = A.scale_dynamics(net, _x(), alphas)
    inv = 1.0 / torch.tensor(alphas, dtype=DT)
    # eps = 1e-12 against pre-activation variances of order 1: rules hold to 1e-8
    torch.testing.assert_close(m.input, torch.ones(4, dtype=DT), rtol=1e-8, atol=0)
    torch.testing.assert_close(m.output_grad, inv, rtol=1e-8, atol=0)
    torch.testing.assert_close(m.weight_grad, inv, rtol=1e-8, atol=0)
    assert float(m.residual.max()) < 1e-8


def test_rescaled_head_of_normalized_network_follows_the_general_rule():
    net = _mlp("bn")
    m = A.scale_dynamics(net, _x(), ALPHAS)
    p = A.predicted_scale_dynamics(ALPHAS, [True, True, True, False])
    # output gradient of normalized layer k is alpha_head / alpha_k (tolerance as above)
    for q in ("input", "output_grad", "weight_grad"):
        torch.testing.assert_close(getattr(m, q), getattr(p, q), rtol=1e-8, atol=0)
    assert math.isclose(float(m.output_grad[0]), ALPHAS[3] / ALPHAS[0], rel_tol=1e-8)


def test_batch_norm_in_eval_mode_is_not_scale_invariant():
    # Fresh running statistics (mean 0, var 1): in eval mode BN is a fixed affine map, so the
    # network scales like a plain one, as the measurement in eval mode must show.
    net = _mlp("bn")
    m = A.scale_dynamics(net, _x(), ALPHAS, mode="eval")
    p = A.predicted_scale_dynamics(ALPHAS, [False] * 4)
    torch.testing.assert_close(m.weight_grad, p.weight_grad, rtol=1e-6, atol=0)
    assert m.mode == "eval"


def test_scale_dynamics_with_cross_entropy_holds_for_normalized_layers_when_output_is_unchanged():
    net = _mlp("bn")
    y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(3))
    m = A.scale_dynamics(net, _x(), ALPHAS[:3] + [1.0], loss_fn=lambda out: F.cross_entropy(out, y))
    torch.testing.assert_close(m.weight_grad[:3], 1.0 / torch.tensor(ALPHAS[:3], dtype=DT),
                               rtol=1e-8, atol=0)


def test_scale_dynamics_leaves_model_exactly_as_found():
    net = _mlp("bn").eval()
    net.head.weight.grad = torch.ones_like(net.head.weight)
    state = _state(net)
    A.scale_dynamics(net, _x(), ALPHAS, mode="train")
    _assert_same_state(net, state)


@pytest.mark.parametrize("start_in_eval", [False, True])
def test_scale_dynamics_restores_model_when_it_raises(start_in_eval):
    net = _mlp("bn").train(not start_in_eval)
    hooks_before = [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                    for m in net.modules()]
    state = _state(net)
    with pytest.raises(ValueError, match="output_grad has shape"):
        A.scale_dynamics(net, _x(), ALPHAS, output_grad=torch.ones(2, 2, dtype=DT), mode="train")
    _assert_same_state(net, state)
    assert all(m.training == (not start_in_eval) for m in net.modules())
    assert hooks_before == [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                            for m in net.modules()]


def test_scale_dynamics_rejects_bad_arguments():
    net = _mlp("bn")
    with pytest.raises(ValueError, match="alphas has 3 entries but there are 4 layers"):
        A.scale_dynamics(net, _x(), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="positive"):
        A.scale_dynamics(net, _x(), [1.0, -2.0, 3.0, 1.0])
    with pytest.raises(ValueError, match="'nope' is not a module"):
        A.scale_dynamics(net, _x(), [1.0], layers=["nope"])
    with pytest.raises(ValueError, match="mode must be"):
        A.scale_dynamics(net, _x(), ALPHAS, mode="inference")
    with pytest.raises(TypeError, match="nn.Module"):
        A.scale_dynamics("net", _x(), ALPHAS)
    wn = MLP(10, 3, width=8, depth=1, norm="wn").to(DT)
    with pytest.raises(ValueError, match="parametrized weight"):
        A.scale_dynamics(wn, _x(), [2.0], layers=["layers.0.0"])


# ----------------------------------------------------------------------------- invariance table

T = list(A.TRANSFORMS)
# Expected entries, derived by hand for y = N(W x) on x: (N, C_in, P) with P = 4 positions:
# BN pools over (N, P) per channel, LN over (C, P) per sample, IN over P per sample and channel,
# GN over (C/G, P); WN normalizes each row of W, WS standardizes each row of W.
#          w-rescale w-recenter row-rescale d-rescale d-recenter sample-rescale
EXPECTED = {
    "bn": [True, False, True, True, True, False],
    "ln": [True, False, False, True, False, True],
    "in": [True, False, True, True, True, True],
    "gn": [True, False, False, True, False, True],
    "wn": [True, False, True, False, False, False],
    "ws": [True, False, True, False, False, False],
}


@pytest.mark.parametrize("norm", list(EXPECTED))
@pytest.mark.parametrize("j,transform", list(enumerate(T)))
def test_invariance_table_entry(norm, j, transform):
    kw = {"num_groups": 2} if norm == "gn" else None
    err = A.invariance_error(norm, transform, norm_kwargs=kw)
    # invariant: rounding plus eps = 1e-10 effects (< 1e-6); not invariant: order 1 (> 1e-2)
    if EXPECTED[norm][j]:
        assert err < 1e-6, (norm, transform, err)
    else:
        assert err > 1e-2, (norm, transform, err)


def test_invariance_table_decides_like_the_entries():
    table = A.invariance_table(list(EXPECTED))
    assert table.transforms == T
    assert table.as_dict() == {n: dict(zip(T, row)) for n, row in EXPECTED.items()}
    # the decision does not hinge on tol: a gap of at least 1e4 between the two classes
    inv = table.invariant
    assert float(table.errors[~inv].min()) > 1e4 * float(table.errors[inv].max())


def test_layer_and_group_norm_are_invariant_to_weight_recentering_only_for_feature_vectors():
    # One position per sample: W -> W + 1 c^T shifts every channel of a sample equally.
    for norm, kw in (("ln", None), ("gn", {"num_groups": 2})):
        assert A.invariance_error(norm, "weight_recentering", spatial_size=1, norm_kwargs=kw) < 1e-6
        assert A.invariance_error(norm, "weight_recentering", spatial_size=4, norm_kwargs=kw) > 1e-2


def test_group_norm_with_one_channel_per_group_is_instance_norm_in_the_table():
    row = [A.invariance_error("gn", t, norm_kwargs={"num_groups": 8}) < 1e-6 for t in T]
    assert row == EXPECTED["in"]


def test_invariance_error_raises_when_the_output_is_rounding_noise():
    with pytest.raises(ValueError, match="zero up to rounding"):
        A.invariance_error("in", "data_rescaling", spatial_size=1)


def test_invariance_table_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown transform 'shear'"):
        A.invariance_table(["bn"], ["shear"])
    with pytest.raises(ValueError, match="unknown normalizer 'batchy'"):
        A.invariance_error("batchy", "data_rescaling")


def test_scale_invariant_parameters_are_the_weights_in_front_of_batch_norm():
    net = _mlp("bn", eps=1e-5)
    with torch.no_grad():  # non-zero BN shifts: the gains are no longer invariant
        for layer in net.layers:
            layer[1].bias.normal_()
    state = _state(net)
    names = A.scale_invariant_parameters(net, _x())
    assert names == ["layers.0.0.weight", "layers.1.0.weight", "layers.2.0.weight"]
    assert A.scale_invariant_parameters(_mlp(None), _x()) == []
    _assert_same_state(net, state)


# ------------------------------------------------------------------------ effective learning rate


def _invariant_net(seed=0):
    """Every parameter scale invariant: linear maps each followed by BN without affine."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(6, 12, bias=False), normlib.create_norm("bn", 12, affine=False, eps=1e-12), nn.ReLU(),
        nn.Linear(12, 4, bias=False), normlib.create_norm("bn", 4, affine=False, eps=1e-12),
    )
    return net.to(DT)


def _data(n=128, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=DT)
    return x, (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()


def test_sgd_without_weight_decay_grows_squared_norm_by_squared_step():
    d = A.sgd_norm_dynamics(_invariant_net(), _data(), F.cross_entropy, lr=0.3, steps=30, batch_size=32)
    growth = d.norms[1:] ** 2 - d.norms[:-1] ** 2
    # ||w+||^2 = ||w||^2 + lr^2 ||g||^2 because g is orthogonal to w (eps = 1e-12: rel. 1e-8)
    torch.testing.assert_close(growth, 0.3**2 * d.grad_norms**2, rtol=1e-8, atol=0)
    assert bool((d.effective_lr[1:] < d.effective_lr[:-1]).all())


def test_scaled_weights_with_scaled_learning_rate_follow_the_same_directions():
    c = 3.0
    net, big = _invariant_net(), _invariant_net()
    with torch.no_grad():
        for p in big.parameters():
            p.mul_(c)
    d1 = A.sgd_norm_dynamics(net, _data(), F.cross_entropy, lr=0.2, steps=25, batch_size=32)
    d2 = A.sgd_norm_dynamics(big, _data(), F.cross_entropy, lr=0.2 * c**2, steps=25, batch_size=32)
    # same losses and angular updates; weights equal up to the factor c (rel. 1e-8)
    torch.testing.assert_close(d1.losses, d2.losses, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(d1.angular_update, d2.angular_update, rtol=1e-6, atol=1e-12)
    for p1, p2 in zip(d1.model.parameters(), d2.model.parameters()):
        torch.testing.assert_close(c * p1, p2, rtol=1e-8, atol=1e-12)


def test_weight_decay_brings_angular_update_to_sqrt_2_lr_wd_from_either_side():
    lr, wd = 0.5, 0.05
    target = A.equilibrium_angular_update(lr, wd)
    finals = []
    for scale in (0.3, 5.0):
        net = _invariant_net()
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(scale)
        d = A.sgd_norm_dynamics(net, _data(512), F.cross_entropy, lr=lr, steps=150, batch_size=16,
                                weight_decay=wd)
        # the balance fixes the mean square angle: compare the root mean square of the last 50
        late = d.angular_update[-50:].pow(2).mean(0).sqrt()
        # first-order theory with gradient noise: within 15% of sqrt(2 lr wd) = 0.224
        assert torch.all((late / target - 1).abs() < 0.15), (late, target)
        finals.append(d.norms[-30:].mean(0))
    # starting 17x apart, the norms meet at the same equilibrium (within 15%)
    assert torch.all((finals[0] / finals[1] - 1).abs() < 0.15), finals


def test_equilibrium_norm_is_the_fixed_point_of_the_norm_recursion():
    lr, wd, g = 0.1, 1e-3, 2.0
    w = A.equilibrium_norm(lr, wd, g)
    after = math.sqrt((1 - lr * wd) ** 2 * w**2 + lr**2 * g**2 / w**2)
    assert math.isclose(after, w, rel_tol=1e-12)
    assert math.isclose(A.equilibrium_angular_update(lr, wd, momentum=0.9), math.sqrt(2 * lr * wd / 1.9))


def test_sgd_norm_dynamics_leaves_model_untouched_and_rejects_bad_arguments():
    net = _invariant_net()
    state = _state(net)
    A.sgd_norm_dynamics(net, _data(), F.cross_entropy, lr=0.1, steps=3, batch_size=16)
    _assert_same_state(net, state)
    with pytest.raises(ValueError, match="batch_size=500 is larger than the data"):
        A.sgd_norm_dynamics(net, _data(), F.cross_entropy, lr=0.1, steps=3, batch_size=500)
    with pytest.raises(ValueError, match="no scale-invariant parameter"):
        A.sgd_norm_dynamics(nn.Linear(6, 3).to(DT), _data(), F.cross_entropy, lr=0.1, steps=3)
    with pytest.raises(ValueError, match="unknown parameter 'w'"):
        A.sgd_norm_dynamics(net, _data(), F.cross_entropy, lr=0.1, steps=3, params=["w"])
    with pytest.raises(ValueError, match="lr must be a positive float"):
        A.sgd_norm_dynamics(net, _data(), F.cross_entropy, lr=0.0, steps=3)
    with pytest.raises(ValueError, match="momentum"):
        A.equilibrium_angular_update(0.1, 0.1, momentum=1.0)


# ----------------------------------------------------------------------------------- SND


def _correlated(m=4000, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=DT)
    return torch.randn(m, d, generator=g, dtype=DT) @ mix.T + 2.0


def _nearly_isotropic(m=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, 4, generator=g, dtype=DT) * torch.tensor([1.0, 1.02, 1.04, 1.06], dtype=DT)


def test_empirical_snd_is_the_mean_distance_from_the_mean_output():
    out = torch.tensor([[0.0, 0.0], [2.0, 0.0], [4.0, 3.0]], dtype=DT)
    centre = out.mean(0)
    expected = sum(float((o - centre).norm()) for o in out) / 3
    assert math.isclose(A.empirical_snd(out), expected, rel_tol=1e-15)


def test_normalize_in_batches_of_the_whole_data_is_batch_norm_and_zca_of_the_data():
    data = _correlated(m=50)
    out = A.normalize_in_batches(data, 7, 50, num_batches=3)
    ref = F.batch_norm(data, None, None, training=True, eps=1e-5)[7]  # torch's BN as the oracle
    torch.testing.assert_close(out, ref.expand(3, -1), rtol=1e-10, atol=1e-12)
    centred = data - data.mean(0)
    evals, evecs = torch.linalg.eigh(centred.T @ centred / 50 + 1e-5 * torch.eye(4, dtype=DT))
    zca = evecs @ torch.diag(evals.rsqrt()) @ evecs.T @ centred[7]  # D Lambda^-1/2 D^T (x - mu)
    out = A.normalize_in_batches(data, 7, 50, method="zca", num_batches=2)
    torch.testing.assert_close(out, zca.expand(2, -1), rtol=1e-8, atol=1e-10)


def test_snd_is_zero_when_every_batch_is_the_whole_data():
    est = A.stochastic_normalization_disturbance(_correlated(m=40), 40, method="cd", num_batches=5)
    assert est.value < 1e-10  # rounding only: every batch has the same statistics


@pytest.mark.parametrize("method", ["bn", "zca", "cd", "iternorm"])
def test_snd_falls_as_inverse_square_root_of_batch_size(method):
    kw = {"num_samples": 16, "num_batches": 50}
    small = A.stochastic_normalization_disturbance(_correlated(), 16, method=method, **kw)
    large = A.stochastic_normalization_disturbance(_correlated(), 64, method=method, **kw)
    # 1/sqrt(4) = 0.5 (times the finite-population factor 0.99); sampling noise: +-0.12
    assert 0.38 < large.value / small.value < 0.62, (small.value, large.value)


def test_snd_of_batch_norm_sweep_has_log_log_slope_minus_one_half():
    sweep = A.snd_sweep(_correlated(), [8, 16, 32, 64, 128], ["bn"], num_samples=16, num_batches=50)
    assert abs(sweep.slope("bn") + 0.5) < 0.1, sweep.values  # slope -1/2 +- 0.1


def test_pca_snd_does_not_fall_with_batch_size_on_nearly_equal_eigenvalues():
    data = _nearly_isotropic()
    sweep = A.snd_sweep(data, [16, 64], ["bn", "pca", "zca"], num_samples=16, num_batches=50)
    bn, pca, zca = sweep.values
    # PCA's axes swap and flip from batch to batch: its SND stays (ratio > 0.8) ...
    assert pca[1] / pca[0] > 0.8, pca
    # ... and is several times that of BN and ZCA at the larger batch
    assert pca[1] > 3 * zca[1] and pca[1] > 3 * bn[1], sweep.values


def test_snd_with_same_seed_is_reproducible():
    data = _correlated(m=300)
    a = A.stochastic_normalization_disturbance(data, 16, method="zca", num_batches=10, seed=4)
    b = A.stochastic_normalization_disturbance(data, 16, method="zca", num_batches=10, seed=4)
    assert torch.equal(a.per_sample, b.per_sample)


def test_snd_with_same_seed_normalizes_the_same_batches_for_every_method(monkeypatch):
    data = _correlated(m=300)
    seen = {}
    from normlib.analysis import stochasticity

    normalize = stochasticity._normalize_batches

    def recording(batches, method, eps, iterations):
        seen.setdefault(method, []).append(batches.clone())
        return normalize(batches, method, eps, iterations)

    monkeypatch.setattr(stochasticity, "_normalize_batches", recording)
    for method in ["bn", "zca", "pca", "cd", "iternorm"]:
        A.stochastic_normalization_disturbance(data, 16, method=method, num_batches=10, seed=4)
    A.stochastic_normalization_disturbance(data, 16, method="bn", num_batches=10, seed=5)
    batches = {m: torch.cat(v) for m, v in seen.items()}
    assert len(batches) == 5 and len(seen["bn"]) == 2
    reference = seen["bn"][0]
    for method, recorded in seen.items():
        assert torch.equal(recorded[0], reference), method
    assert not torch.equal(seen["bn"][1], reference)  # another seed, other batches


def test_snd_rejects_bad_arguments():
    data = _correlated(m=100)
    with pytest.raises(ValueError, match="batch_size=101 is larger than the data"):
        A.stochastic_normalization_disturbance(data, 101)
    with pytest.raises(ValueError, match="unknown normalization method 'svd'"):
        A.stochastic_normalization_disturbance(data, 16, method="svd")
    with pytest.raises(ValueError, match="needs batch_size > 4"):
        A.stochastic_normalization_disturbance(data, 4, method="zca")
    with pytest.raises(ValueError, match="num_samples=200 is larger"):
        A.stochastic_normalization_disturbance(data, 16, num_samples=200)
    with pytest.raises(ValueError, match="batch_size must be an int >= 2"):
        A.snd_sweep(data, [1, 16])
    with pytest.raises(TypeError, match="data must be a torch.Tensor"):
        A.stochastic_normalization_disturbance([[1.0]], 2)
    assert A.stochastic_normalization_disturbance(data, 16, method="cholesky", num_batches=4).method == "cd"


# --------------------------------------------------------------------- train / inference gap


def test_train_inference_discrepancy_falls_with_batch_size_and_running_estimate_is_close():
    data = _correlated()
    small = A.train_inference_discrepancy(data, 16, momentum=None, num_updates=200, num_samples=16)
    large = A.train_inference_discrepancy(data, 64, momentum=None, num_updates=200, num_samples=16)
    # the training output scatters around the inference output like the SND: about 1/sqrt(4)
    assert 0.35 < large.train_vs_eval / small.train_vs_eval < 0.65, (small, large)
    # a cumulative average over 200 batches (3200 or 12800 samples, expected error about
    # 0.03 or less) is far closer to the population than one batch is
    for r in (small, large):
        assert r.eval_vs_population < 0.3 * r.train_vs_population, r


def test_short_running_average_is_further_from_the_population_than_a_cumulative_one():
    data = _correlated()
    errors = {mom: [A.train_inference_discrepancy(data, 64, momentum=mom, num_updates=100,
                                                  num_samples=4, num_batches=2, seed=s).eval_vs_population
                    for s in range(3)]
              for mom in (None, 0.5)}
    # momentum 0.5 averages about 2 batches against 100: errors about 7x larger; mean of 3 seeds
    assert sum(errors[0.5]) > 2.5 * sum(errors[None]), errors


def test_averaged_whitening_matrices_are_biased_where_averaged_covariances_are_not():
    data = _correlated()
    kw = {"momentum": None, "num_updates": 200, "num_samples": 16, "num_batches": 2}
    by_matrix = A.train_inference_discrepancy(data, 16, method="zca", **kw)
    by_cov = A.train_inference_discrepancy(data, 16, method="zca",
                                           layer_kwargs={"running_stat": "covariance"}, **kw)
    # B = 16, d = 4: E[Sigma_B^(-1/2)] is far from Sigma^(-1/2) (measured 0.34 vs 0.04)
    assert by_matrix.eval_vs_population > 4 * by_cov.eval_vs_population, (by_matrix, by_cov)
    assert by_cov.eval_vs_population < 0.1, by_cov


def test_train_inference_discrepancy_rejects_bad_momentum():
    with pytest.raises(ValueError, match=r"momentum must be a float in \(0, 1\]"):
        A.train_inference_discrepancy(_correlated(m=100), 16, momentum=1.5)


def test_invariance_table_accepts_every_registered_weight_normalizer():
    from normlib.registry import _WEIGHT

    # One name per weight normalizer (the registry also holds aliases).
    names = sorted({fn: name for name, fn in _WEIGHT.items()}.values())
    assert {"wn", "own", "oni", "sn", "normprop"} <= {n for n in _WEIGHT}
    table = A.invariance_table(names)
    assert table.errors.shape[0] == len(names) >= 8 and torch.isfinite(table.errors).all()
