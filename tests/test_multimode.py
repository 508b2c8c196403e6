"""normlib.multimode against torch's BatchNorm/LayerNorm/InstanceNorm and formulas written here.

Tolerances: float64 comparisons use ``atol=1e-10`` (the order of reductions
differs); comparisons that go through an eigendecomposition use ``1e-9``.
Gradients: ``torch.autograd.gradcheck`` with its float64 defaults.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normlib
from normlib import multimode as M
from normlib import whitening as W

DT = torch.float64
TOL = {"atol": 1e-10, "rtol": 1e-10}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny float64 problems: a second thread only adds wake-up latency on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def maps(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(shape[1], generator=g, dtype=DT) * 3 + 0.5
    return torch.randn(shape, generator=g, dtype=DT) * scale.reshape(1, -1, *[1] * (len(shape) - 2)) + 1


def onehot(i, k=3):
    return torch.eye(k, dtype=DT)[i]


# --------------------------------------------------------------------------- Switchable Normalization


def torch_oracles():
    return {
        "in": lambda x: F.instance_norm(x, eps=1e-5),
        "ln": lambda x: F.layer_norm(x, x.shape[1:], eps=1e-5),
        "bn": lambda x: F.batch_norm(x, None, None, training=True, eps=1e-5),
    }


@pytest.mark.parametrize("mode", M.SWITCHABLE_MODES)
def test_switchable_norm_with_one_hot_weights_equals_bn_ln_or_in(mode):
    x = maps((6, 4, 5, 5))
    w = onehot(M.SWITCHABLE_MODES.index(mode))
    torch.testing.assert_close(M.switchable_norm(x, w, w), torch_oracles()[mode](x), **TOL)


def test_switchable_norm_with_one_hot_bn_weights_equals_torch_batch_norm_in_train_and_eval():
    sn = M.SwitchableNorm(4, dtype=DT)
    bn = nn.BatchNorm2d(4, dtype=DT)
    with torch.no_grad():
        sn.mean_logits.copy_(torch.tensor([-1e4, -1e4, 0.0]))  # softmax is one-hot to 1e-4000
        sn.var_logits.copy_(torch.tensor([-1e4, -1e4, 0.0]))
        for p in (sn.weight, bn.weight):
            p.copy_(torch.linspace(0.5, 2, 4))
        for p in (sn.bias, bn.bias):
            p.copy_(torch.linspace(-1, 1, 4))
    for seed in range(3):
        x = maps((6, 4, 3, 3), seed=seed)
        torch.testing.assert_close(sn(x), bn(x), **TOL)
    torch.testing.assert_close(sn.running_mean, bn.running_mean, **TOL)
    torch.testing.assert_close(sn.running_var, bn.running_var, **TOL)
    sn.eval()
    bn.eval()
    x = maps((6, 4, 3, 3), seed=9)
    torch.testing.assert_close(sn(x), bn(x), **TOL)


def test_switchable_norm_equals_its_formula_for_mixed_weights_in_train_and_eval():
    x = maps((6, 4, 3, 3))
    wm, wv = torch.tensor([0.2, 0.3, 0.5], dtype=DT), torch.tensor([0.6, 0.1, 0.3], dtype=DT)
    mu = {"in": x.mean((2, 3), keepdim=True), "ln": x.mean((1, 2, 3), keepdim=True),
          "bn": x.mean((0, 2, 3), keepdim=True)}
    var = {"in": x.var((2, 3), keepdim=True, correction=0),
           "ln": x.var((1, 2, 3), keepdim=True, correction=0),
           "bn": x.var((0, 2, 3), keepdim=True, correction=0)}
    mean = sum(wm[i] * mu[k] for i, k in enumerate(M.SWITCHABLE_MODES))
    variance = sum(wv[i] * var[k] for i, k in enumerate(M.SWITCHABLE_MODES))
    torch.testing.assert_close(M.switchable_norm(x, wm, wv), (x - mean) / (variance + 1e-5).sqrt(), **TOL)
    # evaluation: BN moments from the running buffers (unbiased variance), IN and LN from x
    rm, rv = torch.zeros(4, dtype=DT), torch.ones(4, dtype=DT)
    M.switchable_norm(x, wm, wv, rm, rv, momentum=1.0)
    n = x.numel() // 4
    torch.testing.assert_close(rv, var["bn"].flatten() * n / (n - 1), **TOL)
    x2 = maps((2, 4, 3, 3), seed=1)
    mu2 = {"in": x2.mean((2, 3), keepdim=True), "ln": x2.mean((1, 2, 3), keepdim=True),
           "bn": rm.reshape(1, 4, 1, 1)}
    var2 = {"in": x2.var((2, 3), keepdim=True, correction=0),
            "ln": x2.var((1, 2, 3), keepdim=True, correction=0), "bn": rv.reshape(1, 4, 1, 1)}
    mean2 = sum(wm[i] * mu2[k] for i, k in enumerate(M.SWITCHABLE_MODES))
    var2 = sum(wv[i] * var2[k] for i, k in enumerate(M.SWITCHABLE_MODES))
    torch.testing.assert_close(M.switchable_norm(x2, wm, wv, rm, rv, training=False),
                               (x2 - mean2) / (var2 + 1e-5).sqrt(), **TOL)


def test_switchable_norm_layer_gradcheck_covers_inputs_and_mixture_logits():
    sn = M.SwitchableNorm(3, dtype=DT)
    with torch.no_grad():
        sn.mean_logits.copy_(torch.tensor([0.3, -0.2, 0.5]))
    x = maps((4, 3, 2, 2)).requires_grad_()

    def f(z, lm, lv):
        return M.switchable_norm(z, lm.softmax(0), lv.softmax(0), None, None, sn.weight, sn.bias)

    assert torch.autograd.gradcheck(f, (x, sn.mean_logits, sn.var_logits))


def test_switchable_norm_mixture_starts_uniform_and_is_learnable():
    sn = M.SwitchableNorm(4)
    torch.testing.assert_close(sn.mixture()["mean"], torch.full((3,), 1 / 3))
    sn(torch.randn(8, 4, 3, 3) * 2).pow(3).sum().backward()
    assert sn.mean_logits.grad.abs().sum() > 0 and sn.var_logits.grad.abs().sum() > 0
    with torch.no_grad():
        sn.mean_logits.fill_(3.0)
    sn.reset_parameters()
    assert torch.equal(sn.mean_logits, torch.zeros(3))


# --------------------------------------------------------------------------- Mode Normalization


def test_mode_norm_with_one_mode_equals_torch_batch_norm_in_train_and_eval():
    x = maps((6, 4, 3, 3))
    rm, rv = torch.zeros(1, 4, dtype=DT), torch.ones(1, 4, dtype=DT)
    bn = nn.BatchNorm2d(4, affine=False, dtype=DT)
    for seed in range(3):
        x = maps((6, 4, 3, 3), seed=seed)
        torch.testing.assert_close(M.mode_norm(x, torch.ones(6, 1, dtype=DT), rm, rv), bn(x), **TOL)
    torch.testing.assert_close(rm[0], bn.running_mean, **TOL)
    torch.testing.assert_close(rv[0], bn.running_var, **TOL)
    bn.eval()
    torch.testing.assert_close(M.mode_norm(x, torch.ones(6, 1, dtype=DT), rm, rv, training=False),
                               bn(x), **TOL)


def test_mode_norm_with_hard_gates_batch_normalizes_each_mode_separately():
    x = maps((8, 3, 4, 4))
    assignment = torch.tensor([0, 1, 1, 0, 2, 2, 2, 1])
    y = M.mode_norm(x, F.one_hot(assignment, 3).to(DT))
    for k in range(3):
        members = assignment == k
        torch.testing.assert_close(y[members], F.batch_norm(x[members], None, None, training=True), **TOL)


def test_mode_norm_equals_its_formula_for_soft_gates():
    x = maps((5, 3, 2, 2))
    gates = torch.rand(5, 2, generator=torch.Generator().manual_seed(1), dtype=DT).softmax(-1)
    xs = x.reshape(5, 3, -1)
    expected = torch.zeros_like(xs)
    for k in range(2):
        g = gates[:, k].reshape(5, 1, 1)
        mu = (g * xs).mean(-1, keepdim=True).sum(0) / gates[:, k].sum()
        var = (g * (xs - mu) ** 2).mean(-1, keepdim=True).sum(0) / gates[:, k].sum()
        expected += g * (xs - mu) / (var + 1e-5).sqrt()
    torch.testing.assert_close(M.mode_norm(x, gates), expected.reshape(x.shape), **TOL)


def test_mode_norm_layer_trains_and_evaluates_with_per_mode_running_statistics():
    mn = M.ModeNorm(4, num_modes=3, momentum=1.0, dtype=DT)
    x = maps((8, 4, 3, 3))
    gates = mn.gates(x)
    assert gates.shape == (8, 3) and torch.allclose(gates.sum(-1), torch.ones(8, dtype=DT))
    y = mn(x)
    assert mn.running_mean.shape == (3, 4) and mn.num_batches_tracked.item() == 1
    mn.eval()
    rm, rv = mn.running_mean.clone(), mn.running_var.clone()
    expected = M.mode_norm(x, gates.detach(), rm, rv, mn.weight, mn.bias, training=False)
    torch.testing.assert_close(mn(x), expected, **TOL)
    torch.testing.assert_close(mn.running_mean, rm)
    assert y.shape == x.shape


def test_mode_norm_running_variance_is_unbiased_with_the_effective_count_of_each_mode():
    x = maps((6, 2, 3, 3))
    gates = F.one_hot(torch.tensor([0, 0, 1, 1, 1, 1]), 2).to(DT)
    rm, rv = torch.zeros(2, 2, dtype=DT), torch.ones(2, 2, dtype=DT)
    M.mode_norm(x, gates, rm, rv, momentum=1.0)
    torch.testing.assert_close(rv[0], x[:2].var((0, 2, 3)), **TOL)  # torch's unbiased variance
    torch.testing.assert_close(rv[1], x[2:].var((0, 2, 3)), **TOL)


def test_mode_norm_gradcheck_covers_inputs_and_gating():
    mn = M.ModeNorm(3, num_modes=2, dtype=DT)
    x = maps((4, 3, 2, 2)).requires_grad_()

    def f(z, w):
        mn.gate.weight.data = w.data
        gates = (z.mean((2, 3)) @ w.T + mn.gate.bias).softmax(-1)
        return M.mode_norm(z, gates, weight=mn.weight, bias=mn.bias)

    assert torch.autograd.gradcheck(f, (x, mn.gate.weight))


# --------------------------------------------------------------------------- Switchable Whitening


def test_switchable_whitening_with_single_modes_equals_bn_in_ln_and_batch_whitening():
    x = maps((6, 4, 5, 5))
    one = torch.ones(1, dtype=DT)
    oracles = torch_oracles()
    for mode in ("bn", "in", "ln"):
        y = M.switchable_whitening(x, one, one, (mode,), group_size=2)
        torch.testing.assert_close(y, oracles[mode](x), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(M.switchable_whitening(x, one, one, ("bw",), group_size=2),
                               W.batch_whitening(x, group_size=2), atol=1e-9, rtol=1e-9)


def test_instance_whitening_whitens_every_sample_separately():
    x, eps = maps((3, 4, 5, 5)), 1e-5
    one = torch.ones(1, dtype=DT)
    y = M.switchable_whitening(x, one, one, ("iw",), eps=eps)
    for n in range(3):
        rows = x[n].reshape(4, -1).numpy()
        xc = rows - rows.mean(1, keepdims=True)
        lam, vec = np.linalg.eigh(xc @ xc.T / xc.shape[1] + eps * np.eye(4))
        expected = vec @ np.diag(lam**-0.5) @ vec.T @ xc
        assert np.allclose(y[n].reshape(4, -1).numpy(), expected, atol=1e-9)


def test_switchable_whitening_equals_its_formula_for_a_mixture():
    x, eps = maps((4, 4, 3, 3)), 1e-5
    modes = ("bw", "iw", "ln")
    wm, wc = torch.tensor([0.5, 0.3, 0.2], dtype=DT), torch.tensor([0.2, 0.5, 0.3], dtype=DT)
    y = M.switchable_whitening(x, wm, wc, modes, eps=eps)
    rows = x.transpose(0, 1).reshape(4, -1)
    mu_b, cov_b = W.covariance(rows)
    for n in range(4):
        xs = x[n].reshape(4, -1)
        mu_i, cov_i = W.covariance(xs)
        mu_l, var_l = xs.mean(), xs.var(correction=0)
        mu = wm[0] * mu_b + wm[1] * mu_i + wm[2] * mu_l
        cov = wc[0] * cov_b + wc[1] * cov_i + wc[2] * var_l * torch.eye(4, dtype=DT)
        g = W.whitening_matrix(cov, "zca", eps=eps)
        torch.testing.assert_close(y[n].reshape(4, -1), g @ (xs - mu), atol=1e-9, rtol=1e-9)


def test_switchable_whitening_layer_uses_the_running_batch_covariance_in_evaluation():
    sw = M.SwitchableWhitening(4, group_size=2, momentum=1.0, dtype=DT)
    x = maps((6, 4, 3, 3))
    sw(x)
    rows = W.split_groups(x.transpose(0, 1).reshape(4, -1), 2)
    mu, cov = W.covariance(rows)
    m = rows.shape[-1]
    torch.testing.assert_close(sw.running_cov, cov * m / (m - 1), **TOL)
    torch.testing.assert_close(sw.running_mean, mu.flatten(), **TOL)
    sw.eval()
    weights = sw.mixture()
    expected = M.switchable_whitening(x, weights["mean"], weights["cov"], ("bw", "iw"),
                                      sw.running_mean, sw.running_cov, sw.weight, sw.bias,
                                      training=False, group_size=2)
    torch.testing.assert_close(sw(x), expected, **TOL)
    before = sw.running_cov.clone()
    sw(maps((6, 4, 3, 3), seed=3))
    torch.testing.assert_close(sw.running_cov, before)  # evaluation does not update


@pytest.mark.parametrize("method", W.WHITENING_METHODS)
def test_switchable_whitening_gradcheck(method):
    modes = ("bw", "iw", "bn", "in", "ln")
    x = maps((3, 4, 3, 3)).requires_grad_()
    logits = torch.linspace(-0.5, 0.5, 5, dtype=DT).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z, lw: M.switchable_whitening(z, lw.softmax(0), lw.flip(0).softmax(0), modes,
                                             group_size=2, method=method), (x, logits))


def test_switchable_whitening_rejects_bad_modes_weights_and_too_few_positions():
    x = torch.randn(4, 8, 2, 2)
    two = torch.full((2,), 0.5)
    with pytest.raises(ValueError, match="modes must be distinct names"):
        M.switchable_whitening(x, two, two, ("bw", "gw"))
    with pytest.raises(ValueError, match="modes must be distinct names"):
        M.switchable_whitening(x, two, two, ("bw", "bw"))
    with pytest.raises(ValueError, match=r"mean_weights must have shape \(2,\)"):
        M.switchable_whitening(x, torch.ones(3) / 3, two, ("bw", "iw"))
    with pytest.raises(ValueError, match=r"needs more than 8 samples to estimate a 8x8 covariance, got 4"):
        M.switchable_whitening(x, two, two, ("bw", "iw"))
    with pytest.raises(ValueError, match="group_size=3 does not divide"):
        M.SwitchableWhitening(8, group_size=3)


# --------------------------------------------------------------------------- registry and errors


@pytest.mark.parametrize("name,cls", [("switchable", M.SwitchableNorm), ("mode_norm", M.ModeNorm),
                                      ("mn", M.ModeNorm), ("switchable_whitening", M.SwitchableWhitening),
                                      ("sw", M.SwitchableWhitening)])
def test_multimode_layers_are_registered_and_run_in_train_and_eval(name, cls):
    layer = normlib.create_norm(name, 8)
    assert isinstance(layer, cls)
    x = torch.randn(16, 8, 5, 5)
    assert layer(x).shape == x.shape
    layer.eval()
    assert torch.isfinite(layer(x)).all()


def test_registry_default_group_size_of_switchable_whitening():
    assert normlib.create_norm("sw", 64).group_size == 16
    assert normlib.create_norm("sw", 24).group_size == 12


def test_bad_arguments_are_rejected_with_the_fix():
    x = torch.randn(4, 3, 2, 2)
    with pytest.raises(ValueError, match=r"mean_weights must have shape \(3,\)"):
        M.switchable_norm(x, torch.ones(2), torch.ones(3))
    with pytest.raises(TypeError, match="var_weights must be a torch.Tensor"):
        M.switchable_norm(x, torch.ones(3), [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"gates must have shape \(N=4, K\), got \(3, 2\)"):
        M.mode_norm(x, torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"running_mean must have shape \(2, 3\)"):
        M.mode_norm(x, torch.ones(4, 2) / 2, torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        M.switchable_norm(torch.randn(1, 3), torch.ones(3) / 3, torch.ones(3) / 3)
    with pytest.raises(ValueError, match="num_modes must be a positive int"):
        M.ModeNorm(4, num_modes=0)
    with pytest.raises(ValueError, match="eps must be a positive float"):
        M.SwitchableNorm(4, eps=-1.0)
