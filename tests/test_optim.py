"""Tests of normlib.optim: gradient normalization optimizers and wrappers.

Oracles: pytorch-optimizer's LARS and Lamb (configured to the same conventions,
see each test), reference formulas written here, and exact invariants (row
means under gradient centralization, unit block steps under gradient
normalization). Small float64 problems; parameters are compared after several
steps with tolerances near float64 rounding.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from pytorch_optimizer import LARS as PeerLARS
from pytorch_optimizer import Lamb as PeerLamb
from torch import nn

from normlib import optim as no

DT = torch.float64
TOL = 1e-11  # same arithmetic, possibly in a different order, over a few float64 steps


def _problem(seed: int = 0):
    """A small MLP regression problem: (model, inputs, targets)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(DT)
    x = torch.randn(32, 5, generator=g, dtype=DT)
    y = torch.randn(32, 3, generator=g, dtype=DT)
    return model, x, y


def _loss(model, x, y):
    return ((model(x) - y) ** 2).mean()


def _train(model, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()


def _assert_same_params(a: nn.Module, b: nn.Module, atol: float = TOL):
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=atol, msg=name)


def _dist(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm())


def _assert_moved(model: nn.Module, start: nn.Module):
    moved = max(float((p - q).detach().abs().max())
                for p, q in zip(model.parameters(), start.parameters()))
    assert moved > 1e-4  # the comparison is about real steps, not a no-op


# ----------------------------------------------------------- pytorch-optimizer oracles


@pytest.mark.parametrize(
    "kw",
    [
        dict(lr=0.5, momentum=0.9, weight_decay=0.0, trust_coefficient=1e-2),
        dict(lr=0.5, momentum=0.9, weight_decay=1e-2, trust_coefficient=1e-2),
        dict(lr=0.5, momentum=0.9, weight_decay=1e-2, trust_coefficient=1e-2, nesterov=True),
        dict(lr=0.5, momentum=0.8, dampening=0.1, weight_decay=5e-3, trust_coefficient=2e-2),
        dict(lr=0.1, momentum=0.0, weight_decay=1e-3, trust_coefficient=1e-2),
    ],
)
def test_lars_takes_the_same_steps_as_pytorch_optimizer_lars(kw):
    # Same conventions on both sides: trust ratio eta ||w|| / (||g|| + wd ||w||) on tensors
    # with ndim > 1, weight decay inside it, plain momentum SGD for biases.
    ours, x, y = _problem()
    theirs, start = copy.deepcopy(ours), copy.deepcopy(ours)
    _train(ours, no.LARS(ours.parameters(), **kw), x, y, 6)
    _train(theirs, PeerLARS(theirs.parameters(), **kw), x, y, 6)
    _assert_moved(ours, start)
    _assert_same_params(ours, theirs)


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("large_weights", [False, True])
def test_lamb_takes_the_same_steps_as_pytorch_optimizer_lamb(decoupled, weight_decay,
                                                             large_weights):
    # pytorch-optimizer's Lamb: no bias correction with adam_debias=True (its default
    # divides the step by 1 - beta1^t only); weight_decouple=False is the paper's
    # u = r + wd w; the weight norm is clipped at 10 (our max_weight_norm=10); it
    # trust-scales and decays every tensor (our exclude_vectors=False).
    ours, x, y = _problem()
    if large_weights:  # exercise the clipping of ||w|| at 10
        with torch.no_grad():
            ours[0].weight.mul_(20.0)
    theirs, start = copy.deepcopy(ours), copy.deepcopy(ours)
    kw = dict(lr=0.02, betas=(0.9, 0.99), eps=1e-6, weight_decay=weight_decay)
    _train(ours, no.LAMB(ours.parameters(), bias_correction=False, max_weight_norm=10.0,
                         decoupled_weight_decay=decoupled, exclude_vectors=False, **kw), x, y, 6)
    _train(theirs, PeerLamb(theirs.parameters(), adam_debias=True, weight_decouple=decoupled,
                            **kw), x, y, 6)
    _assert_moved(ours, start)
    _assert_same_params(ours, theirs)


