r"""Models with a pluggable normalizer: an MLP, a residual MLP, a VGG-style CNN and a CIFAR ResNet.

Every model takes ``norm=`` as a registry name (``"bn"``, ``"gn"``, ``"wn"``, ...),
a callable ``f(num_features) -> nn.Module``, or ``None``, plus ``norm_kwargs``
for the normalizer (for example ``{"num_groups": 8}``). Weight normalizers
(registered with :func:`normlib.registry.register_weight_norm`) are applied to
the convolution or linear layer in front of the normalizer slot instead, and
``norm_kwargs`` go to them (``{"eps": 1e-5}`` for ``"wn"``).

``activation=`` is a name (``"relu"``, the default; ``"gelu"``, ``"silu"``, ``"tanh"``,
``"identity"``), an ``nn.Module`` class (``nn.SiLU``, as timm's ``act_layer``), a module
instance (copied for every use) or a function of a tensor (``torch.tanh``).

Weights use Kaiming (He) initialization (fan-in; the ReLU gain for ``"relu"``, ``"gelu"``,
``"silu"`` and for classes, instances and functions, the gain 1 for ``"tanh"`` and
``"identity"``); biases start at zero. A linear or convolution layer followed by an
activation normalizer has no bias (the normalizer's centering would remove it).

Two weight-normalized networks (``norm="wn"``), chosen by ``weight_norm_style``:

- ``"torch"`` (default): torch's reparametrization :math:`w = g\,v/\|v\|` of each
  He-initialized layer, with :math:`g = \|v\|` at initialization
  (:func:`normlib.weight.weight_norm`). At initialization the network computes exactly
  what the same network without normalization computes (to float rounding); weight
  normalization changes only how training moves the weights.
- ``"lubana"``: the weight-normalized networks of Lubana, Dick and Tanaka (2021) (their
  code's ``WN_self`` and ``WN_scaledReLU``): every filter has unit norm at initialization
  (:math:`g = 1`, the gains of NormProp, Arpit et al. 2016), convolutions keep a bias
  (zero at init), and every activation is standardized for a standard normal input
  (:class:`StandardizedActivation`): for ReLU,
  :math:`(\mathrm{relu}(x) - 1/\sqrt{2\pi}) / \sqrt{\tfrac12(1 - 1/\pi)}`, NormProp's
  ReLU (:func:`normlib.weight.normprop_relu`). Their code divides by :math:`\|v\| + 10^{-5}`;
  here the norm is bounded below by ``eps`` instead (``norm_kwargs={"eps": ...}``), which
  changes a He-initialized filter by a relative :math:`10^{-5}` at most. Their CIFAR ResNet-56
  has width 32 and 3x3 projection shortcuts:
  ``resnet56(width=32, num_classes=100, norm="wn", weight_norm_style="lubana",
  shortcut_kernel_size=3)``.

The layouts that the propagation probes rely on:

- :class:`MLP`: ``model.layers`` (one block per hidden layer: linear, normalizer, activation),
  then ``model.head``.
- :class:`ResidualMLP`: ``model.stem`` (a linear layer), ``model.blocks`` (the pre-activation
  residual blocks in order), ``model.final`` (normalizer and activation), ``model.head``.
- :class:`VGG`: ``model.layers`` (one block per convolution), global average pooling, ``model.head``.
- :class:`ResNet`: ``model.stem``, ``model.blocks`` (the residual blocks in order),
  global average pooling, ``model.head``.

The chapters "Stable forward propagation" and "Review III" use these models.

Example:
    >>> import torch
    >>> from normlib.models import MLP, VGG, ResidualMLP, resnet20
    >>> MLP(64, 10, width=32, depth=3, norm="bn")(torch.randn(5, 64)).shape
    torch.Size([5, 10])
    >>> VGG(in_channels=1, num_classes=10, depth=4, width=8, norm="gn",
    ...     norm_kwargs={"num_groups": 4})(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    >>> resnet20(num_classes=10, width=8, norm="bn")(torch.randn(2, 3, 16, 16)).shape
    torch.Size([2, 10])
    >>> ResidualMLP(64, 10, width=32, depth=4, norm="ln", activation="gelu")(torch.randn(5, 64)).shape
    torch.Size([5, 10])
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from normlib import registry
from normlib._checks import argument_error, check_choice, check_positive_int
from normlib.registry import NormSpec, is_weight_norm, norm_factory, weight_transform
from normlib.weight import weight_norm

__all__ = ["MLP", "ResidualMLP", "VGG", "ResNet", "BasicBlock", "resnet20", "resnet56",
           "kaiming_init_", "has_activation_norm", "StandardizedActivation", "ACTIVATIONS",
           "WEIGHT_NORM_STYLES"]

#: The activations known by name; ``activation=`` also takes a module class, a module or a function.
ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
    "linear": nn.Identity,
}
#: The two weight-normalized networks that ``norm="wn"`` builds (see the module docstring).
WEIGHT_NORM_STYLES = ("torch", "lubana")

# Activation names whose He initialization uses the ReLU gain sqrt(2); the others use gain 1.
_RELU_GAIN = ("relu", "gelu", "silu")




class _Function(nn.Module):
    """An activation given as a function of a tensor, as a module."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


