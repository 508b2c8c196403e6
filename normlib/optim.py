r"""Gradient normalization: optimizers that normalize gradients or updates per layer.

Two kinds, both following ``torch.optim.Optimizer`` conventions (parameter
groups, ``state_dict``/``load_state_dict``, ``step(closure)``, usable with
``torch.optim.lr_scheduler``):

- **Wrappers** that transform each parameter's gradient, then call the wrapped
  optimizer's step: :class:`GradientCentralization` (Yong et al., 2020) and
  :class:`GradientNormalization` (per-layer, block-normalized gradients; Yu
  et al., 2017). They work around any optimizer, e.g.
  ``GradientCentralization(torch.optim.SGD(model.parameters(), lr=0.1))``.
- **Layer-wise adaptive optimizers** whose step for each parameter tensor is
  scaled by a *trust ratio* of the weight norm to the update norm:
  :class:`LARS` (You et al., 2017), :class:`LAMB` (You et al., 2020) and
  :class:`LANS` (Zheng et al., 2020). The last trust ratio of each parameter is
  kept in ``optimizer.state[p]["trust_ratio"]``.

**Norm and bias parameters: one rule for LARS, LAMB and LANS.** An *excluded*
parameter takes the base optimizer's plain step (momentum SGD for LARS, Adam for
LAMB, LANS's two directions unscaled): no weight decay (neither L2 nor
decoupled) and a trust ratio of 1. Which parameters are excluded:

1. a parameter group's ``"exclude"`` key, if it is ``True`` or ``False``, decides for
   every parameter of the group (:func:`param_groups` sets it);
2. otherwise (``"exclude": None``, the default) the optimizer's ``exclude_vectors``
   (default ``True``) excludes every tensor with fewer than 2 dims: biases and the
   affine parameters of torch's normalizers and of ``normlib.layers``.

The optimizer sees only tensors, so rule 2 goes by shape; :func:`param_groups` goes
by module type and name (parameters of normalization layers, of weight normalizers'
gains, biases), the way BERT's LAMB excluded LayerNorm and bias parameters (You et
al., 2020) and timm's ``param_groups_weight_decay`` does, and its groups also work
with ``torch.optim.SGD`` and ``AdamW`` (the excluded group has ``weight_decay=0``).
``exclude_vectors=False`` with no ``"exclude"`` key is the papers' algorithms on
every tensor (and pytorch-optimizer's ``Lamb``).

The pure functions (:func:`centralize_gradient`, :func:`normalize_gradient`,
:func:`lars_trust_ratio`, :func:`lamb_trust_ratio`) are the math; the classes
hold state. Explained in the chapter "Review III: normalizing weights and
gradients" (``chapters/review_weights.md``).

Example:
    >>> import torch
    >>> from normlib.optim import LARS, param_groups
    >>> w = torch.nn.Parameter(torch.ones(2, 2))
    >>> opt = LARS([w], lr=1.0, momentum=0.0, trust_coefficient=0.01)
    >>> w.grad = torch.full((2, 2), 5.0)
    >>> _ = opt.step()
    >>> w.detach()  # the step has length 0.01 * ||w||, whatever ||grad|| is
    tensor([[0.9900, 0.9900],
            [0.9900, 0.9900]])
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    >>> groups = param_groups(net, weight_decay=1e-4)  # BN scale and shift, the bias: no decay
    >>> [(len(g["params"]), g["weight_decay"], g["exclude"]) for g in groups]
    [(1, 0.0001, False), (3, 0.0, True)]
    >>> opt = LARS(groups, lr=0.1)
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.optim import Optimizer

from normlib._checks import (
    argument_error,
    check_bool,
    check_module,
    check_nonnegative_float,
    check_positive_float,
    check_probability,
)
from normlib.layers import NormLayer
from normlib.recovery import AttentiveNorm
from normlib.weight import WeightNorm

__all__ = [
    "centralize_gradient",
    "normalize_gradient",
    "lars_trust_ratio",
    "lamb_trust_ratio",
    "relative_updates",
    "GradientTransform",
    "GradientCentralization",
    "GradientNormalization",
    "LARS",
    "LAMB",
    "LANS",
    "NORM_LAYER_TYPES",
    "EXCLUDE_RULES",
    "param_groups",
]

#: Module types whose own parameters :func:`param_groups` treats as normalization parameters:
#: torch's normalizers and every normalizer of normlib.
NORM_LAYER_TYPES: tuple[type, ...] = (
    NormLayer,
    AttentiveNorm,
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
#: The rules that :func:`param_groups` knows by name.
EXCLUDE_RULES = ("norm", "bias", "vectors")


# --------------------------------------------------------------------------- checks


def _check_betas(betas) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return tuple(check_probability(f"betas[{i}]", b, high_open=True) for i, b in enumerate(betas))


def _dense_grad(p: torch.Tensor, who: str) -> torch.Tensor:
    if p.grad.is_sparse:
        raise RuntimeError(f"{who} does not support sparse gradients")
    return p.grad


# ---------------------------------------------------------------------- functional core


def centralize_gradient(grad: torch.Tensor, min_ndim: int = 2) -> torch.Tensor:
    r"""Gradient centralization :math:`\Phi(\nabla W)_i = \nabla W_i - \operatorname{mean}(\nabla W_i)`.

    For a weight of shape ``(out, in, *kernel)`` each output unit's gradient
    loses its mean over ``in, *kernel`` (Yong et al., 2020). This is the
    projection onto the hyperplane :math:`e^\top w_i = 0`, so SGD keeps each
    row's mean of the weight fixed. Tensors with fewer than ``min_ndim`` dims
    (biases, normalizer scales) are returned unchanged.

    Args:
        grad: the gradient, ``(out, in, *kernel)``.
        min_ndim: centralize only tensors with at least this many dims (2: linear
            and conv weights; 3: convolutions only).

    Returns:
        torch.Tensor: the centralized gradient (a new tensor; the input is untouched).

    Example:
        >>> centralize_gradient(torch.tensor([[1.0, 3.0], [0.0, 4.0]]))
        tensor([[-1.,  1.],
                [-2.,  2.]])
    """
    if grad.ndim < min_ndim:
        return grad
    return grad - grad.mean(dim=tuple(range(1, grad.ndim)), keepdim=True)


def normalize_gradient(grad: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    r"""Block-normalized gradient :math:`g / (\|g\| + \epsilon)` of one parameter tensor (Yu et al., 2017).

    Args:
        grad: any shape; the norm is the Frobenius norm of the whole tensor.
        eps: added to the norm (a zero gradient stays zero).

    Returns:
        torch.Tensor: a gradient of norm (almost) 1.

    Example:
        >>> normalize_gradient(torch.tensor([3.0, 4.0]), eps=0.0)
        tensor([0.6000, 0.8000])
    """
    return grad / (torch.linalg.vector_norm(grad) + eps)


def lars_trust_ratio(
    weight: torch.Tensor,
    grad: torch.Tensor,
    trust_coefficient: float = 1e-3,
    weight_decay: float = 0.0,
) -> torch.Tensor:
    r"""LARS's local learning rate :math:`\eta \|w\| / (\|\nabla w\| + \lambda \|w\|)` (You et al., 2017).

    Returns 1 where it is undefined (``||w|| = 0``, or a zero denominator), so a
    zero-initialized tensor still moves.

    Args:
        weight: the parameter.
        grad: its gradient (without weight decay).
        trust_coefficient: :math:`\eta`.
        weight_decay: :math:`\lambda`.

    Returns:
        torch.Tensor: a 0-dim tensor.

    Example:
        >>> lars_trust_ratio(torch.ones(4), torch.full((4,), 10.0), trust_coefficient=1.0)
        tensor(0.1000)
    """
    w_norm = torch.linalg.vector_norm(weight)
    denom = torch.linalg.vector_norm(grad) + weight_decay * w_norm
    one = torch.ones_like(w_norm)
    safe = torch.where(denom > 0, denom, one)
    return torch.where((w_norm > 0) & (denom > 0), trust_coefficient * w_norm / safe, one)


def lamb_trust_ratio(
    weight: torch.Tensor,
    update: torch.Tensor,
    eps: float = 1e-6,
    max_weight_norm: float | None = 10.0,
) -> torch.Tensor:
    r"""LAMB's trust ratio :math:`\phi(\|w\|) / (\|u\| + \epsilon)` (You et al., 2020).

    :math:`\phi(z) = \min(z, z_{\max})` clips the weight norm. Returns 1 if ``||w||`` or ``||u||`` is zero.

    Args:
        weight: the parameter.
        update: the Adam-style update direction ``u`` (including weight decay).
        eps: added to ``||u||``.
        max_weight_norm: :math:`z_{\max}` (``None``: no clipping, :math:`\phi(z) = z`).

    Returns:
        torch.Tensor: a 0-dim tensor.

    Example:
        >>> lamb_trust_ratio(torch.full((4,), 2.0), torch.ones(4), eps=0.0)
        tensor(2.)
    """
    w_norm = torch.linalg.vector_norm(weight)
    if max_weight_norm is not None:
        w_norm = w_norm.clamp(max=max_weight_norm)
    u_norm = torch.linalg.vector_norm(update)
    ratio = w_norm / (u_norm + eps).clamp_min(torch.finfo(u_norm.dtype).tiny)
    return torch.where((w_norm > 0) & (u_norm > 0), ratio, torch.ones_like(ratio))


def relative_updates(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, closure: Callable[[], Any]
) -> dict[str, float]:
    r"""The relative size :math:`\|\Delta w\| / \|w\|` of one step of ``optimizer``, per parameter tensor.

    The relative update is what a learning rate really sets for each layer: a
    global learning rate gives layers relative updates as different as their
    ratios :math:`\|\nabla w\| / \|w\|`, while LARS makes them all equal
    (chapter "Review III"). The step is taken and then undone: parameters,
    buffers (e.g. BatchNorm running statistics), modes, ``.grad`` fields (the same
    tensors) and the optimizer's state (in place, so that a wrapper or a
    learning-rate scheduler attached to it stays in step) are restored, also if the
    closure raises.

    Args:
        model: the model whose named parameters are reported.
        optimizer: an optimizer over (some of) its parameters.
        closure: zeroes the gradients, computes the loss, calls ``backward`` and
            returns the loss (as for ``optimizer.step(closure)``).

    Returns:
        dict: parameter name to relative update (``nan`` for a zero tensor).

    Example:
        >>> lin = torch.nn.Linear(2, 1)
        >>> opt = LARS(lin.parameters(), lr=1.0, momentum=0.0, trust_coefficient=0.1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = lin(torch.ones(1, 2)).sum()
        ...     loss.backward()
        ...     return loss
        >>> before = lin.weight.detach().clone()
        >>> round(relative_updates(lin, opt, closure)["weight"], 6)
        0.1
        >>> torch.equal(lin.weight, before)
        True
    """
    from normlib._state import preserved_state

    params = dict(model.named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    with preserved_state(model), _preserved_optimizer(optimizer):
        optimizer.step(closure)
        out = {}
        for name, p in params.items():
            norm = float(torch.linalg.vector_norm(before[name]))
            step = float(torch.linalg.vector_norm(p.detach() - before[name]))
            out[name] = step / norm if norm > 0 else float("nan")
    return out


# ------------------------------------------------------------ norm and bias parameters


def _excluded(p: torch.Tensor, group: dict, default_exclude_vectors: bool) -> bool:
    """The module's rule: the group's ``"exclude"`` if set, else ``exclude_vectors`` and ``ndim < 2``."""
    exclude = group.get("exclude")
    if exclude is not None:
        return bool(exclude)
    return bool(group.get("exclude_vectors", default_exclude_vectors)) and p.ndim < 2


def _check_exclude(exclude) -> tuple:
    if isinstance(exclude, (str, type)):
        exclude = (exclude,)
    try:
        rules = tuple(exclude)
    except TypeError:
        raise argument_error(TypeError, "exclude", "a tuple of rule names and module types", exclude,
                             "e.g. exclude=('norm', 'bias')") from None
    for rule in rules:
        if isinstance(rule, type) and issubclass(rule, nn.Module):
            continue
        if rule not in EXCLUDE_RULES:
            raise argument_error(ValueError, "exclude", f"rule names from {EXCLUDE_RULES} or nn.Module types",
                                 rule, "e.g. exclude=('norm', 'bias', nn.Embedding)")
    return rules


def _gain_parameters(model: nn.Module) -> set[int]:
    """ids of the gains of weight normalizers: ``g`` of weight normalization, the parametrizations' own."""
    gains = set()
    for module in model.modules():
        if not isinstance(module, parametrize.ParametrizationList):
            continue
        first = module[0]
        if isinstance(first, (WeightNorm, torch.nn.utils.parametrizations._WeightNorm)):
            gains.add(id(module.original0))
        for transform in module:
            gains.update(id(q) for q in transform.parameters())
    return gains


def param_groups(
    model: nn.Module,
    weight_decay: float = 1e-5,
    exclude: Iterable = ("norm", "bias"),
    no_weight_decay: Iterable[str] = (),
) -> list[dict[str, Any]]:
    r"""Two parameter groups for any model: decayed and trust-scaled weights, and excluded parameters.

    The parameters named by ``exclude`` go to a group with ``weight_decay=0`` and
    ``"exclude": True`` (no trust ratio in :class:`LARS`, :class:`LAMB`, :class:`LANS`; see
    the module docstring); every other trainable parameter to a group with
    ``weight_decay`` and ``"exclude": False``. The groups work with any torch optimizer
    (timm's ``param_groups_weight_decay`` makes the same split), and tied parameters
    appear once.

    Rules in ``exclude``:

    - ``"norm"``: the parameters of normalization layers, found by type
      (:data:`NORM_LAYER_TYPES`: torch's BatchNorm, InstanceNorm, GroupNorm, LayerNorm,
      RMSNorm, ... and every normalizer of normlib; a submodule of a normalizer, such as a
      gate's ``Linear``, is judged on its own), and the gains of weight normalizers (``g`` of
      :func:`normlib.weight.weight_norm` and torch's ``weight_norm``, the gain of scaled weight
      standardization);
    - ``"bias"``: parameters whose name ends in ``bias``;
    - ``"vectors"``: every tensor with fewer than 2 dims (timm's rule);
    - an ``nn.Module`` type: the parameters that modules of that type own directly
      (``nn.Embedding``, say).

    Args:
        model: any ``nn.Module``.
        weight_decay: :math:`\lambda` of the decayed group.
        exclude: rules, as above (default ``("norm", "bias")``).
        no_weight_decay: further parameter names (as in ``model.named_parameters()``) or
            shell-style patterns (``"pos_embed"``, ``"*.cls_token"``) to exclude; a model's own
            ``no_weight_decay()`` method (timm's convention) adds its names too.

    Returns:
        list[dict]: the non-empty groups among
        ``{"params": [...], "weight_decay": weight_decay, "exclude": False}`` and
        ``{"params": [...], "weight_decay": 0.0, "exclude": True}``, in that order.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or ``exclude`` is not a tuple.
        ValueError: for an unknown rule or a negative ``weight_decay``.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8),
        ...                           torch.nn.Conv2d(8, 8, 1, bias=False))
        >>> decay, excluded = param_groups(net, weight_decay=5e-4)
        >>> [tuple(p.shape) for p in decay["params"]], len(excluded["params"])
        ([(8, 3, 3, 3), (8, 8, 1, 1)], 3)
        >>> opt = LAMB(param_groups(net, 0.01), lr=1e-3)  # weights decayed and trust-scaled
    """
    check_module("model", model)
    check_nonnegative_float("weight_decay", weight_decay)
    rules = _check_exclude(exclude)
    if isinstance(no_weight_decay, str):
        no_weight_decay = (no_weight_decay,)
    patterns = list(no_weight_decay)
    if callable(getattr(model, "no_weight_decay", None)):
        patterns += list(model.no_weight_decay())
    types = tuple(r for r in rules if isinstance(r, type))
    gains = _gain_parameters(model) if "norm" in rules else set()
    decided: dict[int, bool] = {}
    order: list[torch.nn.Parameter] = []
    for module_name, module in model.named_modules():
        for local, p in module.named_parameters(recurse=False):
            if id(p) in decided or not p.requires_grad:
                continue
            name = f"{module_name}.{local}" if module_name else local
            excluded = (
                ("norm" in rules and (isinstance(module, NORM_LAYER_TYPES) or id(p) in gains))
                or ("bias" in rules and local.endswith("bias"))
                or ("vectors" in rules and p.ndim < 2)
                or (bool(types) and isinstance(module, types))
                or any(name == pat or fnmatch.fnmatchcase(name, pat) for pat in patterns)
            )
            decided[id(p)] = excluded
            order.append(p)
    decay = [p for p in order if not decided[id(p)]]
    skip = [p for p in order if decided[id(p)]]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": float(weight_decay), "exclude": False})
    if skip:
        groups.append({"params": skip, "weight_decay": 0.0, "exclude": True})
    return groups


class _preserved_optimizer:
    """Undo one step of ``optimizer`` in place: its state tensors, group options and counters.

    In place, not through ``load_state_dict`` (which replaces the group dicts): a wrapper that
    shares the groups, and a learning-rate scheduler that reads them, stay in step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer

    def __enter__(self):
        opt = self.optimizer
        self.groups = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
                       for g in opt.param_groups]
        self.state = {p: {k: (v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v))
                          for k, v in st.items()}
                      for p, st in opt.state.items()}
        self.state_objects = {p: dict(st) for p, st in opt.state.items()}
        self.attrs = {k: getattr(opt, k) for k in ("_opt_called", "_step_count") if hasattr(opt, k)}
        return opt

    def __exit__(self, *exc):
        opt = self.optimizer
        for group, saved in zip(opt.param_groups, self.groups):
            for key in [k for k in group if k != "params" and k not in saved]:
                del group[key]
            group.update(saved)
        for p in [p for p in opt.state if p not in self.state]:
            del opt.state[p]
        with torch.no_grad():
            for p, saved in self.state.items():
                st = opt.state[p]
                for key in [k for k in st if k not in saved]:
                    del st[key]
                for key, value in saved.items():
                    obj = self.state_objects[p].get(key)
                    if isinstance(obj, torch.Tensor) and obj.shape == value.shape:
                        obj.data.copy_(value)  # the same tensor object, its values back
                        st[key] = obj
                    else:
                        st[key] = value
        for key in ("_opt_called", "_step_count"):
            if key in self.attrs:
                setattr(opt, key, self.attrs[key])
            elif hasattr(opt, key) and key in vars(opt):
                delattr(opt, key)
        return False


# ------------------------------------------------------------------------- wrappers


class GradientTransform(Optimizer):
    """Base class of optimizer wrappers that transform gradients before the wrapped step.

    The wrapper shares the wrapped optimizer's ``param_groups`` and ``state``
    (its own options are extra keys of the same group dicts), so learning-rate
    schedulers, ``state_dict`` and ``add_param_group`` act on both. ``step``
    evaluates the closure (if any), replaces every ``p.grad`` by its transform
    *in place*, then calls the wrapped optimizer's ``step()``. Subclasses
    implement :meth:`transform`.

    Args:
        optimizer: the optimizer to wrap.
        defaults: the wrapper's own per-group options.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, defaults: dict[str, Any]) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}; "
                f"build one first, e.g. {type(self).__name__}(torch.optim.SGD(params, lr=0.1))"
            )
        self.optimizer = optimizer
        self._own_defaults = dict(defaults)
        self._sharing = False
        super().__init__(optimizer.param_groups, dict(defaults))
        self._share_with_wrapped()

    def _share_with_wrapped(self) -> None:
        self.param_groups = self.optimizer.param_groups
        self.state = self.optimizer.state
        self.defaults = {**self.optimizer.defaults, **self._own_defaults}
        for group in self.param_groups:
            for key, value in self._own_defaults.items():
                group.setdefault(key, value)
        self._sharing = True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the wrapped optimizer, with this wrapper's defaults."""
        if not self._sharing:
            super().add_param_group(param_group)
            return
        self.optimizer.add_param_group(param_group)
        for key, value in self._own_defaults.items():
            self.param_groups[-1].setdefault(key, value)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict (its groups include this wrapper's options)."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load into the wrapped optimizer and share its new groups and state."""
        self.optimizer.load_state_dict(state_dict)
        self._share_with_wrapped()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The wrapped optimizer's ``zero_grad``."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def transform(self, grad: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """The transformed gradient of one parameter tensor."""
        raise NotImplementedError

    @torch.no_grad()
    def _transform_grads(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    grad = _dense_grad(p, type(self).__name__)
                    grad.copy_(self.transform(grad, group))

    def step(self, closure: Callable[[], Any] | None = None):
        """Transform every gradient in place, then take the wrapped optimizer's step.

        Args:
            closure: re-evaluates the model and returns the loss. It is handed on to the
                wrapped optimizer (wrapped so that every evaluation's gradients are
                transformed), so optimizers that evaluate it several times per step, such as
                ``torch.optim.LBFGS``, work as they do unwrapped.

        Returns:
            What the wrapped optimizer's step returns (the closure's loss, or ``None``).
        """
        if closure is None:
            self._transform_grads()
            return self.optimizer.step()

        def transformed_closure():
            with torch.enable_grad():
                loss = closure()
            self._transform_grads()
            return loss

        return self.optimizer.step(transformed_closure)

    def __repr__(self) -> str:
        own = ", ".join(f"{k}={self.param_groups[0][k]}" for k in self._own_defaults)
        return f"{type(self).__name__}({own}, optimizer={self.optimizer!r})"


class GradientCentralization(GradientTransform):
    r"""Gradient centralization (Yong et al., 2020) around any optimizer.

    Every weight gradient with at least 2 dims (3 with ``conv_only=True``) is
    centralized per output unit (:func:`centralize_gradient`) before the
    wrapped step. With SGD (with or without momentum, without weight decay)
    each row's mean of the weight then never changes.

    Args:
        optimizer: the optimizer to wrap.
        conv_only: centralize convolution weights only (``ndim >= 3``).

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([[1.0, 2.0]]))
        >>> opt = GradientCentralization(torch.optim.SGD([w], lr=0.5))
        >>> w.grad = torch.tensor([[1.0, 3.0]])
        >>> _ = opt.step()
        >>> w.detach()  # the row mean stays 1.5
        tensor([[1.5000, 1.5000]])
    """

    def __init__(self, optimizer: torch.optim.Optimizer, conv_only: bool = False) -> None:
        check_bool("conv_only", conv_only)
        super().__init__(optimizer, {"centralize_conv_only": conv_only})

    def transform(self, grad: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        return centralize_gradient(grad, 3 if group["centralize_conv_only"] else 2)


class GradientNormalization(GradientTransform):
    r"""Per-layer gradient normalization :math:`g \leftarrow g / (\|g\| + \epsilon)` around any optimizer.

    Each parameter tensor (block) gets a unit-norm gradient before the wrapped
    step, so with SGD every block moves by ``lr`` whatever the scale of its
    gradient (block-normalized gradient, Yu et al., 2017). It removes exploding
    and vanishing gradient *magnitudes* per layer, not their directions.

    Args:
        optimizer: the optimizer to wrap.
        eps: added to each gradient norm.

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> opt = GradientNormalization(torch.optim.SGD([w], lr=1.0), eps=0.0)
        >>> w.grad = torch.tensor([30.0, 40.0])
        >>> _ = opt.step()
        >>> w.detach()
        tensor([-0.6000, -0.8000])
    """

    def __init__(self, optimizer: torch.optim.Optimizer, eps: float = 1e-8) -> None:
        super().__init__(optimizer, {"normalize_eps": check_nonnegative_float("eps", eps)})

    def transform(self, grad: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        return normalize_gradient(grad, group["normalize_eps"])


# ---------------------------------------------------------------- LARS, LAMB, LANS


class LARS(Optimizer):
    r"""Layer-wise adaptive rate scaling (You et al., 2017): SGD with a trust ratio per tensor.

    For each parameter tensor ``w`` with gradient ``g``:

    .. math::

        \rho = \frac{\eta \|w\|}{\|g\| + \lambda \|w\|},\quad
        d = \rho\, (g + \lambda w),\quad
        b \leftarrow \mu b + (1 - \tau) d,\quad
        w \leftarrow w - \alpha\, b

    (with Nesterov, :math:`w \leftarrow w - \alpha (d + \mu b)`). The step of every
    layer is about :math:`\alpha \eta \|w\|`, independent of the scale of its
    gradient. Excluded parameters (the module's rule: a group's ``"exclude"`` key, else
    with ``exclude_vectors`` (default) every tensor with fewer than 2 dims: biases,
    normalizer scales) take a plain momentum-SGD step without trust ratio or weight
    decay, as is usual for LARS (and as pytorch-optimizer does). Build the groups with
    :func:`param_groups` to exclude by module type and name instead of by shape.

    Args:
        params: parameters or parameter groups.
        lr: :math:`\alpha`.
        momentum: :math:`\mu`.
        dampening: :math:`\tau`.
        weight_decay: :math:`\lambda`.
        trust_coefficient: :math:`\eta`.
        nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening = 0``).
        exclude_vectors: exclude tensors with ``ndim < 2`` in groups without an
            ``"exclude"`` key.

    Example:
        >>> lin = torch.nn.Linear(3, 2)
        >>> opt = LARS(lin.parameters(), lr=0.1)
        >>> lin(torch.randn(4, 3)).sum().backward()
        >>> _ = opt.step()
        >>> float(opt.state[lin.weight]["trust_ratio"]) > 0
        True
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        momentum: float = 0.9,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        trust_coefficient: float = 1e-3,
        nesterov: bool = False,
        exclude_vectors: bool = True,
    ) -> None:
        check_nonnegative_float("lr", lr)
        check_probability("momentum", momentum, high_open=True)
        check_probability("dampening", dampening, high_open=True)
        check_nonnegative_float("weight_decay", weight_decay)
        check_positive_float("trust_coefficient", trust_coefficient)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                f"nesterov=True needs momentum > 0 and dampening = 0, got momentum={momentum}, "
                f"dampening={dampening}"
            )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            nesterov=nesterov,
            exclude_vectors=check_bool("exclude_vectors", exclude_vectors),
            exclude=None,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """One LARS step for every parameter with a gradient.

        Args:
            closure: re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = _dense_grad(p, "LARS")
                state = self.state[p]
                if _excluded(p, group, self.defaults["exclude_vectors"]):
                    state["trust_ratio"] = torch.ones((), dtype=p.dtype, device=p.device)
                else:
                    ratio = lars_trust_ratio(p, grad, group["trust_coefficient"], wd)
                    grad = (grad + wd * p) * ratio
                    state["trust_ratio"] = ratio
                if mu > 0:
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    buf = state["momentum_buffer"]
                    buf.mul_(mu).add_(grad, alpha=1.0 - group["dampening"])
                    grad = grad + mu * buf if group["nesterov"] else buf
                p.add_(grad, alpha=-lr)
        return loss


def _adam_moments(state: dict, grad: torch.Tensor, beta1: float, beta2: float) -> int:
    """Update the first and second moments in ``state``; return the step count."""
    if "step" not in state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(grad)
        state["exp_avg_sq"] = torch.zeros_like(grad)
    state["step"] += 1
    state["exp_avg"].mul_(beta1).add_(grad, alpha=1.0 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    return state["step"]


class LAMB(Optimizer):
    r"""Layer-wise adaptive moments for large batches (You et al., 2020): Adam with a trust ratio.

    For each parameter tensor ``w`` with gradient ``g``, at step ``t``:

    .. math::

        m \leftarrow \beta_1 m + (1-\beta_1) g,\quad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2,\quad
        r = \frac{m / c_1}{\sqrt{v / c_2} + \epsilon},\quad
        u = r + \lambda w,\quad
        w \leftarrow w - \alpha\, \frac{\phi(\|w\|)}{\|u\| + \epsilon}\, u

    with :math:`c_i = 1 - \beta_i^t` if ``bias_correction`` (else 1) and
    :math:`\phi(z) = \min(z, z_{\max})` (see :func:`lamb_trust_ratio`). With
    ``decoupled_weight_decay``, the decay is applied AdamW-style instead,
    :math:`w \leftarrow (1 - \alpha\lambda) w` before the step, and
    :math:`u = r`.

    Excluded parameters (the module's rule: a group's ``"exclude"`` key, else with
    ``exclude_vectors`` (default) every tensor with fewer than 2 dims: biases and
    normalizer scales, as in the BERT code of the paper) take Adam's step
    :math:`w \leftarrow w - \alpha r`: no weight decay, trust ratio 1. Build the groups
    with :func:`param_groups` to exclude by module type and name instead of by shape.

    pytorch-optimizer's ``Lamb(adam_debias=True)`` takes the same steps with
    ``bias_correction=False`` and ``exclude_vectors=False`` (its default divides the step
    by :math:`c_1` but not :math:`v` by :math:`c_2`; its ``weight_decouple=False`` is the
    paper's :math:`u = r + \lambda w`, here the default; it trust-scales every tensor).

    Args:
        params: parameters or parameter groups.
        lr: :math:`\alpha`.
        betas: :math:`(\beta_1, \beta_2)`.
        eps: :math:`\epsilon`, in Adam's denominator and the trust ratio's.
        weight_decay: :math:`\lambda`.
        bias_correction: correct both moments for their zero start.
        max_weight_norm: :math:`z_{\max}` (``None``: no clipping).
        decoupled_weight_decay: AdamW-style decay outside the trust ratio.
        exclude_vectors: exclude tensors with ``ndim < 2`` in groups without an
            ``"exclude"`` key.

    Example:
        >>> lin = torch.nn.Linear(3, 2)
        >>> opt = LAMB(lin.parameters(), lr=0.01)
        >>> lin(torch.randn(4, 3)).sum().backward()
        >>> _ = opt.step()
        >>> sorted(opt.state[lin.weight])
        ['exp_avg', 'exp_avg_sq', 'step', 'trust_ratio']
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
        max_weight_norm: float | None = 10.0,
        decoupled_weight_decay: bool = False,
        exclude_vectors: bool = True,
    ) -> None:
        check_nonnegative_float("lr", lr)
        betas = _check_betas(betas)
        check_nonnegative_float("eps", eps)
        check_nonnegative_float("weight_decay", weight_decay)
        if max_weight_norm is not None:
            check_positive_float("max_weight_norm", max_weight_norm)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            bias_correction=bias_correction,
            max_weight_norm=max_weight_norm,
            decoupled_weight_decay=decoupled_weight_decay,
            exclude_vectors=check_bool("exclude_vectors", exclude_vectors),
            exclude=None,
        )
        super().__init__(params, defaults)

    def _moments(self, grad: torch.Tensor, state: dict, group: dict):
        """Update the moments; return Adam's direction ``r`` and its denominator."""
        beta1, beta2 = group["betas"]
        step = _adam_moments(state, grad, beta1, beta2)
        c1, c2 = (1 - beta1**step, 1 - beta2**step) if group["bias_correction"] else (1.0, 1.0)
        denom = (state["exp_avg_sq"] / c2).sqrt_().add_(group["eps"])
        return state["exp_avg"] / c1 / denom, denom

    def _directions(
        self, grad: torch.Tensor, state: dict, group: dict
    ) -> list[tuple[float, torch.Tensor]]:
        """``(weight, direction)`` pairs whose trust-scaled sum is the step (LAMB: one)."""
        return [(1.0, self._moments(grad, state, group)[0])]

    def _prepare_grad(self, grad: torch.Tensor) -> torch.Tensor:
        return grad

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """One step for every parameter with a gradient.

        Args:
            closure: re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        name = type(self).__name__
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            decoupled = group["decoupled_weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = self._prepare_grad(_dense_grad(p, name))
                state = self.state[p]
                directions = self._directions(grad, state, group)
                excluded = _excluded(p, group, self.defaults["exclude_vectors"])
                decay = 0.0 if excluded else wd
                if decoupled and decay > 0:
                    p.mul_(1.0 - lr * decay)
                total = torch.zeros_like(p)
                ratios = []
                for weight, direction in directions:
                    if not decoupled and decay > 0:
                        direction = direction + decay * p
                    if excluded:
                        ratio = torch.ones((), dtype=p.dtype, device=p.device)
                    else:
                        ratio = lamb_trust_ratio(p, direction, group["eps"], group["max_weight_norm"])
                    ratios.append(ratio)
                    total.add_(direction * ratio, alpha=weight)
                state["trust_ratio"] = ratios[0]
                p.add_(total, alpha=-lr)
        return loss


class LANS(LAMB):
    r"""LAMB with per-block normalized gradients and Nesterov momentum (Zheng et al., 2020).

    Each tensor's gradient is first normalized, :math:`\tilde g = g / \|g\|`; the
    moments are those of :math:`\tilde g` (bias-corrected); the step combines two
    trust-scaled directions, the momentum one and the current gradient's:

    .. math::

        r = \frac{\hat m}{\sqrt{\hat v} + \epsilon},\quad
        c = \frac{\tilde g}{\sqrt{\hat v} + \epsilon},\quad
        w \leftarrow w - \alpha \Big(\beta_1 \frac{\phi(\|w\|)}{\|r + \lambda w\|} (r + \lambda w)
        + (1 - \beta_1) \frac{\phi(\|w\|)}{\|c + \lambda w\|} (c + \lambda w)\Big)

    Arguments as :class:`LAMB`, and the same rule for excluded parameters (no weight
    decay, both trust ratios 1). ``optimizer.state[p]["trust_ratio"]`` is the momentum
    direction's trust ratio.

    Example:
        >>> lin = torch.nn.Linear(3, 2)
        >>> opt = LANS(lin.parameters(), lr=0.01)
        >>> lin(torch.randn(4, 3)).sum().backward()
        >>> _ = opt.step()
        >>> opt.state[lin.weight]["step"]
        1
    """

    def _prepare_grad(self, grad: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(grad)
        return torch.where(norm > 0, grad / norm.clamp_min(torch.finfo(grad.dtype).tiny), grad)

    def _directions(
        self, grad: torch.Tensor, state: dict, group: dict
    ) -> list[tuple[float, torch.Tensor]]:
        beta1 = group["betas"][0]
        r, denom = self._moments(grad, state, group)
        return [(beta1, r), (1.0 - beta1, grad / denom)]