# ------------------------------------------------------------- reference formulas


def _reference_lamb(params, grads_per_step, lr, b1, b2, eps, wd, nesterov_lans=False):
    """LAMB (You et al., 2020, Algorithm 2) and LANS (Zheng et al., 2020), written out."""
    params = [p.clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, (p, g) in enumerate(zip(params, grads)):
            if nesterov_lans:
                g = g / g.norm()
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            denom = (v[i] / (1 - b2**t)).sqrt() + eps
            r = m[i] / (1 - b1**t) / denom + wd * p
            phi = min(float(p.norm()), 10.0)
            step = phi / (float(r.norm()) + eps) * r
            if nesterov_lans:
                c = g / denom + wd * p
                step = b1 * step + (1 - b1) * phi / (float(c.norm()) + eps) * c
            params[i] = p - lr * step
    return params


def _grads_along_path(opt_cls, kw, steps):
    """Run opt_cls on the problem; return (start params, per-step grads, end params)."""
    model, x, y = _problem()
    start = [p.detach().clone() for p in model.parameters()]
    opt = opt_cls(model.parameters(), **kw)
    grads = []
    for _ in range(steps):
        opt.zero_grad()
        _loss(model, x, y).backward()
        grads.append([p.grad.detach().clone() for p in model.parameters()])
        opt.step()
    return start, grads, [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("opt_cls, lans", [(no.LAMB, False), (no.LANS, True)])
def test_lamb_and_lans_with_bias_correction_match_the_papers_algorithms(opt_cls, lans):
    kw = dict(lr=0.01, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01, exclude_vectors=False)
    start, grads, end = _grads_along_path(opt_cls, kw, 5)
    expected = _reference_lamb(start, grads, 0.01, 0.9, 0.99, 1e-6, 0.01, nesterov_lans=lans)
    for got, want in zip(end, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=TOL)


def test_lars_step_length_is_lr_times_trust_coefficient_times_weight_norm():
    model, x, y = _problem()
    start = copy.deepcopy(model)
    opt = no.LARS(model.parameters(), lr=0.5, momentum=0.0, trust_coefficient=0.01)
    _train(model, opt, x, y, 1)
    for (name, p), q in zip(model.named_parameters(), start.parameters()):
        if p.ndim >= 2:  # the gradient's scale is gone: |step| = lr * eta * ||w||
            assert abs(_dist(p, q) - 0.5 * 0.01 * float(q.detach().norm())) < 1e-12, name


def test_lars_treats_vectors_as_momentum_sgd_unless_included():
    model, x, y = _problem()
    ref = copy.deepcopy(model)
    _train(model, no.LARS(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1), x, y, 1)
    _train(ref, torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9), x, y, 1)
    # Biases: no trust ratio, no weight decay; SGD's first buffer is the gradient, as here.
    torch.testing.assert_close(model[0].bias, ref[0].bias, rtol=0, atol=TOL)
    assert not torch.allclose(model[0].weight, ref[0].weight)
    model3, _, _ = _problem()
    opt = no.LARS(model3.parameters(), lr=0.1, momentum=0.0, trust_coefficient=0.01,
                  exclude_vectors=False)
    before = model3[0].bias.detach().clone()
    _train(model3, opt, x, y, 1)
    assert abs(_dist(model3[0].bias, before) - 0.1 * 0.01 * float(before.norm())) < 1e-12


def test_gradient_centralization_equals_sgd_on_centralized_gradients():
    model, x, y = _problem()
    ref = copy.deepcopy(model)
    _train(model, no.GradientCentralization(torch.optim.SGD(model.parameters(), lr=0.1,
                                                            momentum=0.9)), x, y, 4)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for _ in range(4):
        opt.zero_grad()
        _loss(ref, x, y).backward()
        for p in ref.parameters():
            if p.ndim > 1:  # Yong et al. (2020), eq. 3, per output row
                p.grad -= p.grad.mean(dim=1, keepdim=True)
        opt.step()
    _assert_same_params(model, ref)


def test_gradient_centralization_keeps_every_weight_row_mean_fixed_under_sgd():
    model, x, y = _problem()
    means = [p.detach().mean(1).clone() for p in model.parameters() if p.ndim > 1]
    opt = no.GradientCentralization(torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9))
    _train(model, opt, x, y, 10)
    after = [p.detach().mean(1) for p in model.parameters() if p.ndim > 1]
    for a, b in zip(after, means):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


