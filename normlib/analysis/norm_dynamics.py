"""Weight norms and the effective learning rate of scale-invariant weights under SGD.

For a scale-invariant weight :math:`w` the gradient is orthogonal to :math:`w` and shrinks as
:math:`1/\\|w\\|`, so SGD with learning rate :math:`\\eta` moves the direction like a step of
:math:`\\eta/\\|w\\|^2` :cite:p:`van2017l2,hoffer2018norm`.
:func:`~normlib.analysis.scale_invariant_parameters` finds such weights,
:func:`~normlib.analysis.sgd_norm_dynamics` records norms, effective learning rates and angular
updates during SGD, :func:`~normlib.analysis.equilibrium_angular_update` and
:func:`~normlib.analysis.equilibrium_norm` give the values weight decay settles to
:cite:p:`wan2021spherical`.

Chapter: Analysis of normalization (``chapters/analysis.md``, :ref:`chap-analysis`), effective
learning rate.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from normlib._checks import (
    check_callable,
    check_mode,
    check_module,
    check_momentum,
    check_nonnegative_float,
    check_positive_float,
    check_positive_int,
    check_seed,
)
from normlib.hessian import preserved_model_state

__all__ = [
    "scale_invariant_parameters",
    "NormDynamics",
    "equilibrium_angular_update",
    "equilibrium_norm",
    "sgd_norm_dynamics",
]


# ------------------------------------------------------------------ effective learning rate


def scale_invariant_parameters(
    model: nn.Module,
    x: Tensor,
    *,
    factor: float = 3.0,
    tol: float = 1e-3,
    mode: str = "train",
) -> list[str]:
    r"""Names of the parameters :math:`w` with :math:`f(c\,w) = f(w)`, decided by computation.

    Each parameter in turn is multiplied by ``factor`` (the others fixed) and the output
    on ``x`` compared with the original one; a parameter is scale invariant when the
    relative change is below ``tol`` (the default allows for the normalizers' ``eps``;
    a parameter that is not invariant changes the output by a relative amount of order
    1). Parameters that are exactly zero (fresh biases) cannot be tested and are never
    listed. In a network with BatchNorm these are the weights
    of the layers in front of a normalizer; the head and the normalizer's own affine
    parameters are not.

    Args:
        model: the network.
        x: an input batch.
        factor: the test scale :math:`c` (not 1).
        tol: relative output change below which a parameter counts as invariant.
        mode: ``"train"`` (batch statistics) or ``"eval"``.

    Returns:
        list of parameter names, in ``named_parameters()`` order.

    Example:
        >>> import torch
        >>> from normlib.models import MLP
        >>> net = MLP(5, 2, width=8, depth=2, norm="bn").double()
        >>> scale_invariant_parameters(net, torch.randn(16, 5, dtype=torch.float64))
        ['layers.0.0.weight', 'layers.0.1.weight', 'layers.1.0.weight']

    The BatchNorm gain ``layers.0.1.weight`` is listed too: while its shift is zero, the
    next layer's normalizer removes its scale. The answer is about the parameters as they
    are now.
    """
    check_module("model", model)
    check_mode(mode)
    check_positive_float("factor", factor)
    if factor == 1.0:
        raise ValueError("factor must differ from 1 to test invariance; use e.g. 3.0")
    check_positive_float("tol", tol)
    names = []
    with preserved_model_state(model), torch.no_grad():
        model.train(mode == "train")
        # Every evaluation from the same state: running estimates a forward pass updates
        # (population norm) would otherwise change what the next evaluation reads.
        with preserved_model_state(model):
            y = model(x)
        ref = float(y.norm())
        for name, p in model.named_parameters():
            if not bool(p.detach().any()):
                continue
            with preserved_model_state(model):
                y_new = functional_call(model, {name: factor * p.detach()}, (x,))
            if float((y_new - y).norm()) <= tol * ref:
                names.append(name)
    return names


@dataclass
class NormDynamics:
    r"""The norms of tracked weights during SGD and what they imply.

    Attributes:
        names: the tracked parameters.
        norms: ``(steps + 1, len(names))`` :math:`\|w_t\|` before each step and at the end.
        grad_norms: ``(steps, len(names))`` :math:`\|\nabla_w L\|` of each step's mini-batch loss.
        angular_update: ``(steps, len(names))`` the angle (radians) between :math:`w_t` and
            :math:`w_{t+1}`.
        losses: ``(steps,)`` each step's mini-batch loss.
        lr: the learning rate :math:`\eta`.
        weight_decay: :math:`\lambda`.
        momentum: the SGD momentum.
        model: the trained copy of the model (the original is not touched).
    """

    names: list[str]
    norms: Tensor
    grad_norms: Tensor
    angular_update: Tensor
    losses: Tensor
    lr: float
    weight_decay: float
    momentum: float
    model: nn.Module

    @property
    def effective_lr(self) -> Tensor:
        r"""``(steps + 1, len(names))`` :math:`\eta / \|w_t\|^2`, the step size seen by the direction."""
        return self.lr / self.norms**2


def equilibrium_angular_update(lr: float, weight_decay: float, momentum: float = 0.0) -> float:
    r"""The angular update of a scale-invariant weight at equilibrium: :math:`\sqrt{2\eta\lambda/(1+\mu)}`.

    Weight decay shrinks :math:`\|w\|` by the factor :math:`1 - \eta\lambda` per step, while the
    gradient, orthogonal to :math:`w`, lengthens it; the two balance when the angle between
    consecutive weights is about :math:`\sqrt{2\eta\lambda/(1+\mu)}` for SGD with momentum
    :math:`\mu`, whatever the loss :cite:p:`wan2021spherical`. First order in :math:`\eta\lambda`.

    Args:
        lr: :math:`\eta > 0`.
        weight_decay: :math:`\lambda > 0`.
        momentum: :math:`\mu \in [0, 1)`.

    Example:
        >>> round(equilibrium_angular_update(0.1, 5e-4), 6)
        0.01
    """
    lr = check_positive_float("lr", lr)
    weight_decay = check_positive_float("weight_decay", weight_decay)
    check_momentum(momentum, allow_none=False, high_open=True)
    return math.sqrt(2.0 * lr * weight_decay / (1.0 + momentum))


def equilibrium_norm(lr: float, weight_decay: float, unit_grad_norm: float) -> float:
    r"""The norm at which plain SGD with weight decay keeps a scale-invariant weight.

    With :math:`g_t \perp w_t` and :math:`\|g_t\| = G / \|w_t\|` (:math:`G` the gradient norm
    at unit weight norm), one step gives :math:`\|w_{t+1}\|^2 = (1-\eta\lambda)^2\|w_t\|^2 +
    \eta^2 G^2/\|w_t\|^2`, whose fixed point is
    :math:`\|w\|^4 = \eta^2 G^2 / (1 - (1-\eta\lambda)^2) \approx \eta G^2 / (2\lambda)`.

    Args:
        lr: :math:`\eta > 0`.
        weight_decay: :math:`\lambda > 0`, with :math:`\eta\lambda < 1`.
        unit_grad_norm: :math:`G \ge 0`.

    Example:
        >>> round(equilibrium_norm(0.1, 5e-4, 1.0), 4)
        3.1623
    """
    lr = check_positive_float("lr", lr)
    weight_decay = check_positive_float("weight_decay", weight_decay)
    g = check_nonnegative_float("unit_grad_norm", unit_grad_norm)
    if lr * weight_decay >= 1.0:
        raise ValueError(f"lr * weight_decay must be < 1, got {lr * weight_decay!r}")
    # 1 - (1 - lr wd)^2 = lr wd (2 - lr wd): no cancellation (or division by zero) at tiny lr wd.
    return (lr * g**2 / (weight_decay * (2.0 - lr * weight_decay))) ** 0.25


def _angle(a: Tensor, b: Tensor) -> float:
    # 2 atan2(|u - v|, |u + v|) keeps full precision for tiny angles, where acos(cos) does not.
    u, v = a.flatten().double(), b.flatten().double()
    u, v = u / u.norm(), v / v.norm()
    return 2.0 * math.atan2(float((u - v).norm()), float((u + v).norm()))


def sgd_norm_dynamics(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    *,
    lr: float,
    steps: int,
    params: Sequence[str] | None = None,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    batch_size: int | None = None,
    seed: int = 0,
) -> NormDynamics:
    r"""Train a copy of ``model`` with SGD and record the norms of its scale-invariant weights.

    Plain SGD (``torch.optim.SGD``, weight decay added to the gradient) on mini-batches
    drawn without replacement from ``data`` (a new permutation each epoch; the full batch
    if ``batch_size`` is None). For a scale-invariant :math:`w` the gradient is orthogonal
    to :math:`w`, so without weight decay and momentum
    :math:`\|w_{t+1}\|^2 = \|w_t\|^2 + \eta^2 \|g_t\|^2`: the norm only grows and the
    effective learning rate :math:`\eta/\|w_t\|^2` only falls
    :cite:p:`van2017l2,hoffer2018norm`. Weight decay balances the growth at the angular
    update of :func:`equilibrium_angular_update`.

    Args:
        model: the network; it is deep-copied, the original is left as it is.
        data: ``(x, y)`` with ``N`` samples.
        loss_fn: ``loss_fn(output, y) -> scalar``.
        lr: learning rate :math:`\eta`.
        steps: number of SGD steps.
        params: names of the parameters to track (default:
            :func:`scale_invariant_parameters` on the first batch).
        weight_decay: :math:`\lambda`, applied to every parameter.
        momentum: SGD momentum in ``[0, 1)``.
        batch_size: mini-batch size (at most ``N``); None for full-batch gradient descent.
        seed: seed of the batch order.

    Returns:
        a :class:`NormDynamics`.

    Raises:
        ValueError: bad ``lr``, ``steps``, ``weight_decay``, ``momentum``, a ``batch_size``
            larger than the data, an unknown parameter name, or no parameter to track.

    Example:
        >>> import torch
        >>> from normlib.models import MLP
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = MLP(5, 3, width=8, depth=2, norm="bn").double()
        >>> x, y = torch.randn(64, 5, dtype=torch.float64), torch.randint(0, 3, (64,))
        >>> d = sgd_norm_dynamics(net, (x, y), torch.nn.functional.cross_entropy, lr=0.5,
        ...                       steps=5, batch_size=16, params=["layers.1.0.weight"])
        >>> bool((d.norms[1:] > d.norms[:-1]).all())  # no weight decay: the norm only grows
        True
    """
    check_seed(seed)
    check_module("model", model)
    lr = check_positive_float("lr", lr)
    check_positive_int("steps", steps)
    weight_decay = check_nonnegative_float("weight_decay", weight_decay)
    momentum = check_momentum(momentum, allow_none=False, high_open=True)
    check_callable("loss_fn", loss_fn)
    x, y = data
    n = x.shape[0]
    if batch_size is None:
        batch_size = n
    check_positive_int("batch_size", batch_size)
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} is larger than the data ({n} samples); use at most {n}")
    net = copy.deepcopy(model).train()
    if params is None:
        params = scale_invariant_parameters(net, x[:batch_size])
        if not params:
            raise ValueError("the model has no scale-invariant parameter; pass params= to track others")
    named = dict(net.named_parameters())
    for name in params:
        if name not in named:
            raise ValueError(f"unknown parameter {name!r}; known: {', '.join(named)}")
    tracked = [named[p] for p in params]
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    norms = torch.empty(steps + 1, len(tracked), dtype=torch.float64)
    grad_norms = torch.empty(steps, len(tracked), dtype=torch.float64)
    angles = torch.empty(steps, len(tracked), dtype=torch.float64)
    losses = torch.empty(steps, dtype=torch.float64)
    for t in range(steps):
        if order.numel() < batch_size:
            order = torch.randperm(n, generator=gen)
        idx, order = order[:batch_size], order[batch_size:]
        before = [p.detach().clone() for p in tracked]
        norms[t] = torch.stack([b.double().norm() for b in before])
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x[idx]), y[idx])
        loss.backward()
        grad_norms[t] = torch.stack([p.grad.double().norm() for p in tracked])
        losses[t] = float(loss.detach())
        opt.step()
        for i, (b, p) in enumerate(zip(before, tracked)):
            angles[t, i] = _angle(b, p.detach())
    norms[steps] = torch.stack([p.detach().double().norm() for p in tracked])
    opt.zero_grad(set_to_none=True)
    return NormDynamics(list(params), norms, grad_norms, angles, losses, lr, weight_decay,
                        momentum, net)