def _check_activation(activation) -> None:
    if isinstance(activation, str):
        if activation.strip().lower() not in ACTIVATIONS:
            raise argument_error(
                ValueError, "activation", f"one of ({', '.join(repr(k) for k in ACTIVATIONS)})",
                activation, "or pass an nn.Module class, a module or a function of a tensor")
    elif not callable(activation):
        raise argument_error(TypeError, "activation", "a name, an nn.Module class, a module or a "
                             "function of a tensor", activation, "e.g. activation='relu'")


def _activation(activation) -> nn.Module:
    """A fresh activation module for ``activation`` (name, module class, module or function)."""
    _check_activation(activation)
    if isinstance(activation, str):
        return ACTIVATIONS[activation.strip().lower()]()
    if isinstance(activation, type) and issubclass(activation, nn.Module):
        return activation()
    if isinstance(activation, nn.Module):
        return copy.deepcopy(activation)
    return _Function(activation)


def _init_gain_name(activation) -> str:
    if isinstance(activation, str):
        return "relu" if activation.strip().lower() in _RELU_GAIN else "linear"
    return "relu"


# Mean and standard deviation of relu(z) for z ~ N(0, 1), in closed form (NormProp's constants).
_RELU_MEAN = 1.0 / math.sqrt(2.0 * math.pi)
_RELU_STD = math.sqrt(0.5 * (1.0 - 1.0 / math.pi))


def _gaussian_moments(module: nn.Module) -> tuple[float, float]:
    """Mean and standard deviation of ``module(z)`` for ``z ~ N(0, 1)``, by quadrature in float64."""
    if type(module) is nn.ReLU:
        return _RELU_MEAN, _RELU_STD
    z = torch.linspace(-12.0, 12.0, 240_001, dtype=torch.float64)
    density = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    with torch.no_grad():
        fz = module(z).to(torch.float64)
    mean = float(torch.trapezoid(fz * density, z))
    var = float(torch.trapezoid((fz - mean) ** 2 * density, z))
    if not var > 0:
        raise ValueError(f"activation {module} has zero variance under N(0, 1); it cannot be standardized")
    return mean, math.sqrt(var)


class StandardizedActivation(nn.Module):
    r"""An activation standardized for a standard normal input: :math:`(f(x) - \mu_f) / \sigma_f`.

    :math:`\mu_f` and :math:`\sigma_f` are the mean and standard deviation of
    :math:`f(z)`, :math:`z \sim N(0, 1)`, so a unit Gaussian pre-activation gives an
    output of mean 0 and variance 1 without batch statistics. For ReLU they are
    :math:`1/\sqrt{2\pi}` and :math:`\sqrt{\tfrac12(1 - 1/\pi)}` in closed form, and the
    module is NormProp's ReLU (Arpit et al., 2016; :func:`normlib.weight.normprop_relu`),
    the scaled ReLU of the weight-normalized networks of Lubana et al. (2021); for other
    activations they are computed by quadrature once, at construction.
    ``weight_norm_style="lubana"`` puts one wherever the model would put ``f``.
    Chapter "Stable forward propagation".

    Args:
        activation: as the models' ``activation=`` (name, module class, module or function).

    Shape: ``x: (N, *)`` to the same shape.

    Example:
        >>> act = StandardizedActivation("relu")
        >>> y = act(torch.randn(1_000_000, generator=torch.Generator().manual_seed(0)))
        >>> round(float(y.mean()), 2), round(float(y.var()), 2)
        (0.0, 1.0)
    """

    def __init__(self, activation=None):
        super().__init__()
        self.act = _activation("relu" if activation is None else activation)
        self.mean, self.std = _gaussian_moments(self.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.act(x) - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean:.6g}, std={self.std:.6g}"


