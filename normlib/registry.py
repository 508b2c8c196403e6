"""The normalizer registry: build any normalizer by name.

``create_norm(name, num_features, **kw)`` is how every model and every sweep in
the book chooses its normalizer, so a sweep is ``for name in available_norms()``.
Layers register themselves with :func:`register_norm`; ``normlib.layers``
(and the weight and whitening modules) fill the registry when ``normlib`` is
imported.

:func:`normlib.registry.norm_factory` turns a name into a ``norm_layer`` for other people's models:
torchvision calls ``norm_layer(C)``, timm ``norm_layer(C, device=..., dtype=...)`` (and
unpacks ``functools.partial`` objects to rebind their keywords), transformers apply it to
channels-last tokens (``channel_dim=-1``). Weight normalizers have no activation slot; in one
they raise and point to :func:`normlib.conversion.convert_weights`.

Example:
    >>> import torch, normlib
    >>> layer = normlib.create_norm("gn", 8, num_groups=2)
    >>> layer(torch.randn(4, 8, 5, 5)).shape
    torch.Size([4, 8, 5, 5])
    >>> "bn" in normlib.available_norms()
    True
    >>> make = normlib.norm_factory("gn", num_groups=4)
    >>> make(16, device="cpu", dtype=torch.float64).weight.dtype
    torch.float64
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Union

from torch import Tensor, nn

from normlib._checks import argument_error, check_int, check_positive_int, check_str, is_int

__all__ = [
    "register_norm",
    "register_weight_norm",
    "is_weight_norm",
    "create_norm",
    "available_norms",
    "NormSpec",
    "norm_factory",
    "weight_transform",
    "ChannelsLast",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_ALIASES: dict[str, str] = {}
# Normalizers that act on weights: name -> f(module) -> module (parametrizes module.weight).
_WEIGHT: dict[str, Callable[[nn.Module], nn.Module]] = {}

NormSpec = Union[str, Callable[[int], nn.Module], None]


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_norm(name: str, *aliases: str, override: bool = False):
    """Class or function decorator: register a factory ``f(num_features, **kw) -> nn.Module``.

    Args:
        name: the canonical name (lower case), e.g. ``"bn"``.
        aliases: other accepted names, e.g. ``"batchnorm"``.
        override: allow replacing an existing entry (otherwise a clash raises ``ValueError``).
    """

    def decorator(factory):
        for n in (name, *aliases):
            k = _key(n)
            if not override and (k in _REGISTRY or k in _ALIASES):
                raise ValueError(f"normalizer name {n!r} is already registered")
        _REGISTRY[_key(name)] = factory
        for a in aliases:
            _ALIASES[_key(a)] = _key(name)
        return factory

    return decorator


def available_norms() -> list[str]:
    """The canonical names ``create_norm`` accepts, sorted."""
    return sorted(_REGISTRY)


def _canonical(name: str, argument: str = "name") -> str:
    """The registered name ``name`` stands for; ``ValueError`` listing the names if unknown."""
    check_str(argument, name)
    k = _ALIASES.get(_key(name), _key(name))
    if k not in _REGISTRY:
        raise ValueError(
            f"unknown normalizer {name!r}; known names: {', '.join(available_norms())}"
        )
    return k


def _check_num_features(num_features) -> None:
    """A positive int ``C``, or a shape (a sequence of positive ints) for the transformer form."""
    if is_int(num_features):
        check_positive_int("num_features", num_features)
        return
    if isinstance(num_features, Sequence) and not isinstance(num_features, str) and num_features:
        for size in num_features:
            check_int("num_features", size, minimum=1)
        return
    raise argument_error(TypeError, "num_features", "a positive int or a shape (tuple of positive ints)",
                         num_features, "pass the channel count, e.g. num_features=64, or the "
                         "normalized shape of ln and rms, e.g. (192,)")


def create_norm(name: str, num_features, **kwargs) -> nn.Module:
    """Build the normalizer registered as ``name`` for ``num_features`` channels.

    Args:
        name: a name from :func:`available_norms` or one of its aliases (case-insensitive).
        num_features: number of channels ``C`` of the ``(N, C, *)`` input; for ``"ln"`` and
            ``"rms"`` also the trailing shape to normalize over (``(192,)``, the transformer
            form of :class:`normlib.layers.LayerNorm`).
        **kwargs: passed to the layer (``eps``, ``momentum``, ``num_groups``, ``device``,
            ``dtype``, ...).

    A weight normalizer's name (``"wn"``, ``"ws"``, ...) gives the ``nn.Identity`` that stands
    in its slot of normlib's own models, which parametrize the weight in front of it (see
    :func:`normlib.registry.weight_transform`); :func:`normlib.registry.norm_factory` refuses it instead.

    Raises:
        TypeError: if ``name`` is not a string or ``num_features`` neither an int nor a shape.
        ValueError: if ``name`` is unknown (the message lists the known names) or
            ``num_features`` is not positive.

    Example:
        >>> import torch
        >>> create_norm("ln", (192,))(torch.randn(2, 5, 192)).shape
        torch.Size([2, 5, 192])
    """
    k = _canonical(name)
    _check_num_features(num_features)
    return _REGISTRY[k](num_features, **kwargs)


class ChannelsLast(nn.Module):
    """Apply a channels-first normalizer to a channels-last input ``(N, *, C)``.

    Transformers (timm's and torchvision's ViTs) call ``norm_layer(dim)`` on tokens of shape
    ``(N, L, D)``; normlib's layers read the channels from dimension 1. This wrapper moves the
    last dimension to position 1, normalizes, and moves it back, so every registered
    normalizer keeps its meaning with ``D`` as the channels and the ``L`` tokens as the
    positions (``"bn"`` pools over batch and tokens, ``"gn"`` over the tokens and a group
    of channels of a sample). Built by :func:`normlib.registry.norm_factory` with ``channel_dim=-1``, which
    builds the per-token LayerNorm and RMSNorm directly, without moving dimensions.

    Args:
        norm: the channels-first normalizer, kept as ``self.norm``.

    Example:
        >>> import torch
        >>> layer = ChannelsLast(nn.BatchNorm1d(6))
        >>> layer(torch.randn(2, 5, 6)).shape
        torch.Size([2, 5, 6])
    """

    def __init__(self, norm: nn.Module):
        super().__init__()
        if not isinstance(norm, nn.Module):
            raise argument_error(TypeError, "norm", "an nn.Module", norm, show=type(norm).__name__)
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(-1, 1)).movedim(1, -1)


def _weight_norm_error(name: str) -> ValueError:
    return ValueError(
        f"norm={name!r} is a weight normalizer: it reparametrizes the weights of convolutions and "
        f"linear layers and has no activation-normalizer slot (it would be an nn.Identity, an "
        f"unnormalized network); build the model with its own normalizer (or norm_layer=None "
        f"where the model allows it), then call normlib.convert_weights(model, {name!r}), and "
        f"normlib.convert(model, 'none') to drop its activation normalizers")


def _build_norm(num_features, *, registered_name: str, channel_dim: int = 1, **kwargs) -> nn.Module:
    """What a :func:`norm_factory` calls: ``create_norm(registered_name, num_features, **kwargs)``.

    A module-level function bound with keywords only, so that the factory is a
    ``functools.partial`` that timm can unpack and rebind (``timm.layers.get_norm_layer``
    keeps a partial's keywords, not its positional arguments); the keywords' names are ones
    no layer takes.
    """
    norm = registered_name  # a long keyword: layers have arguments named norm (attentive's)
    if channel_dim == 1:
        return create_norm(norm, num_features, **kwargs)
    # Tokens (N, *, C): ln and rms are the per-token forms of transformers (as ln2d and rms2d),
    # torch's kernels on the trailing dimensions, without moving them.
    if norm in ("ln", "ln2d", "rms", "rms2d"):
        shape = (num_features,) if is_int(num_features) else tuple(num_features)
        if norm == "rms2d":
            kwargs = {"eps": 1e-6, **kwargs}
        return create_norm(norm.removesuffix("2d"), shape, **kwargs)
    return ChannelsLast(create_norm(norm, num_features, **kwargs))


def norm_factory(norm: NormSpec, /, *, channel_dim: int = 1, **kwargs) -> Callable[..., nn.Module]:
    """A ``norm_layer``: ``f(num_features, **kw) -> nn.Module`` for a registered name.

    The factory works wherever torchvision or timm take a ``norm_layer``: it takes
    ``num_features`` positionally and keywords at call time (``device``, ``dtype``, ``eps``,
    any argument of the layer), which override those given here. For a name it is a
    ``functools.partial`` of a module-level function bound by keyword only, so timm's
    ``get_norm_layer`` can unpack and rebind it, and it pickles. The name is checked
    immediately, so a model with an unknown normalizer fails before any layer is built.

    Args:
        norm: a registered name, a callable taking ``num_features``, or ``None``
            (``nn.Identity``, no normalization).
        channel_dim: where the input holds its channels: ``1`` for ``(N, C, *)`` feature maps
            (CNNs), ``-1`` for ``(N, *, C)`` tokens (the norm layers of timm's and
            torchvision's vision transformers). On tokens ``"ln"`` and ``"rms"`` are the
            per-token forms of transformers (as ``"ln2d"`` and ``"rms2d"``, torch's
            ``LayerNorm(C)`` and ``RMSNorm(C)``); every other normalizer is wrapped in
            :class:`normlib.registry.ChannelsLast`, the tokens playing the part of positions.
        **kwargs: passed to the layer (``num_groups``, ``eps``, ...; also ``norm``, the inner
            normalizer of the attentive norm: ``norm`` itself is positional only).

    Raises:
        ValueError: for an unknown name, or a weight normalizer's name (``"wn"``, ``"ws"``,
            ...): those reparametrize weights (:func:`normlib.conversion.convert_weights`) and
            have no activation slot.
        TypeError: if ``norm`` is none of the above.

    Example:
        >>> import torchvision  # doctest: +SKIP
        >>> model = torchvision.models.resnet18(norm_layer=norm_factory("gn", num_groups=8))  # doctest: +SKIP
        >>> make = norm_factory("bn", momentum=0.01)
        >>> make(16, eps=1e-3)
        BatchNorm(16, eps=0.001, momentum=0.01, affine=True, track_running_stats=True)
        >>> norm_factory("ln2d", channel_dim=-1)(192)
        LayerNorm((192,), eps=1e-05, affine=True)
    """
    check_int("channel_dim", channel_dim)
    if channel_dim not in (1, -1):
        raise argument_error(ValueError, "channel_dim", "1 (channels first) or -1 (channels last)",
                             channel_dim, "use channel_dim=-1 for (N, *, C) tokens")
    if norm is None:
        return functools.partial(_build_norm, registered_name="none")
    if isinstance(norm, str):
        k = _canonical(norm, "norm")
        if k in _WEIGHT:
            raise _weight_norm_error(norm)
        return functools.partial(_build_norm, registered_name=k, channel_dim=channel_dim, **kwargs)
    if callable(norm):
        if channel_dim != 1:
            return lambda c, **kw: ChannelsLast(norm(c, **{**kwargs, **kw}))
        if kwargs:
            return functools.partial(norm, **kwargs)
        return norm
    raise TypeError(f"norm must be a name, a callable or None, got {type(norm).__name__}")


def register_weight_norm(name: str, *aliases: str, override: bool = False):
    """Decorator: register ``f(module, **kw) -> module`` as a weight normalizer named ``name``.

    A weight normalizer replaces an activation normalizer in a model: the model
    applies ``f`` to each convolution or linear layer that would be followed by a
    normalizer (see :func:`normlib.registry.weight_transform`), and ``create_norm(name, C)`` returns
    ``nn.Identity()`` for the slot where the activation normalizer would stand in normlib's
    own models. :func:`normlib.registry.norm_factory` refuses the name (a ``norm_layer`` slot of another
    model would silently be unnormalized); :func:`normlib.conversion.convert_weights` applies it
    to any model.
    """

    def decorator(fn):
        register_norm(name, *aliases, override=override)(lambda c, **kw: nn.Identity())
        _WEIGHT[_key(name)] = fn
        return fn

    return decorator


def is_weight_norm(norm: NormSpec) -> bool:
    """Whether ``norm`` names a registered weight normalizer (``"wn"``, ``"sn"``, ``"sws"``, ...).

    >>> is_weight_norm("sn"), is_weight_norm("bn"), is_weight_norm(None)
    (True, False, False)
    """
    return isinstance(norm, str) and _ALIASES.get(_key(norm), _key(norm)) in _WEIGHT


def weight_transform(norm: NormSpec, **kwargs) -> Callable[[nn.Module], nn.Module]:
    """``f(module) -> module`` to apply to a layer's weight for ``norm``; identity if none.

    Example:
        >>> conv = weight_transform("ws")(nn.Conv2d(3, 8, 3))
        >>> hasattr(conv, "parametrizations")
        True
    """
    if isinstance(norm, str):
        k = _ALIASES.get(_key(norm), _key(norm))
        if k in _WEIGHT:
            fn = _WEIGHT[k]
            return lambda m: fn(m, **kwargs)
    return lambda m: m


# Placeholders so that models work before the layers module registers its own
# implementations; normlib.layers re-registers these names with override=True.
@register_norm("none", "identity")
def _no_norm(num_features: int, **kwargs) -> nn.Module:
    return nn.Identity()