def test_gradient_centralization_conv_only_skips_linear_weights():
    conv = nn.Conv1d(2, 3, 3).to(DT)
    lin = nn.Linear(4, 2).to(DT)
    params = list(conv.parameters()) + list(lin.parameters())
    opt = no.GradientCentralization(torch.optim.SGD(params, lr=1.0), conv_only=True)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert torch.equal(conv.weight.grad, torch.zeros_like(conv.weight))
    assert torch.equal(lin.weight.grad, torch.ones_like(lin.weight))


def test_gradient_normalization_moves_every_tensor_by_lr_under_plain_sgd():
    model, x, y = _problem()
    start = copy.deepcopy(model)
    opt = no.GradientNormalization(torch.optim.SGD(model.parameters(), lr=0.05), eps=0.0)
    _train(model, opt, x, y, 1)
    for p, q in zip(model.parameters(), start.parameters()):
        assert abs(_dist(p, q) - 0.05) < 1e-14


def test_gradient_normalization_matches_adam_on_normalized_gradients():
    model, x, y = _problem()
    ref = copy.deepcopy(model)
    _train(model, no.GradientNormalization(torch.optim.Adam(model.parameters(), lr=0.01),
                                           eps=1e-8), x, y, 4)
    opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    for _ in range(4):
        opt.zero_grad()
        _loss(ref, x, y).backward()
        for p in ref.parameters():
            p.grad /= p.grad.norm() + 1e-8
        opt.step()
    _assert_same_params(model, ref)


def test_trust_ratios_are_one_where_undefined():
    z, g = torch.zeros(3, dtype=DT), torch.ones(3, dtype=DT)
    assert float(no.lars_trust_ratio(z, g)) == 1.0
    assert float(no.lars_trust_ratio(g, z)) == 1.0
    assert float(no.lamb_trust_ratio(z, g)) == 1.0
    assert float(no.lamb_trust_ratio(g, z)) == 1.0
    assert math.isclose(float(no.lars_trust_ratio(g, 2 * g, 0.1, 0.5)), 0.1 / 2.5)


# ------------------------------------------------------- optimizer conventions