def _is_wn(norm: NormSpec) -> bool:
    if not isinstance(norm, str):
        return False
    key = registry._key(norm)
    return registry._ALIASES.get(key, key) == "wn"


def _unit_weight_norm(module: nn.Module, **kwargs) -> nn.Module:
    """Weight normalization with every gain set to 1: unit-norm filters (Lubana et al.'s WN)."""
    weight_norm(module, **kwargs)
    with torch.no_grad():
        module.parametrizations[kwargs.get("name", "weight")].original0.fill_(1.0)
    return module


def _norm_builders(norm: NormSpec, norm_kwargs: dict | None, activation="relu",
                   weight_norm_style: str = "torch"):
    """``(make_norm, weight_transform, make_activation)`` for a model.

    An activation normalizer gets ``norm_kwargs`` at construction; a weight normalizer's
    options (``eps``, ``n_power_iterations``, ...) go to its weight transform, which validates
    them when the model is built, instead of being swallowed by the ``nn.Identity`` in its slot.
    ``weight_norm_style="lubana"`` (only with ``norm="wn"``) gives unit-norm filters and
    standardized activations.
    """
    if norm_kwargs is not None and not isinstance(norm_kwargs, dict):
        raise TypeError(f"norm_kwargs must be a dict of keyword arguments, got {type(norm_kwargs).__name__}")
    check_choice("weight_norm_style", weight_norm_style, WEIGHT_NORM_STYLES)
    _check_activation(activation)
    kwargs = dict(norm_kwargs or {})
    if weight_norm_style == "lubana":
        if not _is_wn(norm):
            raise argument_error(
                ValueError, "weight_norm_style", "'torch' unless norm='wn'", weight_norm_style,
                f"'lubana' builds Lubana et al.'s weight-normalized network and needs norm='wn', "
                f"got norm={norm!r}")
        return (norm_factory(None), lambda m: _unit_weight_norm(m, **kwargs),
                lambda: StandardizedActivation(activation))
    make_act = lambda: _activation(activation)  # noqa: E731
    if is_weight_norm(norm):
        return norm_factory(None), weight_transform(norm, **kwargs), make_act
    return norm_factory(norm, **kwargs), weight_transform(norm), make_act


def has_activation_norm(norm: NormSpec, num_features: int = 8) -> bool | None:
    """Whether ``norm`` puts a normalization layer in a model (where ``norm_kwargs`` go).

    ``False`` for ``None``, ``"none"`` and the weight normalizers (``"wn"``, ``"sws"``, ...),
    whose slot in a model is an ``nn.Identity`` that accepts and ignores every keyword
    argument; ``True`` for an activation normalizer or a factory; ``None`` when the name cannot
    be built with its defaults for ``num_features`` channels (an unknown name, for one:
    building the model says why).

    Example:
        >>> has_activation_norm("gn"), has_activation_norm("wn"), has_activation_norm("none")
        (True, False, False)
    """
    if norm is None or is_weight_norm(norm):
        return False
    if not isinstance(norm, str):
        return True
    try:
        return not isinstance(norm_factory(norm)(num_features), nn.Identity)
    except (TypeError, ValueError):
        return None


def kaiming_init_(model: nn.Module, nonlinearity: str = "relu") -> nn.Module:
    """Kaiming-normal (fan-in) initialization of every conv and linear weight; zero biases.

    ``nonlinearity``: ``"relu"``, ``"gelu"`` and ``"silu"`` use the ReLU gain
    :math:`\\sqrt 2`, any other name the gain 1. Layers whose weight is already parametrized
    (weight normalization and friends) are left alone: models initialize each layer before
    parametrizing it. Returns ``model``.

    Example:
        >>> lin = kaiming_init_(nn.Linear(400, 300)).requires_grad_(False)
        >>> round(float(lin.weight.std() * 400 ** 0.5), 1), float(lin.bias.abs().max())
        (1.4, 0.0)
    """
    gain_name = "relu" if nonlinearity in _RELU_GAIN else "linear"
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if hasattr(m, "parametrizations") and "weight" in m.parametrizations:
                continue
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity=gain_name)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def _initialized(reparam, nonlinearity: str = "relu"):
    """Kaiming-initialize a fresh layer, then apply the weight normalizer ``reparam``."""
    return lambda layer: reparam(kaiming_init_(layer, nonlinearity))


