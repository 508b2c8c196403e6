"""Tests of normlib.hessian.operator.

Hessian-vector products and the exact Hessian against ``torch.func.hessian`` of an explicit
functional forward pass (forward-over-reverse, a different path from the operator's products).
"""

from __future__ import annotations

import pytest
import torch
from hessian_problems import (
    DT,
    batch,
    bn_net,
    exact_bn,
    flat,
    oracle_loss_plain,
    plain_net,
)
from torch import nn

from normlib.hessian import (
    HessianOperator,
    hessian_matrix,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_hessian_matrix_equals_torch_func_hessian_in_train_mode(bn_case):
    _, _, _, op, exact = bn_case
    h = hessian_matrix(op)
    assert op.num_params == 291
    # float64, different differentiation paths: agreement to rounding (1e-10 of the scale).
    assert torch.allclose(h, exact, rtol=0, atol=1e-10 * exact.abs().max())
    assert torch.allclose(h, h.T, rtol=0, atol=1e-12 * exact.abs().max())


def test_eval_mode_hessian_uses_running_statistics_and_differs_from_train_mode():
    net = bn_net()
    x, y = batch()
    op = HessianOperator(net, nn.CrossEntropyLoss(), (x, y), mode="eval")
    h_eval = hessian_matrix(op)
    exact_eval = exact_bn(net, x, y, training=False)
    exact_train = exact_bn(net, x, y, training=True)
    scale = exact_eval.abs().max()
    assert torch.allclose(h_eval, exact_eval, rtol=0, atol=1e-10 * scale)
    # The two modes give genuinely different matrices (more than 10% of the scale apart).
    assert (exact_eval - exact_train).abs().max() > 0.1 * scale


def test_matvec_of_a_block_equals_rowwise_products(bn_case):
    _, _, _, op, exact = bn_case
    v = torch.randn(3, op.num_params, dtype=DT, generator=torch.Generator().manual_seed(0))
    hv = op.matvec(v)
    assert hv.shape == (3, op.num_params)
    assert torch.allclose(hv, v @ exact, rtol=0, atol=1e-10 * exact.abs().max())
    assert torch.allclose(op @ v[0], hv[0], rtol=0, atol=1e-13 * exact.abs().max())


def test_operator_gradient_and_loss_equal_direct_autograd():
    net = plain_net()
    x, y = batch()
    op = HessianOperator(net, nn.CrossEntropyLoss(), (x, y), mode="train")
    theta = flat(net).requires_grad_(True)
    loss = oracle_loss_plain(theta, net, x, y)
    (grad,) = torch.autograd.grad(loss, theta)
    assert abs(op.loss - float(loss.detach())) < 1e-12
    assert torch.allclose(op.gradient(), grad, rtol=0, atol=1e-12)
    parts = op.unflatten(op.parameters_vector())
    assert list(parts) == [n for n, _ in net.named_parameters()]
    assert all(torch.equal(parts[n], p) for n, p in net.named_parameters())


def test_iterable_of_batches_weights_each_batch_by_its_size():
    net = plain_net()
    x, y = batch(40)
    full = hessian_matrix(HessianOperator(net, nn.CrossEntropyLoss(), (x, y), mode="eval"))
    cuts = [0, 7, 20, 40]  # unequal sizes 7, 13, 20: an unweighted mean of batches would differ
    pieces = [(x[a:b], y[a:b]) for a, b in zip(cuts, cuts[1:])]
    op = HessianOperator(net, nn.CrossEntropyLoss(), pieces, mode="eval")
    streamed = hessian_matrix(op)
    assert op.num_samples == 40
    assert torch.allclose(streamed, full, rtol=0, atol=1e-12 * full.abs().max())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    op_loader = HessianOperator(net, nn.CrossEntropyLoss(), loader, mode="eval")
    v = torch.randn(op.num_params, dtype=DT)
    assert torch.allclose(op_loader.matvec(v), full @ v, rtol=0, atol=1e-12 * full.abs().max())


def test_hessian_of_a_loss_linear_in_the_parameters_is_zero():
    model = nn.Linear(3, 1).to(DT)
    x = torch.randn(6, 3, dtype=DT)
    op = HessianOperator(model, lambda out, y: (out * y).mean(), (x, torch.ones(6, 1, dtype=DT)),
                         mode="eval")
    assert torch.equal(hessian_matrix(op), torch.zeros(4, 4, dtype=DT))