_FACTORIES = {
    "lars": lambda ps: no.LARS(ps, lr=0.5, momentum=0.9, weight_decay=1e-3,
                               trust_coefficient=1e-2),
    "lamb": lambda ps: no.LAMB(ps, lr=0.01, weight_decay=0.01),
    "lans": lambda ps: no.LANS(ps, lr=0.01, weight_decay=0.01),
    "gc_sgd": lambda ps: no.GradientCentralization(torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
    "gn_adam": lambda ps: no.GradientNormalization(torch.optim.Adam(ps, lr=0.01)),
}


@pytest.mark.parametrize("name", sorted(_FACTORIES))
def test_state_dict_round_trip_continues_training_identically(name):
    make = _FACTORIES[name]
    model, x, y = _problem()
    opt = make(model.parameters())
    _train(model, opt, x, y, 3)
    clone = copy.deepcopy(model)
    clone_opt = make(clone.parameters())
    clone_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    _train(model, opt, x, y, 3)
    _train(clone, clone_opt, x, y, 3)
    _assert_same_params(model, clone, atol=0.0)
    assert opt.state_dict()["param_groups"] == clone_opt.state_dict()["param_groups"]


@pytest.mark.parametrize("name", sorted(_FACTORIES))
def test_step_with_closure_returns_the_loss_and_takes_the_same_step(name):
    make = _FACTORIES[name]
    model, x, y = _problem()
    ref = copy.deepcopy(model)
    opt = make(model.parameters())

    def closure():
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert torch.is_tensor(loss) and float(loss.detach()) == float(_loss(ref, x, y).detach())
    _train(ref, make(ref.parameters()), x, y, 1)
    _assert_same_params(model, ref, atol=0.0)


@pytest.mark.parametrize("name", sorted(_FACTORIES))
def test_param_groups_keep_their_own_learning_rates(name):
    model, x, y = _problem()
    start = copy.deepcopy(model)
    opt = _FACTORIES[name]([{"params": model[0].parameters()},
                            {"params": model[2].parameters(), "lr": 0.0}])
    _train(model, opt, x, y, 2)
    assert torch.equal(model[2].weight, start[2].weight)
    assert not torch.equal(model[0].weight, start[0].weight)


def test_wrappers_share_groups_with_the_wrapped_optimizer_and_its_schedulers():
    model, x, y = _problem()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = no.GradientCentralization(sgd)
    assert isinstance(opt, torch.optim.Optimizer)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _train(model, opt, x, y, 1)
    sched.step()
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.05)
    extra = nn.Parameter(torch.ones(2, 2, dtype=DT))
    opt.add_param_group({"params": [extra]})
    assert sgd.param_groups[-1]["params"][0] is extra
    assert sgd.param_groups[-1]["centralize_conv_only"] is False


def test_wrappers_stack():
    model, x, y = _problem()
    opt = no.GradientNormalization(no.GradientCentralization(
        torch.optim.SGD(model.parameters(), lr=0.1)), eps=0.0)
    start = copy.deepcopy(model)
    _train(model, opt, x, y, 1)
    w, w0 = model[0].weight, start[0].weight
    # Normalized then centralized: a step of length <= lr with unchanged row means.
    assert _dist(w, w0) <= 0.1 + 1e-12
    torch.testing.assert_close(w.mean(1), w0.mean(1), rtol=0, atol=1e-14)


# ------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda ps: no.LARS(ps, lr=-0.1), "lr must be a non-negative"),
        (lambda ps: no.LARS(ps, trust_coefficient=0.0), "trust_coefficient must be a positive"),
        (lambda ps: no.LARS(ps, momentum=1.0), r"momentum must be a float in \[0, 1\)"),
        (lambda ps: no.LARS(ps, momentum=0.0, nesterov=True), "nesterov=True needs momentum"),
        (lambda ps: no.LARS(ps, weight_decay=-1e-4), "weight_decay must be a non-negative"),
        (lambda ps: no.LAMB(ps, betas=(0.9, 1.0)), r"betas\[1\] must be a float in \[0, 1\)"),
        (lambda ps: no.LAMB(ps, betas=0.9), "betas must be a pair"),
        (lambda ps: no.LAMB(ps, eps=-1.0), "eps must be a non-negative"),
        (lambda ps: no.LANS(ps, max_weight_norm=0.0), "max_weight_norm must be a positive"),
        (lambda ps: no.GradientNormalization(torch.optim.SGD(ps, lr=0.1), eps=-1.0),
         "eps must be a non-negative"),
    ],
)
def test_bad_hyperparameters_raise_value_errors_naming_them(make, match):
    model, _, _ = _problem()
    with pytest.raises(ValueError, match=match):
        make(model.parameters())


def test_wrappers_reject_things_that_are_not_optimizers():
    model, _, _ = _problem()
    with pytest.raises(TypeError, match="must be a torch.optim.Optimizer"):
        no.GradientCentralization(model.parameters())
    with pytest.raises(TypeError, match="conv_only must be True or False"):
        no.GradientCentralization(torch.optim.SGD(model.parameters(), lr=0.1), conv_only="yes")