class MLP(nn.Module):
    """A fully connected network: ``depth`` hidden blocks of ``Linear -> norm -> act``.

    Args:
        in_features: input size; inputs ``(N, *)`` are flattened to ``(N, in_features)``.
        num_classes: output size.
        width: hidden width.
        depth: number of hidden layers (at least 1).
        norm: normalizer name, factory or ``None``.
        activation: ``"relu"`` (default), ``"gelu"``, ``"silu"``, ``"tanh"``, ``"identity"``,
            an ``nn.Module`` class, a module or a function of a tensor.
        norm_kwargs: keyword arguments for the normalizer.
        weight_norm_style: with ``norm="wn"``, ``"torch"`` (default) or ``"lubana"`` (unit-norm
            rows, standardized activations; see the module docstring).

    Example:
        >>> MLP(8, 3, width=16, depth=2, norm="wn", weight_norm_style="lubana")(torch.randn(4, 8)).shape
        torch.Size([4, 3])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        width: int = 128,
        depth: int = 4,
        norm: NormSpec = None,
        activation="relu",
        norm_kwargs: dict | None = None,
        weight_norm_style: str = "torch",
    ):
        super().__init__()
        for name, value in [("in_features", in_features), ("num_classes", num_classes),
                            ("width", width), ("depth", depth)]:
            check_positive_int(name, value)
        make_norm, transform, make_act = _norm_builders(norm, norm_kwargs, activation, weight_norm_style)
        gain = _init_gain_name(activation)
        reparam = _initialized(transform, gain)
        bias = has_activation_norm(norm) is False
        self.in_features, self.width, self.depth = in_features, width, depth
        layers = []
        fan_in = in_features
        for _ in range(depth):
            layers.append(nn.Sequential(
                reparam(nn.Linear(fan_in, width, bias=bias)), make_norm(width), make_act()
            ))
            fan_in = width
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(width, num_classes)
        kaiming_init_(self, gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"expected {self.in_features} input features, got {x.shape[1]}")
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def _skipinit_alpha(skipinit) -> float | None:
    if skipinit is True:
        return 0.0
    if skipinit is False or skipinit is None:
        return None
    return float(skipinit)


class _PreActivationBlock(nn.Module):
    """``x + alpha * branch(x)``, ``branch`` = ``branch_layers`` x (norm -> act -> linear)."""

    def __init__(self, width, branch_layers, make_norm, make_act, reparam, bias, skipinit_alpha):
        super().__init__()
        self.branch = nn.Sequential(*[
            nn.Sequential(make_norm(width), make_act(), reparam(nn.Linear(width, width, bias=bias)))
            for _ in range(branch_layers)
        ])
        self.alpha = None if skipinit_alpha is None else nn.Parameter(torch.tensor(skipinit_alpha))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if self.alpha is not None:
            out = self.alpha * out
        return x + out


class ResidualMLP(nn.Module):
    r"""A pre-activation residual MLP: :math:`x_{l+1} = x_l + \alpha f_l(x_l)`.

    He et al.'s (2016) pre-activation ordering on fully connected layers: the branch is
    ``branch_layers`` units of ``norm -> act -> Linear``, so the stream itself is never
    normalized or rectified and only the branches are (the layout that the variance
    recursion of chapter "Stable forward propagation" describes). A linear stem maps the
    input to ``width``; a final ``norm -> act`` precedes the linear head, as in
    pre-activation ResNets.

    Args:
        in_features: input size; inputs ``(N, *)`` are flattened.
        num_classes: output size.
        width: width of the stream and the branches.
        depth: number of residual blocks (at least 1).
        norm: normalizer name, factory or ``None``.
        activation: as :class:`MLP`.
        norm_kwargs: keyword arguments for the normalizer.
        branch_layers: ``norm -> act -> Linear`` units per branch (default 2).
        skipinit: a learnable scalar :math:`\alpha` on each branch (SkipInit); ``True``
            initializes it to 0, a float to that value.
        weight_norm_style: as :class:`MLP`.

    Example:
        >>> net = ResidualMLP(12, 3, width=16, depth=5, norm="bn")
        >>> net(torch.randn(4, 12)).shape, len(net.blocks)
        (torch.Size([4, 3]), 5)
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        width: int = 128,
        depth: int = 8,
        norm: NormSpec = None,
        activation="relu",
        norm_kwargs: dict | None = None,
        branch_layers: int = 2,
        skipinit: bool | float = False,
        weight_norm_style: str = "torch",
    ):
        super().__init__()
        for name, value in [("in_features", in_features), ("num_classes", num_classes),
                            ("width", width), ("depth", depth), ("branch_layers", branch_layers)]:
            check_positive_int(name, value)
        make_norm, transform, make_act = _norm_builders(norm, norm_kwargs, activation, weight_norm_style)
        gain = _init_gain_name(activation)
        reparam = _initialized(transform, gain)
        bias = has_activation_norm(norm) is False
        alpha = _skipinit_alpha(skipinit)
        self.in_features, self.width, self.depth = in_features, width, depth
        self.stem = reparam(nn.Linear(in_features, width, bias=bias))
        self.blocks = nn.ModuleList([
            _PreActivationBlock(width, branch_layers, make_norm, make_act, reparam, bias, alpha)
            for _ in range(depth)
        ])
        self.final = nn.Sequential(make_norm(width), make_act())
        self.head = nn.Linear(width, num_classes)
        kaiming_init_(self, gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"expected {self.in_features} input features, got {x.shape[1]}")
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.final(x))


