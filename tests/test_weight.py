"""Tests of normlib.weight: weight normalizers as parametrizations.

Oracles: torch.nn.utils.parametrizations (weight norm, spectral norm), reference
formulas written here, and the defining properties (W W^T = I, zero-mean
unit-variance rows). Everything runs in float64 on small layers, so the
tolerances are close to float64 rounding unless stated otherwise.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations as torch_param
from torch.nn.utils import parametrize

import normlib
from normlib import weight as nw
from normlib.registry import create_norm, weight_transform

DT = torch.float64
TOL = 1e-12  # float64 results of the same formula computed in a different order


def _layers():
    torch.manual_seed(0)
    return {
        "linear": nn.Linear(6, 4).to(DT),
        "conv1d": nn.Conv1d(3, 4, 3).to(DT),
        "conv2d": nn.Conv2d(2, 4, 3).to(DT),
        "conv_transpose2d": nn.ConvTranspose2d(3, 4, 3).to(DT),
    }


def _input(layer: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if isinstance(layer, nn.Linear):
        return torch.randn(5, layer.in_features, generator=g, dtype=DT)
    spatial = (7,) * (layer.weight.ndim - 2)
    return torch.randn(5, layer.in_channels, *spatial, generator=g, dtype=DT)


def _rows(weight: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return weight.movedim(dim, 0).reshape(weight.shape[dim], -1)


# ---------------------------------------------------------------- torch oracles


@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d", "conv_transpose2d"])
@pytest.mark.parametrize("dim", [0, 1, None])
def test_weight_norm_equals_torch_weight_norm_values_and_gradients(kind, dim):
    ours = _layers()[kind]
    theirs = copy.deepcopy(ours)
    nw.weight_norm(ours, dim=dim)
    torch_param.weight_norm(theirs, dim=dim)
    po, pt = ours.parametrizations.weight, theirs.parametrizations.weight
    assert po.original0.shape == pt.original0.shape
    torch.testing.assert_close(po.original0, pt.original0, rtol=0, atol=TOL)
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=0, atol=TOL)
    x = _input(ours).requires_grad_()
    xt = x.detach().clone().requires_grad_()
    (ours(x) ** 2).sum().backward()
    (theirs(xt) ** 2).sum().backward()
    torch.testing.assert_close(po.original0.grad, pt.original0.grad, rtol=1e-10, atol=TOL)
    torch.testing.assert_close(po.original1.grad, pt.original1.grad, rtol=1e-10, atol=TOL)
    torch.testing.assert_close(x.grad, xt.grad, rtol=1e-10, atol=TOL)


@pytest.mark.parametrize("kind", ["linear", "conv2d", "conv_transpose2d"])
def test_spectral_norm_equals_torch_spectral_norm_over_training_steps(kind):
    base = _layers()[kind]
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(3)
    nw.spectral_norm(ours)
    torch.manual_seed(3)
    torch_param.spectral_norm(theirs)
    po, pt = ours.parametrizations.weight[0], theirs.parametrizations.weight[0]
    # Same random draws in the same order give the same initial singular vectors.
    torch.testing.assert_close(po._u, pt._u, rtol=0, atol=TOL)
    torch.testing.assert_close(po._v, pt._v, rtol=0, atol=TOL)
    opt_o = torch.optim.SGD(ours.parameters(), lr=0.1)
    opt_t = torch.optim.SGD(theirs.parameters(), lr=0.1)
    x = _input(base)
    for _ in range(4):  # the power iteration advances once per training forward
        for model, opt in ((ours, opt_o), (theirs, opt_t)):
            opt.zero_grad()
            (model(x) ** 2).mean().backward()
            opt.step()
        grads_o = [p.grad for p in ours.parameters()]
        grads_t = [p.grad for p in theirs.parameters()]
        for go, gt in zip(grads_o, grads_t):
            torch.testing.assert_close(go, gt, rtol=1e-10, atol=TOL)
    torch.testing.assert_close(po._u, pt._u, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=0, atol=1e-10)


def test_spectral_norm_updates_vectors_only_in_training_mode():
    lin = nw.spectral_norm(_layers()["linear"])
    p = lin.parametrizations.weight[0]
    lin.eval()
    u0 = p._u.clone()
    with torch.no_grad():
        lin.parametrizations.weight.original.mul_(torch.linspace(0.5, 2, 6, dtype=DT))
    lin(_input(lin))
    assert torch.equal(p._u, u0)
    lin.train()
    lin(_input(lin))
    assert not torch.equal(p._u, u0)


def test_spectral_norm_converges_to_largest_singular_value():
    torch.manual_seed(0)
    lin = nw.spectral_norm(nn.Linear(8, 5).to(DT), n_power_iterations=50)
    lin(torch.zeros(1, 8, dtype=DT))  # one training forward: 50 more iterations
    sigma = torch.linalg.matrix_norm(lin.weight.detach(), ord=2)
    assert abs(float(sigma) - 1.0) < 1e-9


# ------------------------------------------------------------- reference formulas


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_centered_weight_norm_matches_reference_and_rows_have_zero_mean(kind):
    layer = _layers()[kind]
    raw = layer.weight.detach().clone()
    nw.centered_weight_norm(layer)
    p = layer.parametrizations.weight
    with torch.no_grad():
        p.original0.mul_(torch.linspace(0.5, 2.0, 4, dtype=DT).reshape(p.original0.shape))
    rows = _rows(raw)
    centered = rows - rows.mean(1, keepdim=True)
    g = p.original0.detach().reshape(-1, 1)
    expected = g * centered / centered.norm(dim=1, keepdim=True)
    torch.testing.assert_close(_rows(layer.weight.detach()), expected, rtol=0, atol=TOL)
    torch.testing.assert_close(_rows(layer.weight).mean(1), torch.zeros(4, dtype=DT),
                               rtol=0, atol=TOL)
    torch.testing.assert_close(_rows(layer.weight).norm(dim=1), g.flatten(), rtol=0, atol=TOL)


def test_weight_norm_initial_weight_is_the_original():
    layer = _layers()["conv2d"]
    raw = layer.weight.detach().clone()
    nw.weight_norm(layer)
    torch.testing.assert_close(layer.weight.detach(), raw, rtol=0, atol=TOL)


@pytest.mark.parametrize("kind", ["linear", "conv2d", "conv_transpose2d"])
@pytest.mark.parametrize("group_size", [1, 2, 4])
def test_orthogonal_weight_norm_gives_orthonormal_rows_per_group(kind, group_size):
    layer = nw.orthogonal_weight_norm(_layers()[kind], group_size=group_size, eps=1e-14)
    dim = 1 if kind == "conv_transpose2d" else 0
    rows = _rows(layer.weight.detach(), dim)
    eye = torch.eye(group_size, dtype=DT)
    for group in rows.split(group_size):
        torch.testing.assert_close(group @ group.T, eye, rtol=0, atol=1e-10)
        torch.testing.assert_close(group.sum(1), torch.zeros(group_size, dtype=DT),
                                   rtol=0, atol=1e-10)


def test_orthogonal_weight_norm_equals_polar_factor_of_centered_rows():
    # OWN's whitening (V_c V_c^T)^(-1/2) V_c is the polar factor U Q^T of V_c = U S Q^T.
    torch.manual_seed(0)
    v = torch.randn(3, 7, dtype=DT)
    vc = v - v.mean(1, keepdim=True)
    u, _, qt = torch.linalg.svd(vc, full_matrices=False)
    torch.testing.assert_close(nw.orthogonalize_weight(v, 3, eps=1e-14), u @ qt, rtol=0, atol=1e-10)


@pytest.mark.parametrize("num_iters", [1, 2, 5])
def test_oni_equals_the_papers_newton_iteration(num_iters):
    torch.manual_seed(0)
    v = torch.randn(8, 12, dtype=DT)
    out = nw.orthogonalize_weight(v, 4, method="newton", num_iters=num_iters)
    expected = []
    for z in v.split(4):  # ONI, Algorithm 1, written out
        zc = z - z.mean(1, keepdim=True)
        u = zc / zc.norm()
        s = u @ u.T
        b = torch.eye(4, dtype=DT)
        for _ in range(num_iters):
            b = 1.5 * b - 0.5 * torch.linalg.matrix_power(b, 3) @ s
        expected.append(b @ u)
    torch.testing.assert_close(out, torch.cat(expected), rtol=0, atol=1e-10)


def test_oni_approaches_orthonormal_rows_as_iterations_grow():
    torch.manual_seed(0)
    v = torch.randn(4, 16, dtype=DT)
    errors = []
    for t in (1, 3, 5, 10, 40, 200):
        w = nw.orthogonalize_weight(v, 4, method="newton", num_iters=t)
        errors.append(float((w @ w.T - torch.eye(4, dtype=DT)).abs().max()))
    assert all(a >= b for a, b in zip(errors, errors[1:-1])), errors
    # Converged to rounding; stays there for many more iterations (the coupled form is stable).
    assert errors[-2] < 1e-12 and errors[-1] < 1e-12, errors


@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d", "conv_transpose2d"])
def test_weight_standardization_gives_zero_mean_unit_variance_rows(kind):
    layer = nw.weight_standardization(_layers()[kind], eps=1e-14)
    dim = 1 if kind == "conv_transpose2d" else 0
    rows = _rows(layer.weight.detach(), dim)
    var, mean = torch.var_mean(rows, dim=1, correction=0)
    torch.testing.assert_close(mean, torch.zeros_like(mean), rtol=0, atol=TOL)
    torch.testing.assert_close(var, torch.ones_like(var), rtol=0, atol=1e-10)


def test_weight_standardization_with_eps_matches_reference_formula():
    layer = _layers()["conv2d"]
    raw = _rows(layer.weight.detach().clone())
    nw.weight_standardization(layer, eps=0.3)
    expected = (raw - raw.mean(1, keepdim=True)) / torch.sqrt(raw.var(1, unbiased=False,
                                                                      keepdim=True) + 0.3)
    torch.testing.assert_close(_rows(layer.weight.detach()), expected, rtol=0, atol=TOL)


def test_scaled_weight_standardization_matches_reference_formula_and_learns_gain():
    layer = _layers()["conv2d"]
    raw = _rows(layer.weight.detach().clone())
    nw.scaled_weight_standardization(layer, activation="relu", eps=1e-4)
    sws = layer.parametrizations.weight[0]
    with torch.no_grad():
        sws.gain.copy_(torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=DT))
    gamma = math.sqrt(2.0 / (1.0 - 1.0 / math.pi))
    fan_in = raw.shape[1]
    std = torch.sqrt(raw.var(1, unbiased=False, keepdim=True) + 1e-4)
    expected = gamma * sws.gain.detach()[:, None] * (raw - raw.mean(1, keepdim=True)) / (
        std * math.sqrt(fan_in))
    torch.testing.assert_close(_rows(layer.weight.detach()), expected, rtol=0, atol=1e-8)
    assert any(p is sws.gain for p in layer.parameters())
    layer(_input(layer)).sum().backward()
    assert sws.gain.grad is not None and sws.gain.grad.abs().sum() > 0


def test_scaled_weight_standardization_preserves_variance_after_relu():
    # gamma undoes the variance lost by ReLU: relu(z) for z ~ N(0,1) has variance 1/gamma^2.
    torch.manual_seed(0)
    layer = nw.scaled_weight_standardization(nn.Linear(512, 512).to(DT), eps=1e-14)
    z = torch.randn(4096, 512, dtype=DT)
    with torch.no_grad():
        out = layer(torch.relu(z))
    # The input's nonzero mean adds nothing since rows have zero mean; 4096 samples
    # x 512 units estimate the variance to about 1%.
    assert abs(float(out.var()) - 1.0) < 0.05


def test_activation_gamma_of_relu_has_closed_form():
    assert abs(nw.activation_gamma("relu") - math.sqrt(2.0 / (1.0 - 1.0 / math.pi))) < 1e-7
    assert abs(nw.activation_gamma("identity") - 1.0) < 1e-9


@pytest.mark.parametrize(
    "name, table",
    # The NF-Nets reference implementation's table, estimated there by sampling
    # (so agreement is to about 1e-3, not to quadrature accuracy).
    [("gelu", 1.7015043497085571), ("silu", 1.7881293296813965), ("tanh", 1.5939117670059204),
     ("relu", 1.7139588594436646), ("sigmoid", 4.803835391998291), ("elu", 1.2716004848480225)],
)
def test_activation_gamma_matches_the_nfnets_table(name, table):
    assert abs(nw.activation_gamma(name) / table - 1.0) < 2e-3


def test_normprop_relu_standardizes_a_standard_gaussian():
    z = torch.linspace(-12, 12, 240_001, dtype=DT)
    density = torch.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    y = nw.normprop_relu(z)
    mean = torch.trapezoid(y * density, z)
    second = torch.trapezoid(y * y * density, z)
    assert abs(float(mean)) < 1e-8 and abs(float(second) - 1.0) < 1e-8


def test_normprop_is_weight_norm_with_unit_gains():
    layer = nw.normprop(_layers()["conv2d"])
    p = layer.parametrizations.weight
    assert torch.equal(p.original0, torch.ones_like(p.original0))
    torch.testing.assert_close(_rows(layer.weight.detach()).norm(dim=1),
                               torch.ones(4, dtype=DT), rtol=0, atol=TOL)
    x = torch.linspace(-2, 2, 9, dtype=DT)
    assert torch.equal(nw.NormPropReLU()(x), nw.normprop_relu(x))


# -------------------------------------------------------------------- gradcheck


def _gradcheck(fn, *inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_gradcheck_weight_normalize_plain_and_centered():
    torch.manual_seed(0)
    v = torch.randn(3, 2, 2, dtype=DT, requires_grad=True)
    g = torch.rand(3, 1, 1, dtype=DT).add(0.5).requires_grad_()
    _gradcheck(lambda g, v: nw.weight_normalize(v, g, 0), g, v)
    _gradcheck(lambda g, v: nw.weight_normalize(v, g, 0, centered=True), g, v)
    gs = torch.tensor(1.3, dtype=DT, requires_grad=True)
    _gradcheck(lambda g, v: nw.weight_normalize(v, g, None), gs, v)


@pytest.mark.parametrize("method", ["eigh", "newton"])
def test_gradcheck_orthogonalize_weight(method):
    torch.manual_seed(0)
    v = torch.randn(4, 6, dtype=DT, requires_grad=True)
    _gradcheck(lambda v: nw.orthogonalize_weight(v, 2, method=method, num_iters=4), v)


def _orthonormal_rows(out: int, fan_in: int, seed: int, dtype=DT) -> torch.Tensor:
    torch.manual_seed(seed)
    return nn.init.orthogonal_(torch.empty(out, fan_in, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, DT])
@pytest.mark.parametrize("seed", range(4))
def test_orthogonal_weight_norm_gradient_is_finite_for_an_orthogonal_init(dtype, seed):
    # Orthonormal rows make every eigenvalue of V V^T equal to 1; plain autograd through eigh
    # divides by their differences (NaN for most of these seeds), the divided differences do not.
    lin = nn.Linear(8, 4).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(_orthonormal_rows(4, 8, seed, dtype))
    nw.orthogonal_weight_norm(lin, centered=False)
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    lin(x).square().sum().backward()
    grad = lin.parametrizations.weight.original.grad
    assert torch.isfinite(grad).all()
    # Finite is not enough: compare with central differences of the same loss in float64.
    v = lin.parametrizations.weight.original.detach().to(DT)
    y = x.to(DT)

    def loss(v):
        w = nw.orthogonalize_weight(v, 4, centered=False)
        return (y @ w.T + lin.bias.detach().to(DT)).square().sum()

    numeric = torch.zeros_like(v)
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            step = torch.zeros_like(v)
            step[i, j] = 1e-6
            numeric[i, j] = (loss(v + step) - loss(v - step)) / 2e-6
    tol = 1e-6 if dtype == DT else 1e-3
    torch.testing.assert_close(grad.to(DT), numeric, rtol=tol, atol=tol)


@pytest.mark.parametrize("centered", [False, True])
def test_gradcheck_orthogonalize_weight_at_exactly_repeated_eigenvalues(centered):
    # Rows of a scaled Hadamard matrix: mean 0 for rows 2..5, V V^T = 8 I exactly.
    h = torch.ones(1, 1, dtype=DT)
    while h.shape[0] < 8:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    v = h[1:5].clone().requires_grad_()
    eigenvalues = torch.linalg.eigvalsh(v.detach() @ v.detach().T)
    assert float(eigenvalues.max() - eigenvalues.min()) == 0.0
    _gradcheck(lambda v: nw.orthogonalize_weight(v, 4, centered=centered), v)


def test_gradcheck_standardize_and_scaled_standardize():
    torch.manual_seed(0)
    w = torch.randn(3, 2, 3, dtype=DT, requires_grad=True)
    s = torch.rand(3, dtype=DT).add(0.5).requires_grad_()
    _gradcheck(lambda w: nw.standardize_weight(w, eps=1e-3), w)
    _gradcheck(lambda w, s: nw.standardize_weight(w, 1, eps=1e-3, scale=s[:2]), w, s)


def test_gradcheck_spectral_normalize_and_normprop_relu():
    torch.manual_seed(0)
    w = torch.randn(3, 4, dtype=DT, requires_grad=True)
    u = torch.nn.functional.normalize(torch.randn(3, dtype=DT), dim=0)
    v = torch.nn.functional.normalize(torch.randn(4, dtype=DT), dim=0)
    _gradcheck(lambda w: nw.spectral_normalize(w, u, v), w)
    x = torch.randn(10, dtype=DT).add(0.1).requires_grad_()  # away from the kink at 0
    _gradcheck(nw.normprop_relu, x)


# ----------------------------------------------------------- modes, state, registry


@pytest.mark.parametrize("apply", [nw.weight_norm, nw.centered_weight_norm,
                                   nw.orthogonal_weight_norm, nw.oni,
                                   nw.weight_standardization, nw.scaled_weight_standardization])
def test_stateless_weight_normalizers_give_the_same_output_in_train_and_eval(apply):
    layer = apply(_layers()["conv2d"])
    x = _input(layer)
    train_out = layer(x)
    layer.eval()
    torch.testing.assert_close(layer(x), train_out, rtol=0, atol=0)


@pytest.mark.parametrize("apply", [nw.weight_norm, nw.orthogonal_weight_norm,
                                   nw.scaled_weight_standardization, nw.spectral_norm])
def test_parametrized_state_dict_round_trips(apply):
    torch.manual_seed(0)
    src = apply(nn.Conv2d(2, 4, 3).to(DT))
    src(_input(src))  # advance spectral norm's vectors
    torch.manual_seed(1)
    dst = apply(nn.Conv2d(2, 4, 3).to(DT))
    dst.load_state_dict(src.state_dict())
    src.eval()
    dst.eval()
    x = _input(src)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["wn", "cwn", "own", "oni", "ws", "sws", "sn", "normprop"])
def test_registered_weight_normalizers_parametrize_layers_and_leave_identity_slots(name):
    assert name in normlib.available_norms()
    assert isinstance(create_norm(name, 8), nn.Identity)
    conv = weight_transform(name)(nn.Conv2d(3, 8, 3))
    assert parametrize.is_parametrized(conv, "weight")
    conv(torch.randn(2, 3, 6, 6)).square().mean().backward()
    assert all(p.grad is not None for p in conv.parameters())


def test_models_build_and_train_with_normprop_from_the_registry():
    from normlib.models import MLP, VGG

    torch.manual_seed(0)
    mlp = MLP(16, 3, width=8, depth=3, norm="normprop")
    linears = [block[0] for block in mlp.layers]
    for linear in linears:
        assert isinstance(linear.parametrizations.weight[0], nw.WeightNorm)
        torch.testing.assert_close(linear.weight.norm(dim=1), torch.ones(8))
    assert all(isinstance(block[1], nn.Identity) for block in mlp.layers)
    vgg = VGG(in_channels=1, num_classes=3, depth=3, width=4, norm="normalization_propagation")
    assert parametrize.is_parametrized(vgg.layers[0][0], "weight")
    for model, x in ((mlp, torch.randn(5, 16)), (vgg, torch.randn(2, 1, 8, 8))):
        out = model(x)
        assert out.shape == (x.shape[0], 3) and torch.isfinite(out).all()
        out.square().mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_normprop_gains_are_per_output_unit_of_a_transposed_convolution():
    conv = nw.normprop(nn.ConvTranspose2d(3, 5, 2))
    assert conv.parametrizations.weight.original0.shape == (1, 5, 1, 1)
    torch.testing.assert_close(_rows(conv.weight.detach(), 1).norm(dim=1), torch.ones(5))


def test_default_group_size_fits_layers_with_more_outputs_than_inputs():
    conv = nw.orthogonal_weight_norm(nn.Conv2d(1, 16, 2).to(DT), eps=1e-14)  # fan_in 4
    assert conv.parametrizations.weight[0].group_size == 2  # largest divisor of 16 <= 3
    rows = _rows(conv.weight.detach())
    torch.testing.assert_close(rows[:2] @ rows[:2].T, torch.eye(2, dtype=DT), rtol=0, atol=1e-10)


# ----------------------------------------------------------------------- errors


@pytest.mark.parametrize("apply", [nw.weight_norm, nw.centered_weight_norm,
                                   nw.orthogonal_weight_norm, nw.weight_standardization,
                                   nw.scaled_weight_standardization, nw.spectral_norm,
                                   nw.normprop])
def test_weight_normalizers_reject_modules_without_a_suitable_weight(apply):
    with pytest.raises(ValueError, match="no tensor named 'weight'"):
        apply(nn.ReLU())
    bn = nn.BatchNorm1d(4)
    with pytest.raises(ValueError, match=r"shape \(4,\).*at least 2 dims"):
        apply(bn)
    assert not parametrize.is_parametrized(bn)
    with pytest.raises(TypeError, match="nn.Module"):
        apply(torch.zeros(3, 3))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: nw.weight_norm(m, eps=-1.0), "eps must be a positive"),
        (lambda m: nw.weight_norm(m, eps=0.0), "eps must be a positive"),
        (lambda m: nw.centered_weight_norm(m, eps=0), "eps must be a positive"),
        (lambda m: nw.orthogonal_weight_norm(m, eps=0.0), "eps must be a positive"),
        (lambda m: nw.orthogonal_weight_norm(m, method="newton", num_iters=-2),
         "num_iters must be a positive"),
        (lambda m: nw.spectral_norm(m, eps=0.0), "eps must be a positive"),
        (lambda m: nw.weight_standardization(m, eps=0.0), "eps must be a positive"),
        (lambda m: nw.scaled_weight_standardization(m, eps=0.0), "eps must be a positive"),
        (lambda m: nw.weight_norm(m, dim=5), "dim must be an int"),
        (lambda m: nw.spectral_norm(m, n_power_iterations=0), "n_power_iterations must be a positive"),
        (lambda m: nw.oni(m, num_iters=0), "num_iters must be a positive"),
        (lambda m: nw.orthogonal_weight_norm(m, group_size=3), "must divide"),
        (lambda m: nw.orthogonal_weight_norm(m, group_size=0), "group_size must be a positive"),
        (lambda m: nw.orthogonal_weight_norm(m, method="svd"), "method must be one of"),
        (lambda m: nw.scaled_weight_standardization(m, gamma=0.0), "gamma must be a positive"),
        (lambda m: nw.scaled_weight_standardization(m, activation="relu7"), "unknown activation"),
        (lambda m: nw.weight_standardization(m, eps=-1e-5), "eps must be a positive"),
    ],
)
def test_bad_hyperparameters_raise_before_parametrizing(call, match):
    layer = nn.Linear(6, 4)
    with pytest.raises(ValueError, match=match):
        call(layer)
    assert not parametrize.is_parametrized(layer)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"method": "newton", "num_iters": 0}, "num_iters must be a positive int, got 0"),
     ({"method": "newton", "num_iters": -3}, "num_iters must be a positive int, got -3"),
     ({"eps": 0.0}, "eps must be a positive float"),
     ({"eps": -1e-5}, "eps must be a positive float"),
     ({"eps": math.inf}, "eps must be a positive float.*got inf; use a finite value")],
)
def test_orthogonalize_weight_rejects_non_positive_num_iters_and_eps(kwargs, match):
    # num_iters=0 would return the merely rescaled rows, silently not orthogonal.
    with pytest.raises(ValueError, match=match):
        nw.orthogonalize_weight(torch.randn(4, 6), 2, **kwargs)


def test_orthogonalize_weight_rejects_a_non_integer_num_iters_as_a_type_error():
    with pytest.raises(TypeError, match="num_iters must be a positive int, got 2.5"):
        nw.orthogonalize_weight(torch.randn(4, 6), 2, num_iters=2.5)
    with pytest.raises(TypeError, match="num_iters must be a positive int, got True"):
        nw.orthogonalize_weight(torch.randn(4, 6), 2, num_iters=True)


@pytest.mark.parametrize("call", [
    lambda w: nw.standardize_weight(w, eps=0.0),
    lambda w: nw.weight_normalize(w, torch.ones(4, 1), eps=0.0),
])
def test_functional_weight_normalizers_reject_zero_eps(call):
    with pytest.raises(ValueError, match="eps must be a positive float"):
        call(torch.ones(4, 1))


def test_weight_standardization_of_constant_rows_is_finite_with_the_default_eps():
    # nn.Linear(1, 4) has one weight per row, so every row is constant (variance 0).
    layer = nw.weight_standardization(nn.Linear(1, 4))
    assert torch.equal(layer.weight.detach(), torch.zeros(4, 1))
    layer(torch.randn(3, 1)).sum().backward()
    assert torch.isfinite(layer.parametrizations.weight.original.grad).all()


def test_orthogonal_weight_norm_rejects_groups_larger_than_the_rank():
    with pytest.raises(ValueError, match="group_size=4 is larger than the rank 3"):
        nw.orthogonal_weight_norm(nn.Linear(4, 8), group_size=4)
    with pytest.raises(ValueError, match="larger than the rank 4"):
        nw.orthogonal_weight_norm(nn.Linear(4, 8), group_size=8, centered=False)


# ------------------------------------------------- NormProp and scale invariance


def _preactivation_moments(net: nn.Sequential, x: torch.Tensor):
    means, variances = [], []
    with torch.no_grad():
        for linear, act in net:
            z = linear(x)
            means.append(z.mean(0))
            variances.append(z.var(0))
            x = act(z)
    return torch.stack(means), torch.stack(variances)


def test_normprop_gives_unit_variance_in_the_first_two_layers_for_white_input_and_orthogonal_rows():
    # Layer 1 sees N(0, I) and layer 2 independent standardized ReLU outputs: with
    # orthonormal rows both have exactly unit variance and zero mean. Deeper layers see
    # uncorrelated but dependent, non-Gaussian inputs and drift (chapter "Review III").
    torch.manual_seed(0)
    net = nw.normprop_mlp(32, 32, 2, init="orthogonal").to(DT)
    x = torch.randn(20_000, 32, dtype=DT)
    means, variances = _preactivation_moments(net, x)
    # 20,000 samples: standard error 1% on a variance and 0.007 on a mean, maxima over 32 units.
    assert float((variances - 1).abs().max()) < 0.06, variances
    assert float(means.abs().max()) < 0.04, means


def test_normprop_second_layer_drifts_with_random_rows_but_not_with_orthogonal_rows():
    torch.manual_seed(0)
    x = torch.randn(20_000, 32, dtype=DT)
    _, v_orth = _preactivation_moments(nw.normprop_mlp(32, 32, 2, init="orthogonal").to(DT), x)
    _, v_rand = _preactivation_moments(nw.normprop_mlp(32, 32, 2, init="gaussian").to(DT), x)
    assert float((v_rand[1] - 1).abs().max()) > 0.2 > float((v_orth[1] - 1).abs().max())


def test_normprop_loses_unit_variance_when_the_input_is_correlated():
    torch.manual_seed(0)
    net = nw.normprop_mlp(32, 32, 4, init="orthogonal").to(DT)
    mix = torch.eye(32, dtype=DT) + 0.5  # every pair of features has correlation 1/3
    x = torch.randn(20_000, 32, dtype=DT) @ mix
    x = (x - x.mean(0)) / x.std(0)  # per-feature standardized, but not whitened
    _, variances = _preactivation_moments(net, x)
    assert float((variances[0] - 1).abs().max()) > 0.5


def test_weight_norm_directions_finds_the_directions_of_weight_normalized_layers():
    net = nn.Sequential(nw.weight_norm(nn.Linear(3, 4)), nw.weight_standardization(nn.Linear(4, 2)),
                        nw.normprop(nn.Linear(2, 2)))
    found = nw.weight_norm_directions(net)
    assert list(found) == ["0.weight", "2.weight"]
    assert found["0.weight"] is net[0].parametrizations.weight.original1


def test_sgd_on_a_scale_invariant_weight_grows_its_norm_by_pythagoras():
    torch.manual_seed(0)
    layer = nw.weight_norm(nn.Linear(6, 4).to(DT))
    v = layer.parametrizations.weight.original1
    x, y = torch.randn(16, 6, dtype=DT), torch.randn(16, 4, dtype=DT)
    opt = torch.optim.SGD(layer.parameters(), lr=0.3)
    for _ in range(5):
        opt.zero_grad()
        ((layer(x) - y) ** 2).mean().backward()
        before, grad = v.detach().clone(), v.grad.detach().clone()
        assert abs(float((grad * before).sum())) < 1e-15  # the gradient is orthogonal to v
        opt.step()
        expected = before.norm() ** 2 + 0.3**2 * grad.norm() ** 2
        assert abs(float(v.detach().norm() ** 2 / expected) - 1) < 1e-13


# Spectral norm in eval mode only: training mode updates u and v under no_grad (torch's
# convention), so its gradient is not the derivative of the loss along theta.
@pytest.mark.parametrize(("norm", "mode"), [("own", "train"), ("oni", "train"), ("wn", "train"),
                                            ("cwn", "train"), ("ws", "train"), ("sws", "train"),
                                            ("normprop", "train"), ("sn", "eval")])
def test_hessian_vector_products_through_weight_normalizers_match_finite_differences(
        norm, mode, hvp_and_finite_difference):
    hv, fd = hvp_and_finite_difference(norm, mode)
    assert float((hv - fd).norm() / fd.norm()) < 1e-6


def test_hessian_of_exact_orthogonal_weight_norm_is_finite_at_an_orthogonal_init():
    from normlib.hessian import HessianOperator, hessian_matrix

    layer = nn.Linear(4, 3, bias=False).double()
    nn.init.orthogonal_(layer.weight)  # V V^T = I: every eigenvalue repeated
    nw.orthogonal_weight_norm(layer, centered=False)
    x = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    op = HessianOperator(layer, nn.MSELoss(), (x, torch.zeros(16, 3, dtype=torch.float64)), mode="train")
    h = hessian_matrix(op)
    assert torch.isfinite(h).all() and torch.allclose(h, h.T, atol=1e-10)