def test_relative_updates_equal_lr_times_gradient_ratio_for_sgd_and_are_uniform_for_lars():
    model, x, y = _problem()
    grads_model = copy.deepcopy(model)
    _loss(grads_model, x, y).backward()
    ratios = {n: float(p.grad.norm() / p.detach().norm()) for n, p in grads_model.named_parameters()}

    def closure_for(opt, m):
        def closure():
            opt.zero_grad()
            loss = _loss(m, x, y)
            loss.backward()
            return loss
        return closure

    sgd_model = copy.deepcopy(model)
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=0.1)
    rel = no.relative_updates(sgd_model, sgd, closure_for(sgd, sgd_model))
    for name, r in rel.items():
        assert abs(r - 0.1 * ratios[name]) < 1e-12 * max(1.0, r), name
    lars = no.LARS(model.parameters(), lr=0.1, momentum=0.0, trust_coefficient=0.02)
    rel = no.relative_updates(model, lars, closure_for(lars, model))
    for name, r in rel.items():
        if name.endswith("weight"):
            assert abs(r - 0.1 * 0.02) < 1e-14, name


def test_relative_updates_leave_model_grads_buffers_and_optimizer_state_as_found():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).to(DT)
    _, x, y = _problem()
    opt = no.LAMB(model.parameters(), lr=0.01)
    _train(model, opt, x, y, 2)  # non-trivial optimizer state and grads
    snapshot = copy.deepcopy(model.state_dict())
    grads = [p.grad.clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())

    def closure():
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        return loss

    def failing_closure():
        closure()
        raise RuntimeError("closure failed")

    rel = no.relative_updates(model, opt, closure)
    assert all(r > 0 for r in rel.values())
    with pytest.raises(RuntimeError, match="closure failed"):
        no.relative_updates(model, opt, failing_closure)
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshot[key]), key
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)
    after = opt.state_dict()
    assert after["param_groups"] == state["param_groups"]
    for i, s in state["state"].items():
        for key, value in s.items():
            assert torch.equal(torch.as_tensor(after["state"][i][key]), torch.as_tensor(value)), key


# ------------------------------------------ excluding norm and bias parameters: one rule


