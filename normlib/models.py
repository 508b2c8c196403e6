"""Models with a pluggable normalizer: an MLP, a VGG-style CNN and a CIFAR ResNet.

Every model takes ``norm=`` as a registry name (``"bn"``, ``"gn"``, ``"wn"``, ...),
a callable ``f(num_features) -> nn.Module``, or ``None``, plus ``norm_kwargs``
for the normalizer (for example ``{"num_groups": 8}``). Weight normalizers
(registered with :func:`normlib.registry.register_weight_norm`) are applied to
the convolution or linear layer in front of the normalizer slot instead.

Weights use Kaiming (He) initialization for ReLU networks; biases start at zero.
A linear or convolution layer followed by an activation normalizer has no bias
(the normalizer's centering would remove it).

The layouts that the propagation probes rely on:

- :class:`MLP`: ``model.layers`` (one block per hidden layer: linear, normalizer, activation),
  then ``model.head``.
- :class:`VGG`: ``model.layers`` (one block per convolution), global average pooling, ``model.head``.
- :class:`ResNet`: ``model.stem``, ``model.blocks`` (the residual blocks in order),
  global average pooling, ``model.head``.

Example:
    >>> import torch
    >>> from normlib.models import MLP, VGG, resnet20
    >>> MLP(64, 10, width=32, depth=3, norm="bn")(torch.randn(5, 64)).shape
    torch.Size([5, 10])
    >>> VGG(in_channels=1, num_classes=10, depth=4, width=8, norm="gn",
    ...     norm_kwargs={"num_groups": 4})(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    >>> resnet20(num_classes=10, width=8, norm="bn")(torch.randn(2, 3, 16, 16)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from normlib._checks import check_positive_int
from normlib.registry import NormSpec, is_weight_norm, norm_factory, weight_transform

__all__ = ["MLP", "VGG", "ResNet", "BasicBlock", "resnet20", "resnet56", "kaiming_init_",
           "has_activation_norm"]

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "identity": nn.Identity,
    "linear": nn.Identity,
}


def _activation(name: str) -> nn.Module:
    if not isinstance(name, str) or name.lower() not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[name.lower()]()


def _norm_builders(norm: NormSpec, norm_kwargs: dict | None):
    """``(make_norm, weight_transform)`` for a model, with ``norm_kwargs`` sent where they apply.

    An activation normalizer gets them at construction; a weight normalizer's options
    (``eps``, ``n_power_iterations``, ...) go to its weight transform, which validates them
    when the model is built, instead of being swallowed by the ``nn.Identity`` in its slot.
    """
    if norm_kwargs is not None and not isinstance(norm_kwargs, dict):
        raise TypeError(f"norm_kwargs must be a dict of keyword arguments, got {type(norm_kwargs).__name__}")
    kwargs = dict(norm_kwargs or {})
    if is_weight_norm(norm):
        return norm_factory(None), weight_transform(norm, **kwargs)
    return norm_factory(norm, **kwargs), weight_transform(norm)


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

    Layers whose weight is already parametrized (weight normalization and friends) are
    left alone: models initialize each layer before parametrizing it. Returns ``model``.
    """
    gain_name = "relu" if nonlinearity in ("relu", "gelu") else "linear"
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
    """A fully connected ReLU network: ``depth`` hidden blocks of ``Linear -> norm -> act``.

    Args:
        in_features: input size; inputs ``(N, *)`` are flattened to ``(N, in_features)``.
        num_classes: output size.
        width: hidden width.
        depth: number of hidden layers (at least 1).
        norm: normalizer name, factory or ``None``.
        activation: ``"relu"`` (default), ``"tanh"``, ``"gelu"`` or ``"identity"``.
        norm_kwargs: keyword arguments for the normalizer.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        width: int = 128,
        depth: int = 4,
        norm: NormSpec = None,
        activation: str = "relu",
        norm_kwargs: dict | None = None,
    ):
        super().__init__()
        for name, value in [("in_features", in_features), ("num_classes", num_classes),
                            ("width", width), ("depth", depth)]:
            check_positive_int(name, value)
        make_norm, transform = _norm_builders(norm, norm_kwargs)
        reparam = _initialized(transform, activation)
        bias = has_activation_norm(norm) is False
        self.in_features, self.width, self.depth = in_features, width, depth
        layers = []
        fan_in = in_features
        for _ in range(depth):
            layers.append(nn.Sequential(
                reparam(nn.Linear(fan_in, width, bias=bias)), make_norm(width), _activation(activation)
            ))
            fan_in = width
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(width, num_classes)
        kaiming_init_(self, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"expected {self.in_features} input features, got {x.shape[1]}")
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


class VGG(nn.Module):
    """A VGG-style non-residual CNN: ``depth`` blocks of ``conv3x3 -> norm -> ReLU``.

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
    ):
        super().__init__()
        for name, value in [("in_channels", in_channels), ("num_classes", num_classes),
                            ("depth", depth), ("width", width), ("num_stages", num_stages)]:
            check_positive_int(name, value)
        if depth < num_stages:
            raise ValueError(f"depth={depth} must be at least num_stages={num_stages}")
        make_norm, transform = _norm_builders(norm, norm_kwargs)
        reparam = _initialized(transform)
        bias = has_activation_norm(norm) is False
        per_stage = [depth // num_stages + (1 if s < depth % num_stages else 0)
                     for s in range(num_stages)]
        layers, c_in = [], in_channels
        for s, n in enumerate(per_stage):
            c_out = width * 2**s
            for i in range(n):
                stride = 2 if (s > 0 and i == 0) else 1
                conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
                layers.append(nn.Sequential(reparam(conv), make_norm(c_out), nn.ReLU()))
                c_in = c_out
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(c_in, num_classes)
        self.depth, self.width = depth, width
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.head(x.mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    """The CIFAR ResNet block: ``relu(shortcut(x) + alpha * branch(x))``.

    ``branch = norm(conv(relu(norm(conv(x)))))``; the shortcut is the identity, or a
    strided 1x1 convolution with a normalizer when the shape changes. ``alpha`` is 1,
    or a learnable scalar (SkipInit, De and Smith 2020) initialized to
    ``skipinit_alpha``.
    """

    def __init__(self, c_in, c_out, stride, make_norm, reparam, bias, skipinit_alpha=None):
        super().__init__()
        self.conv1 = reparam(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias))
        self.norm1 = make_norm(c_out)
        self.conv2 = reparam(nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias))
        self.norm2 = make_norm(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                reparam(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias)), make_norm(c_out)
            )
        if skipinit_alpha is None:
            self.alpha = None
        else:
            self.alpha = nn.Parameter(torch.tensor(float(skipinit_alpha)))

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(torch.relu(self.norm1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if self.alpha is not None:
            out = self.alpha * out
        return torch.relu(self.shortcut(x) + out)


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
    ):
        super().__init__()
        for name, value in [("depth", depth), ("num_classes", num_classes), ("width", width),
                            ("in_channels", in_channels)]:
            check_positive_int(name, value)
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, ...), got {depth}")
        n = (depth - 2) // 6
        make_norm, transform = _norm_builders(norm, norm_kwargs)
        reparam = _initialized(transform)
        bias = has_activation_norm(norm) is False
        if skipinit is True:
            alpha = 0.0
        elif skipinit is False or skipinit is None:
            alpha = None
        else:
            alpha = float(skipinit)
        self.stem = nn.Sequential(
            reparam(nn.Conv2d(in_channels, width, 3, padding=1, bias=bias)), make_norm(width), nn.ReLU()
        )
        blocks, c_in = [], width
        for s in range(3):
            c_out = width * 2**s
            for i in range(n):
                stride = 2 if (s > 0 and i == 0) else 1
                blocks.append(BasicBlock(c_in, c_out, stride, make_norm, reparam, bias, alpha))
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(c_in, num_classes)
        self.depth, self.width = depth, width
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=(2, 3)))


def resnet20(**kwargs) -> ResNet:
    """ResNet-20 (``n = 3``)."""
    return ResNet(depth=20, **kwargs)


def resnet56(**kwargs) -> ResNet:
    """ResNet-56 (``n = 9``), the architecture of Figure 1 of Lubana et al. (2021)."""
    return ResNet(depth=56, **kwargs)
