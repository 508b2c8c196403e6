"""Tests of normlib.hessian as a package: every tool leaves the model as found, refuses bad input,
reports progress only when asked, and agrees with exact values on each available device.

Oracles: ``torch.func.hessian`` (forward-over-reverse differentiation, a different path from the
operator's reverse-over-reverse products) of an explicit functional forward pass written here,
and closed-form Hessians of quadratic, linear and logistic regression. All in float64 on models
with a few hundred parameters unless stated.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hessian_problems import (
    DEVICES,
    DT,
    Exploding,
    assert_unchanged,
    batch,
    bn_net,
    exact_bn,
    plain_net,
    snapshot,
    spd_matrix,
)
from torch import nn

from normlib.hessian import (
    EigenResult,
    HessianOperator,
    condition_number,
    hessian_matrix,
    hessian_trace,
    layer_second_moments,
    learning_rate_thresholds,
    preserved_model_state,
    spectral_density,
    top_eigenpairs,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("momentum", [0.1, None])  # None: cumulative average, counts batches
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_every_tool_leaves_parameters_buffers_flags_and_grads_unchanged(momentum, mode):
    net = bn_net()
    net[1].momentum = momentum
    net.train()
    net[4].eval()  # mixed flags must come back exactly
    x, y = batch()
    net(x).sum().backward()  # .grad fields with values ...
    net[5].bias.grad = None  # ... and one None
    before = snapshot(net)
    assert int(before["buffers"]["1.num_batches_tracked"]) == 1
    op = HessianOperator(net, nn.CrossEntropyLoss(), (x, y), mode=mode)
    streamed = HessianOperator(net, nn.CrossEntropyLoss(), [(x[:20], y[:20]), (x[20:], y[20:])],
                               mode=mode)
    op.matvec(torch.randn(op.num_params, dtype=DT))
    streamed.matvec(torch.randn(op.num_params, dtype=DT))
    top_eigenpairs(op, k=2)
    top_eigenpairs(streamed, k=1, method="power", tol=1e-3)
    hessian_trace(op, num_probes=4)
    spectral_density(op, num_iters=5)
    condition_number(op)
    hessian_matrix(op)
    assert_unchanged(net, before)


def test_state_is_restored_when_the_forward_pass_raises_after_batchnorm_ran():
    net = bn_net()
    net.append(Exploding())  # BatchNorm runs (and would update its statistics), then it raises
    net.eval()
    x, y = batch()
    before = snapshot(net)
    with pytest.raises(RuntimeError, match="boom"):
        HessianOperator(net, nn.CrossEntropyLoss(), (x, y), mode="train")
    assert_unchanged(net, before)


def test_state_is_restored_when_the_loss_raises_during_a_streamed_product():
    net = bn_net().train()
    x, y = batch()
    calls = {"n": 0}

    def flaky_loss(out, target):
        calls["n"] += 1
        if calls["n"] > 2:  # succeeds while the operator is built, fails in matvec
            raise RuntimeError("loss failed")
        return F.cross_entropy(out, target)

    op = HessianOperator(net, flaky_loss, [(x[:20], y[:20]), (x[20:], y[20:])], mode="eval")
    before = snapshot(net)
    with pytest.raises(RuntimeError, match="loss failed"):
        op.matvec(torch.randn(op.num_params, dtype=DT))
    assert_unchanged(net, before)


def test_preserved_model_state_restores_buffers_updated_in_place():
    bn = nn.BatchNorm1d(4).eval()
    with pytest.raises(ValueError), preserved_model_state(bn):
        bn.train()
        bn(torch.randn(16, 4) * 3 + 2)
        raise ValueError
    assert not bn.training
    assert torch.equal(bn.running_mean, torch.zeros(4))
    assert int(bn.num_batches_tracked) == 0


def test_bad_input_raises_clear_errors():
    net = plain_net()
    x, y = batch()
    ce = nn.CrossEntropyLoss()
    op = HessianOperator(net, ce, (x, y), mode="train")
    with pytest.raises(ValueError, match="k=268 is larger than the number of parameters 267"):
        top_eigenpairs(op, k=268)
    with pytest.raises(ValueError, match="k must be a positive int"):
        top_eigenpairs(op, k=0)
    with pytest.raises(ValueError, match="data contains no batches"):
        HessianOperator(net, ce, [], mode="train")
    with pytest.raises(ValueError, match="no samples"):
        HessianOperator(net, ce, (x[:0], y[:0]), mode="train")
    with pytest.raises(ValueError, match="must return a scalar"):
        HessianOperator(net, nn.CrossEntropyLoss(reduction="none"), (x, y), mode="train")
    with pytest.raises(TypeError, match="one-shot iterator"):
        HessianOperator(net, ce, iter([(x, y)]), mode="train")
    with pytest.raises(TypeError, match="mode"):
        HessianOperator(net, ce, (x, y))  # the mode is required
    with pytest.raises(ValueError, match="mode must be 'train'"):
        HessianOperator(net, ce, (x, y), mode="test")
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        HessianOperator(net, "ce", (x, y), mode="train")
    with pytest.raises(TypeError, match="pair"):
        HessianOperator(net, ce, [x, x, x], mode="train")
    frozen = plain_net().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters with requires_grad"):
        HessianOperator(frozen, ce, (x, y), mode="train")
    with pytest.raises(ValueError, match="max_params=100"):
        hessian_matrix(op, max_params=100)
    with pytest.raises(ValueError, match=r"shape \(267,\)"):
        op.matvec(torch.zeros(5, dtype=DT))
    with pytest.raises(ValueError, match="power iteration finds"):
        top_eigenpairs(op, method="power", which="largest")
    with pytest.raises(ValueError, match="num_probes"):
        hessian_trace(op, num_probes=1)
    with pytest.raises(ValueError, match="lambda_max must be positive"):
        learning_rate_thresholds(-1.0)
    with pytest.raises(ValueError, match="square"):
        top_eigenpairs(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="no nn.Linear layer"):
        layer_second_moments(nn.Sequential(nn.Tanh()), ce, (x, y), mode="train")
    with pytest.raises(ValueError, match="must return a scalar"):
        layer_second_moments(net, nn.CrossEntropyLoss(reduction="none"), (x, y), mode="eval")


def test_condition_number_is_infinite_for_indefinite_and_uses_rtol_for_singular_spectra():
    assert condition_number(torch.tensor([3.0, -1.0, 2.0])) == math.inf
    assert condition_number(torch.tensor([3.0, 1e-12, 1.5]), rtol=1e-8) == 2.0
    a = spd_matrix(torch.tensor([-2.0, 1.0, 4.0], dtype=DT))
    assert condition_number(a) == math.inf


def test_eigen_result_fields_have_documented_shapes(bn_case):
    _, _, _, op, _ = bn_case
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = top_eigenpairs(op, k=3)
    assert isinstance(res, EigenResult)
    assert res.eigenvalues.shape == (3,) and res.eigenvectors.shape == (3, op.num_params)
    assert (res.eigenvalues[:-1] >= res.eigenvalues[1:]).all()  # largest first


def test_progress_bars_are_drawn_on_request_and_absent_by_default_off_a_terminal(capsys):
    net = bn_net()
    x, y = batch()
    op = HessianOperator(net, nn.CrossEntropyLoss(), (x, y), mode="train")
    top_eigenpairs(op, k=1, tol=1e-3, progress=None)
    hessian_trace(op, num_probes=4, progress=None)
    assert capsys.readouterr().err == ""  # pytest's captured stderr is not a terminal
    top_eigenpairs(op, k=1, tol=1e-3, progress=True)
    hessian_trace(op, num_probes=4, progress=True)
    err = capsys.readouterr().err
    assert "Lanczos eigenpairs" in err and "trace probes" in err, err


@pytest.mark.parametrize("device", DEVICES)
def test_top_eigenvalue_on_each_available_device_matches_the_float64_cpu_exact_value(device):
    # float32 on the device (what a GPU user runs), compared with the float64 exact Hessian.
    net = bn_net().float().to(device)
    x, y = batch()
    op = HessianOperator(net, nn.CrossEntropyLoss(), (x.float().to(device), y.to(device)), mode="train")
    res = top_eigenpairs(op, k=2, tol=1e-4)
    exact = torch.linalg.eigvalsh(exact_bn(bn_net(), x, y, training=True)).flip(0)[:2]
    assert torch.allclose(res.eigenvalues.double().cpu(), exact, rtol=1e-4), (res.eigenvalues, exact)
    trace = hessian_trace(op, num_probes=200, seed=0)
    exact_trace = float(torch.trace(exact_bn(bn_net(), x, y, training=True)))
    assert abs(trace.value - exact_trace) < 4 * trace.stderr, (trace.value, trace.stderr, exact_trace)
