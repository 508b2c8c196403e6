"""Shared test helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def hessian_vector_product_and_finite_difference(norm: str, mode: str = "train"):
    """``(Hv, (g(theta + h v) - g(theta - h v)) / 2h)`` for a small float64 MLP with ``norm``.

    The first is normlib's exact Hessian-vector product, the second central differences of
    the gradient: they agree to about 1e-8 where the second derivative is computed right. The
    activation is tanh: a ReLU kink at a pre-activation of exactly 0 (zero biases, a dead
    unit) would spoil the differences, not the product.
    """
    from normlib.hessian import HessianOperator
    from normlib.models import MLP

    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():  # the model's initialization, without touching the global seed
        torch.manual_seed(0)
        model = MLP(6, 3, width=8, depth=2, norm=norm, activation="tanh").double()
    x = torch.randn(32, 6, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 3, (32,), generator=gen)
    op = HessianOperator(model, nn.CrossEntropyLoss(), (x, y), mode=mode)
    v = torch.randn(op.num_params, dtype=torch.float64, generator=gen)
    theta, h = op.parameters_vector(), 1e-5

    def gradient_at(t):
        other = MLP(6, 3, width=8, depth=2, norm=norm, activation="tanh").double()
        other.load_state_dict(model.state_dict())
        torch.nn.utils.vector_to_parameters(t, [p for p in other.parameters() if p.requires_grad])
        return HessianOperator(other, nn.CrossEntropyLoss(), (x, y), mode=mode).gradient()

    return op.matvec(v), (gradient_at(theta + h * v) - gradient_at(theta - h * v)) / (2 * h)


@pytest.fixture
def hvp_and_finite_difference():
    return hessian_vector_product_and_finite_difference


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tiny products (extra threads only add contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bn_case():
    """A small BatchNorm network, a batch, its Hessian operator (train mode) and the exact Hessian."""
    from hessian_problems import batch, bn_net, exact_bn

    from normlib.hessian import HessianOperator

    net = bn_net()
    x, y = batch()
    op = HessianOperator(net, nn.CrossEntropyLoss(), (x, y), mode="train")
    return net, x, y, op, exact_bn(net, x, y, training=True)