def _normalized_net(seed: int = 0):
    """Conv -> BN -> conv -> GN -> pool -> LN -> linear, float64, with biases on the convs."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(8), nn.Linear(8, 3),
    ).to(DT)


def _net_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (_normalized_net(seed), torch.randn(16, 3, 6, 6, generator=g, dtype=DT),
            torch.randn(16, 3, generator=g, dtype=DT))


_ADAPTIVE = {
    "lars": lambda ps, wd: no.LARS(ps, lr=0.5, momentum=0.9, weight_decay=wd, trust_coefficient=1e-2),
    "lamb": lambda ps, wd: no.LAMB(ps, lr=0.01, weight_decay=wd),
    "lamb_decoupled": lambda ps, wd: no.LAMB(ps, lr=0.01, weight_decay=wd, decoupled_weight_decay=True),
    "lans": lambda ps, wd: no.LANS(ps, lr=0.01, weight_decay=wd),
}


def test_param_groups_put_norm_parameters_and_biases_in_the_excluded_group():
    model = _normalized_net()
    decay, excluded = no.param_groups(model, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["0.weight", "3.weight", "9.weight"]
    assert sorted(names[id(p)] for p in excluded["params"]) == sorted(
        ["0.bias", "1.weight", "1.bias", "3.bias", "4.weight", "4.bias", "8.weight", "8.bias", "9.bias"])
    assert (decay["weight_decay"], decay["exclude"]) == (0.05, False)
    assert (excluded["weight_decay"], excluded["exclude"]) == (0.0, True)
    # every trainable parameter once, in the order of named_parameters within each group
    assert len(decay["params"]) + len(excluded["params"]) == len(list(model.parameters()))


def test_param_groups_find_normlib_normalizers_by_type_not_by_shape():
    from normlib.models import resnet20
    from normlib.multimode import ModeNorm
    from normlib.recovery import AttentiveNorm

    attentive, mode = AttentiveNorm(8), ModeNorm(8)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), attentive, mode)
    decay, excluded = no.param_groups(model)
    excluded_ids = {id(p) for p in excluded["params"]}
    assert attentive.weight.ndim == 2 and id(attentive.weight) in excluded_ids  # 2-D, but a normalizer's
    assert id(mode.weight) in excluded_ids and id(mode.gate.bias) in excluded_ids
    assert id(mode.gate.weight) in {id(p) for p in decay["params"]}  # the gate's Linear is a layer
    # normlib's BatchNorm in a ResNet: every scale and shift excluded, every conv weight decayed
    net = resnet20(width=4, norm="bn")
    decay, excluded = no.param_groups(net)
    assert all(p.ndim == 4 or p is net.head.weight for p in decay["params"])
    assert all(p.ndim == 1 for p in excluded["params"])
    assert len(excluded["params"]) == sum(p.ndim == 1 for p in net.parameters())


def test_param_groups_exclude_the_gains_of_weight_normalizers_but_not_their_directions():
    from normlib.models import VGG

    model = VGG(3, 2, depth=3, width=4, norm="wn")
    decay, excluded = no.param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)].rsplit(".", 1)[-1] for p in excluded["params"]} == {"original0", "bias"}
    assert sum(names[id(p)].endswith("original1") for p in decay["params"]) == 3
    torch_wn = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(4, 3, bias=False)))
    decay, excluded = no.param_groups(torch_wn)
    assert [p.shape for p in excluded["params"]] == [torch.Size([3, 1])]  # g
    sws = VGG(3, 2, depth=3, width=4, norm="sws")
    _, excluded = no.param_groups(sws)
    assert sum("gain" in n for n, p in sws.named_parameters()
               if id(p) in {id(q) for q in excluded["params"]}) == 3


def test_param_groups_on_a_torch_transformer_layer_with_names_types_and_rules():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    decay, excluded = no.param_groups(layer, weight_decay=0.1)
    names = {id(p): n for n, p in layer.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == sorted(
        ["self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight"])
    assert all(names[id(p)].endswith("bias") or names[id(p)].startswith("norm")
               for p in excluded["params"])
    # a name pattern, a module type, timm's no_weight_decay() and the ndim rule
    _, ex = no.param_groups(layer, no_weight_decay=["linear*.weight"])
    assert {"linear1.weight", "linear2.weight"} <= {names[id(p)] for p in ex["params"]}
    _, ex = no.param_groups(layer, exclude=("bias", nn.LayerNorm))
    assert len(ex["params"]) == len(excluded["params"])
    layer.no_weight_decay = lambda: {"self_attn.in_proj_weight"}
    _, ex = no.param_groups(layer)
    assert "self_attn.in_proj_weight" in {names[id(p)] for p in ex["params"]}
    (only,) = no.param_groups(nn.Linear(3, 2, bias=False), exclude=("vectors",))
    assert only["exclude"] is False
    frozen = nn.Linear(3, 2)
    frozen.bias.requires_grad_(False)
    assert [len(g["params"]) for g in no.param_groups(frozen)] == [1]


@pytest.mark.parametrize("exclude, error", [(("norms",), ValueError), ((nn.Linear(2, 2),), ValueError),
                                            (3, TypeError)])
def test_param_groups_reject_unknown_rules(exclude, error):
    with pytest.raises(error, match="exclude must be"):
        no.param_groups(nn.Linear(2, 2), exclude=exclude)
    with pytest.raises(TypeError, match="model must be"):
        no.param_groups([nn.Linear(2, 2)])


@pytest.mark.parametrize("name", sorted(_ADAPTIVE))
def test_excluded_parameters_get_no_weight_decay_and_no_trust_ratio(name):
    # one step from the same start: an excluded parameter's step does not depend on the
    # weight decay, an included one's does; every excluded trust ratio is 1
    steps = {}
    for wd in (0.0, 0.5):
        model, x, y = _net_problem()
        opt = _ADAPTIVE[name](no.param_groups(model, wd), wd)
        _train(model, opt, x, y, 1)
        steps[wd] = dict(model.named_parameters())
        excluded = opt.param_groups[1]["params"]
        assert all(float(opt.state[p]["trust_ratio"]) == 1.0 for p in excluded)
    for n, p in steps[0.0].items():
        same = torch.equal(p, steps[0.5][n])
        is_norm_or_bias = n.endswith("bias") or n.split(".")[0] in ("1", "4", "8")
        assert same == is_norm_or_bias, n


@pytest.mark.parametrize("name", sorted(_ADAPTIVE))
def test_the_shape_rule_and_the_type_rule_agree_where_norm_parameters_are_vectors(name):
    ours, x, y = _net_problem()
    ref = copy.deepcopy(ours)
    _train(ours, _ADAPTIVE[name](ours.parameters(), 0.05), x, y, 4)        # exclude_vectors=True
    _train(ref, _ADAPTIVE[name](no.param_groups(ref, 0.05), 0.05), x, y, 4)  # by type and name
    _assert_same_params(ours, ref, atol=0.0)


def test_excluded_lamb_parameters_take_adams_step_and_excluded_lars_parameters_sgds():
    model, x, y = _net_problem()
    adam_ref, sgd_ref, lars_model = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    _train(model, no.LAMB(no.param_groups(model, 0.1), lr=0.01, betas=(0.9, 0.99), eps=1e-6), x, y, 1)
    _train(adam_ref, torch.optim.Adam(adam_ref.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-6), x, y, 1)
    _train(lars_model, no.LARS(no.param_groups(lars_model, 0.1), lr=0.1, momentum=0.9), x, y, 1)
    _train(sgd_ref, torch.optim.SGD(sgd_ref.parameters(), lr=0.1, momentum=0.9), x, y, 1)
    for n, p in model.named_parameters():
        if n.endswith("bias") or n.split(".")[0] in ("1", "4", "8"):
            torch.testing.assert_close(p, dict(adam_ref.named_parameters())[n], rtol=0, atol=TOL)
            torch.testing.assert_close(dict(lars_model.named_parameters())[n],
                                       dict(sgd_ref.named_parameters())[n], rtol=0, atol=TOL)


@pytest.mark.parametrize("name", sorted(_ADAPTIVE))
def test_a_groups_exclude_key_overrides_the_shape_rule(name):
    model, x, y = _problem()
    start = copy.deepcopy(model)
    opt = _ADAPTIVE[name]([{"params": [model[0].bias], "exclude": False},
                           {"params": [model[0].weight], "exclude": True},
                           {"params": list(model[2].parameters())}], 0.1)
    _train(model, opt, x, y, 1)
    assert float(opt.state[model[0].weight]["trust_ratio"]) == 1.0
    assert float(opt.state[model[2].bias]["trust_ratio"]) == 1.0  # no key: a vector is excluded
    assert float(opt.state[model[0].bias]["trust_ratio"]) != 1.0
    assert float(opt.state[model[2].weight]["trust_ratio"]) != 1.0
    _assert_moved(model, start)


def test_param_groups_work_with_torch_optimizers():
    model, x, y = _net_problem()
    ref = copy.deepcopy(model)
    _train(model, torch.optim.AdamW(no.param_groups(model, 0.1), lr=0.01), x, y, 2)
    wd = {id(p): 0.1 for p in ref.parameters()}
    for g in no.param_groups(ref, 0.1):
        for p in g["params"]:
            wd[id(p)] = g["weight_decay"]
    groups = [{"params": [p], "weight_decay": wd[id(p)]} for p in ref.parameters()]
    _train(ref, torch.optim.AdamW(groups, lr=0.01), x, y, 2)
    _assert_same_params(model, ref, atol=0.0)
