"""What the Hessian says about training: condition numbers, learning-rate thresholds, Kronecker factors.

:func:`~normlib.hessian.condition_number` and :func:`~normlib.hessian.learning_rate_thresholds`
(the optimal step :math:`1/\\lambda_{\\max}` along the sharpest direction and the divergence
threshold :math:`2/\\lambda_{\\max}`); :func:`~normlib.hessian.layer_second_moments`, the
per-layer second moments of inputs and output gradients, the Kronecker factors of a layer's
curvature block :cite:p:`martens2015optimizing`; :func:`~normlib.hessian.run_sgd`, gradient
descent on a copy of a model to test the thresholds.

Chapter: Hessian conditioning (``chapters/hessian.md``, :ref:`chap-hessian`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from normlib._checks import (
    check_float,
    check_mode,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
    check_seed,
)
from normlib.hessian.eigen import EigenResult, top_eigenpairs
from normlib.hessian.operator import _as_operator, _is_batch, preserved_model_state

__all__ = [
    "condition_number",
    "LearningRateThresholds",
    "learning_rate_thresholds",
    "LayerMoments",
    "layer_second_moments",
    "SGDRun",
    "run_sgd",
]


# --------------------------------------------------------------------------------------------
# Condition number and learning rates
# --------------------------------------------------------------------------------------------


def condition_number(
    source,
    *,
    rtol: float = 0.0,
    tol: float = 1e-6,
    max_iters: int | None = None,
    seed: int = 0,
) -> float:
    """The condition number :math:`\\kappa = \\lambda_{\\max} / \\lambda_{\\min}`.

    From a 1-D tensor of eigenvalues, or from an operator or symmetric matrix, whose two extreme
    eigenvalues are found by one Lanczos run. With ``rtol > 0`` (eigenvalues only), eigenvalues
    at most ``rtol`` :math:`\\cdot \\lambda_{\\max}` count as the null space and are ignored: the
    condition number on the range of a singular Hessian, such as a network's.

    Args:
        source: eigenvalues ``(n,)``, a :class:`HessianOperator` or a symmetric ``(n, n)`` tensor.
        rtol: relative cut-off for the null space (eigenvalue input only).
        tol, max_iters, seed: passed to the Lanczos run (operator input).

    Returns:
        :math:`\\kappa \\ge 1`, or ``inf`` when :math:`\\lambda_{\\min} \\le 0` (not positive definite).

    Raises:
        ValueError: ``rtol`` outside ``[0, 1)``, ``rtol > 0`` with an operator, no positive eigenvalue.

    Example:
        >>> import torch
        >>> condition_number(torch.tensor([4.0, 1.0, 0.5]))
        8.0
        >>> condition_number(torch.tensor([4.0, 1.0, 1e-9]), rtol=1e-6)
        4.0
    """
    check_seed(seed)
    check_float("rtol", rtol, low=0.0, high=1.0, high_open=True, example=1e-6)
    if isinstance(source, torch.Tensor) and source.dim() == 1:
        values = source.detach().cpu().to(torch.float64)
        if values.numel() == 0:
            raise ValueError("condition_number needs at least one eigenvalue")
        if bool(torch.isnan(values).any()):
            raise ValueError("the eigenvalues given as source contain NaN: kappa is undefined")
    else:
        if rtol > 0:
            raise ValueError(
                "rtol > 0 needs the eigenvalues (a 1-D tensor); an operator gives only the extremes"
            )
        op = _as_operator(source, "source")
        if op.shape[0] == 1:
            values = op.matvec(torch.ones(1, dtype=op.dtype, device=op.device)).double().cpu()
        else:
            values = top_eigenpairs(
                op, 2, which="both_ends", tol=tol, max_iters=max_iters, seed=seed, progress=False
            ).eigenvalues
    lam_max = float(values.max())
    if lam_max <= 0:
        raise ValueError(f"no positive eigenvalue (largest is {lam_max}); kappa is undefined")
    kept = values[values > rtol * lam_max] if rtol > 0 else values
    lam_min = float(kept.min())
    return lam_max / lam_min if lam_min > 0 else math.inf


@dataclass(frozen=True)
class LearningRateThresholds:
    """Step sizes of gradient descent set by the top Hessian eigenvalue.

    Attributes:
        lambda_max: the top eigenvalue.
        optimal: :math:`1/\\lambda_{\\max}`, the step that removes the error along the top
            eigenvector in one step (for a quadratic).
        divergent: :math:`2/\\lambda_{\\max}`; above it the error along the top eigenvector grows
            by :math:`|1 - \\eta\\lambda_{\\max}| > 1` per step.
    """

    lambda_max: float
    optimal: float
    divergent: float


def learning_rate_thresholds(lambda_max) -> LearningRateThresholds:
    """The optimal (:math:`1/\\lambda_{\\max}`) and divergent (:math:`2/\\lambda_{\\max}`) steps.

    Along an eigenvector of eigenvalue :math:`\\lambda`, gradient descent on a quadratic multiplies
    the error by :math:`1 - \\eta\\lambda` per step :cite:p:`lecun2012efficient`.

    Args:
        lambda_max: a positive float, or an :class:`EigenResult` (its largest eigenvalue).

    Raises:
        ValueError: ``lambda_max`` not positive and finite.

    Example:
        >>> learning_rate_thresholds(4.0)
        LearningRateThresholds(lambda_max=4.0, optimal=0.25, divergent=0.5)
    """
    if isinstance(lambda_max, EigenResult):
        lambda_max = float(lambda_max.eigenvalues.max())
    value = float(lambda_max)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"lambda_max must be positive and finite, got {lambda_max!r}")
    return LearningRateThresholds(value, 1.0 / value, 2.0 / value)


# --------------------------------------------------------------------------------------------
# Per-layer second moments (Kronecker factors)
# --------------------------------------------------------------------------------------------


@dataclass
class LayerMoments:
    """Second moments of one linear layer's inputs and output gradients.

    For a layer :math:`h = Wx + b` and per-sample losses :math:`\\ell_n`,
    :math:`\\Sigma_x = \\mathbb E[x x^\\top]` and :math:`\\Sigma_{\\nabla h} =
    \\mathbb E[\\nabla_h \\ell\\, \\nabla_h \\ell^\\top]`. The layer's block of the Fisher (and of
    the Gauss-Newton curvature, for squared loss) is approximately
    :math:`\\Sigma_x \\otimes \\Sigma_{\\nabla h}`, so the block is well conditioned when both
    factors are, and blocks of different layers are alike when their factors' scales are.

    Attributes:
        name: the module's name in ``model.named_modules()``.
        input_moment: :math:`\\Sigma_x`, ``(d_in, d_in)``.
        grad_moment: :math:`\\Sigma_{\\nabla h}`, ``(d_out, d_out)``.
    """

    name: str
    input_moment: torch.Tensor
    grad_moment: torch.Tensor

    @property
    def input_scale(self) -> float:
        """:math:`\\operatorname{tr}\\Sigma_x / d_{in}`, the mean square of an input entry."""
        return float(self.input_moment.diagonal().mean())

    @property
    def grad_scale(self) -> float:
        """:math:`\\operatorname{tr}\\Sigma_{\\nabla h} / d_{out}`, the mean square of an output gradient."""
        return float(self.grad_moment.diagonal().mean())

    def input_condition(self, rtol: float = 0.0) -> float:
        """Condition number of :math:`\\Sigma_x` (see :func:`condition_number` for ``rtol``)."""
        return condition_number(torch.linalg.eigvalsh(self.input_moment.cpu().double()), rtol=rtol)

    def grad_condition(self, rtol: float = 0.0) -> float:
        """Condition number of :math:`\\Sigma_{\\nabla h}` (see :func:`condition_number`)."""
        return condition_number(torch.linalg.eigvalsh(self.grad_moment.cpu().double()), rtol=rtol)


def layer_second_moments(model: nn.Module, loss_fn: Callable, batch, *, mode: str) -> list[LayerMoments]:
    """:math:`\\Sigma_x` and :math:`\\Sigma_{\\nabla h}` of every ``nn.Linear`` layer, in forward order.

    One forward and one backward pass on ``batch``; inputs of shape ``(N, *, d)`` count each
    position as a sample. ``loss_fn`` returns the mean over the batch, so the per-sample output
    gradient is :math:`N` times the gradient of the mean. The two criteria of a well-conditioned
    landscape :cite:p:`huang2023normalization` read: the factors have equal scales across layers,
    and each is well conditioned within its layer.

    Args:
        model: a network with ``nn.Linear`` layers.
        loss_fn: ``loss_fn(output, target)`` returning the mean loss, a scalar.
        batch: one batch ``(x, y)``.
        mode: ``"train"`` (batch statistics) or ``"eval"`` (running statistics).

    Returns:
        a list of :class:`LayerMoments`. Hooks are removed and the model's state (buffers,
        flags, ``.grad``) is restored, also on exceptions.

    Raises:
        ValueError: unknown mode, a model without ``nn.Linear`` layers, a non-scalar loss.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
        >>> moments = layer_second_moments(net, nn.CrossEntropyLoss(), (x, y), mode="train")
        >>> [m.name for m in moments], tuple(moments[1].input_moment.shape)
        (['0', '2'], (4, 4))
    """
    check_mode(mode)
    if not _is_batch(batch):
        raise TypeError(f"batch must be a pair (x, y) of tensors, got {type(batch).__name__}")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError("model has no nn.Linear layer; layer_second_moments measures linear layers")
    x, y = batch
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    records: dict[str, list] = {n: [] for n, _ in layers}
    handles = []

    def recorder(name):
        def hook(module, inputs, output):
            records[name].append((inputs[0].detach(), output))

        return hook

    try:
        with torch.enable_grad(), preserved_model_state(model):
            for name, module in layers:
                handles.append(module.register_forward_hook(recorder(name)))
            model.train(mode == "train")
            loss = loss_fn(model(x), y)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                raise ValueError(
                    f"loss_fn must return a scalar (the mean loss over the batch), got "
                    f"{getattr(loss, 'shape', type(loss).__name__)}"
                )
            outputs = [out for n, _ in layers for _, out in records[n]]
            grads = torch.autograd.grad(loss, outputs, allow_unused=True, materialize_grads=True)
    finally:
        for handle in handles:
            handle.remove()
    grads = iter(grads)
    result = []
    n = x.shape[0]
    for name, module in layers:
        ins, outs = [], []
        for inp, _ in records[name]:
            ins.append(inp.reshape(-1, module.in_features))
            outs.append(next(grads).detach().reshape(-1, module.out_features) * n)
        if not ins:
            continue  # the layer was not used in this forward pass
        xin, gout = torch.cat(ins), torch.cat(outs)
        result.append(LayerMoments(name, xin.T @ xin / len(xin), gout.T @ gout / len(gout)))
    return result


# --------------------------------------------------------------------------------------------
# Gradient descent on a copy
# --------------------------------------------------------------------------------------------


@dataclass
class SGDRun:
    """The result of :func:`run_sgd`.

    Attributes:
        model: the trained copy (the original is untouched).
        losses: ``(steps + 1,)`` float64: entry ``t < steps`` is the loss on step ``t``'s batch
            before the step, the last entry the loss on all of ``data`` after the last step
            (shorter when the run diverged).
        diverged: the loss became non-finite or grew a trillion-fold, and the run stopped.
    """

    model: nn.Module
    losses: torch.Tensor
    diverged: bool


def run_sgd(
    model: nn.Module,
    loss_fn: Callable,
    data,
    *,
    lr: float,
    steps: int,
    batch_size: int | None = None,
    momentum: float = 0.0,
    seed: int = 0,
) -> SGDRun:
    """Gradient descent :math:`\\theta \\leftarrow \\theta - \\eta \\nabla L` on a deep copy of ``model``.

    Full batch (``batch_size=None``): every step uses all of ``data``, so on a quadratic loss
    the error along an eigenvector of eigenvalue :math:`\\lambda` is multiplied by exactly
    :math:`1 - \\eta\\lambda` per step: the loss converges for :math:`\\eta < 2/\\lambda_{\\max}`
    and diverges above. With ``batch_size``, minibatches are drawn without replacement from a
    seeded shuffle, reshuffled every epoch. The copy is in train mode.

    Args:
        model: the network (not modified).
        loss_fn: ``loss_fn(output, target)``, a scalar.
        data: one batch ``(x, y)`` of tensors.
        lr: the step size :math:`\\eta > 0`.
        steps: number of steps.
        batch_size: minibatch size, or None for full-batch gradient descent.
        momentum: heavy-ball momentum of ``torch.optim.SGD``.
        seed: seed of the minibatch order.

    Returns:
        an :class:`SGDRun`.

    Raises:
        ValueError: non-positive ``lr`` or ``batch_size``, negative ``steps``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> x = torch.eye(2, dtype=torch.float64) * torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> model = nn.Linear(2, 1, bias=False).double()
        >>> run = run_sgd(model, nn.MSELoss(), (x, torch.ones(2, 1, dtype=torch.float64)),
        ...               lr=0.2, steps=200)
        >>> run.diverged, round(float(run.losses[-1]), 8)
        (False, 0.0)
    """
    check_seed(seed)
    check_positive_float("lr", lr, example=0.1)
    check_nonnegative_int("steps", steps)
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    if not _is_batch(data):
        raise TypeError(f"data must be one batch (x, y) of tensors, got {type(data).__name__}")
    if batch_size is not None and batch_size > len(data[0]):
        raise ValueError(f"batch_size={batch_size} is larger than the data ({len(data[0])} samples); "
                         f"use at most {len(data[0])}, or batch_size=None for full batches")
    trained = copy.deepcopy(model).train()
    x, y = data
    device = next(trained.parameters()).device
    x, y = x.to(device), y.to(device)
    opt = torch.optim.SGD(trained.parameters(), lr=lr, momentum=momentum)
    generator = torch.Generator().manual_seed(seed)
    order, position = torch.randperm(len(x), generator=generator), 0
    losses, diverged = [], False

    def step_batch():
        nonlocal order, position
        if batch_size is None:
            return x, y
        if position + batch_size > len(x):
            order, position = torch.randperm(len(x), generator=generator), 0
        idx = order[position : position + batch_size].to(device)
        position += batch_size
        return x[idx], y[idx]

    for t in range(steps + 1):
        bx, by = step_batch() if t < steps else (x, y)
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = loss_fn(trained(bx), by)
        value = float(loss.detach())
        losses.append(value)
        if not math.isfinite(value) or value > 1e12 * max(abs(losses[0]), 1e-12):
            diverged = True
            break
        if t < steps:
            loss.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    return SGDRun(trained, torch.tensor(losses, dtype=torch.float64), diverged)