class VGG(nn.Module):
    """A VGG-style non-residual CNN: ``depth`` blocks of ``conv3x3 -> norm -> act``.

    The convolutions are split into ``num_stages`` stages of (almost) equal length;
    stage ``s`` has ``width * 2**s`` channels and its first convolution has stride 2
    (except the first stage). Global average pooling and a linear head follow.

    Args:
        in_channels: input channels.
        num_classes: output size.
        depth: number of convolutions (at least ``num_stages``).
        width: channels of the first stage.
        norm: normalizer name, factory or ``None``.
        norm_kwargs: keyword arguments for the normalizer.
        num_stages: number of resolutions (default 3).
        activation: as :class:`MLP` (default ``"relu"``).
        weight_norm_style: as :class:`MLP`.

    Example:
        >>> VGG(3, 10, depth=4, width=8, activation="silu")(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        depth: int = 10,
        width: int = 32,
        norm: NormSpec = "bn",
        norm_kwargs: dict | None = None,
        num_stages: int = 3,
        activation="relu",
        weight_norm_style: str = "torch",
    ):
        super().__init__()
        for name, value in [("in_channels", in_channels), ("num_classes", num_classes),
                            ("depth", depth), ("width", width), ("num_stages", num_stages)]:
            check_positive_int(name, value)
        if depth < num_stages:
            raise ValueError(f"depth={depth} must be at least num_stages={num_stages}")
        make_norm, transform, make_act = _norm_builders(norm, norm_kwargs, activation, weight_norm_style)
        gain = _init_gain_name(activation)
        reparam = _initialized(transform, gain)
        bias = has_activation_norm(norm) is False
        per_stage = [depth // num_stages + (1 if s < depth % num_stages else 0)
                     for s in range(num_stages)]
        layers, c_in = [], in_channels
        for s, n in enumerate(per_stage):
            c_out = width * 2**s
            for i in range(n):
                stride = 2 if (s > 0 and i == 0) else 1
                conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
                layers.append(nn.Sequential(reparam(conv), make_norm(c_out), make_act()))
                c_in = c_out
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(c_in, num_classes)
        self.depth, self.width = depth, width
        kaiming_init_(self, gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.head(x.mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    """The CIFAR ResNet block: ``act(shortcut(x) + alpha * branch(x))``.

    ``branch = norm(conv(act(norm(conv(x)))))``; the shortcut is the identity, or a
    strided ``shortcut_kernel_size`` x ``shortcut_kernel_size`` convolution (1, He et al.'s
    option B; 3, as in Lubana et al.'s code) with a normalizer when the shape changes.
    ``alpha`` is 1, or a learnable scalar (SkipInit, De and Smith 2020) initialized to
    ``skipinit_alpha``. ``make_act`` builds the activation modules (ReLU if ``None``).
    """

    def __init__(self, c_in, c_out, stride, make_norm, reparam, bias, skipinit_alpha=None,
                 make_act=None, shortcut_kernel_size=1):
        super().__init__()
        make_act = make_act or nn.ReLU
        self.conv1 = reparam(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias))
        self.norm1 = make_norm(c_out)
        self.act1 = make_act()
        self.conv2 = reparam(nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias))
        self.norm2 = make_norm(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            k = shortcut_kernel_size
            self.shortcut = nn.Sequential(
                reparam(nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=bias)),
                make_norm(c_out),
            )
        self.act2 = make_act()
        if skipinit_alpha is None:
            self.alpha = None
        else:
            self.alpha = nn.Parameter(torch.tensor(float(skipinit_alpha)))

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if self.alpha is not None:
            out = self.alpha * out
        return self.act2(self.shortcut(x) + out)


class ResNet(nn.Module):
    """A CIFAR ResNet (He et al., 2016): depth ``6n + 2``, three stages of ``n`` blocks.

    Args:
        depth: 20, 32, 44, 56, 110, ... (``6n + 2``).
        num_classes: output size.
        width: channels of the first stage (16 in the original; stages use w, 2w, 4w).
        norm: normalizer name, factory or ``None``.
        norm_kwargs: keyword arguments for the normalizer.
        skipinit: add a learnable scalar on each residual branch (SkipInit); ``True``
            initializes it to 0, a float to that value.
        in_channels: input channels.
        activation: as :class:`MLP` (default ``"relu"``).
        shortcut_kernel_size: 1 (default) or 3: the kernel of the projection shortcuts
            at the stage transitions.
        weight_norm_style: as :class:`MLP`.

    Example:
        >>> net = ResNet(20, width=4, shortcut_kernel_size=3, activation="gelu")
        >>> net.blocks[3].shortcut[0].kernel_size, net(torch.randn(2, 3, 8, 8)).shape
        ((3, 3), torch.Size([2, 10]))
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        width: int = 16,
        norm: NormSpec = "bn",
        norm_kwargs: dict | None = None,
        skipinit: bool | float = False,
        in_channels: int = 3,
        activation="relu",
        shortcut_kernel_size: int = 1,
        weight_norm_style: str = "torch",
    ):
        super().__init__()
        for name, value in [("depth", depth), ("num_classes", num_classes), ("width", width),
                            ("in_channels", in_channels)]:
            check_positive_int(name, value)
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, ...), got {depth}")
        check_choice("shortcut_kernel_size", shortcut_kernel_size, (1, 3))
        n = (depth - 2) // 6
        make_norm, transform, make_act = _norm_builders(norm, norm_kwargs, activation, weight_norm_style)
        gain = _init_gain_name(activation)
        reparam = _initialized(transform, gain)
        bias = has_activation_norm(norm) is False
        alpha = _skipinit_alpha(skipinit)
        self.stem = nn.Sequential(
            reparam(nn.Conv2d(in_channels, width, 3, padding=1, bias=bias)), make_norm(width), make_act()
        )
        blocks, c_in = [], width
        for s in range(3):
            c_out = width * 2**s
            for i in range(n):
                stride = 2 if (s > 0 and i == 0) else 1
                blocks.append(BasicBlock(c_in, c_out, stride, make_norm, reparam, bias, alpha,
                                         make_act=make_act, shortcut_kernel_size=shortcut_kernel_size))
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(c_in, num_classes)
        self.depth, self.width = depth, width
        kaiming_init_(self, gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=(2, 3)))


def resnet20(**kwargs) -> ResNet:
    """ResNet-20 (``n = 3``).

    Example:
        >>> len(resnet20(width=4).blocks)
        9
    """
    return ResNet(depth=20, **kwargs)


def resnet56(**kwargs) -> ResNet:
    """ResNet-56 (``n = 9``), the architecture of Figure 1 of Lubana et al. (2021).

    Their weight-normalized ResNet-56 is
    ``resnet56(width=32, num_classes=100, norm="wn", weight_norm_style="lubana",
    shortcut_kernel_size=3)``; ``norm="wn"`` alone is torch's reparametrization (see the
    module docstring).

    Example:
        >>> len(resnet56(width=4).blocks)
        27
    """
    return ResNet(depth=56, **kwargs)
