"""The small networks and data sets the analysis tests share."""

from __future__ import annotations

import torch
from torch import nn

import normlib  # noqa: F401  (fills the registry)
from normlib.models import MLP

DT = torch.float64
ALPHAS = [2.0, 0.5, 3.0, 1.5]


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


def _correlated(m=4000, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=DT)
    return torch.randn(m, d, generator=g, dtype=DT) @ mix.T + 2.0


def _nearly_isotropic(m=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, 4, generator=g, dtype=DT) * torch.tensor([1.0, 1.02, 1.04, 1.06], dtype=DT)
