"""The normalizer registry: build any normalizer by name.

``create_norm(name, num_features, **kw)`` is how every model and every sweep in
the book chooses its normalizer, so a sweep is ``for name in available_norms()``.
Layers register themselves with :func:`register_norm`; ``normlib.layers``
(and the weight and whitening modules) fill the registry when ``normlib`` is
imported.

Example:
    >>> import torch, normlib
    >>> layer = normlib.create_norm("gn", 8, num_groups=2)
    >>> layer(torch.randn(4, 8, 5, 5)).shape
    torch.Size([4, 8, 5, 5])
    >>> "bn" in normlib.available_norms()
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

from torch import nn

from normlib._checks import check_positive_int, check_str

__all__ = [
    "register_norm",
    "register_weight_norm",
    "is_weight_norm",
    "create_norm",
    "available_norms",
    "NormSpec",
    "norm_factory",
    "weight_transform",
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


def create_norm(name: str, num_features: int, **kwargs) -> nn.Module:
    """Build the normalizer registered as ``name`` for ``num_features`` channels.

    Args:
        name: a name from :func:`available_norms` or one of its aliases (case-insensitive).
        num_features: number of channels ``C`` of the ``(N, C, *)`` input.
        **kwargs: passed to the layer (``eps``, ``momentum``, ``num_groups``, ...).

    Raises:
        TypeError: if ``name`` is not a string.
        ValueError: if ``name`` is unknown (the message lists the known names) or
            ``num_features`` is not a positive integer.
    """
    check_str("name", name)
    check_positive_int("num_features", num_features)
    k = _key(name)
    k = _ALIASES.get(k, k)
    if k not in _REGISTRY:
        raise ValueError(
            f"unknown normalizer {name!r}; known names: {', '.join(available_norms())}"
        )
    return _REGISTRY[k](num_features, **kwargs)


def norm_factory(norm: NormSpec, **kwargs) -> Callable[[int], nn.Module]:
    """Turn a model's ``norm=`` argument into ``f(num_features) -> nn.Module``.

    ``norm`` may be a registered name, a callable taking ``num_features``, or
    ``None`` (no normalization). The name is checked immediately, so a model with
    an unknown normalizer fails before any layer is built.
    """
    if norm is None:
        return lambda c: nn.Identity()
    if isinstance(norm, str):
        k = _ALIASES.get(_key(norm), _key(norm))
        if k not in _REGISTRY:
            raise ValueError(
                f"unknown normalizer {norm!r}; known names: {', '.join(available_norms())}"
            )
        return lambda c: create_norm(k, c, **kwargs)
    if callable(norm):
        if kwargs:
            return lambda c: norm(c, **kwargs)
        return norm
    raise TypeError(f"norm must be a name, a callable or None, got {type(norm).__name__}")


def register_weight_norm(name: str, *aliases: str, override: bool = False):
    """Decorator: register ``f(module, **kw) -> module`` as a weight normalizer named ``name``.

    A weight normalizer replaces an activation normalizer in a model: the model
    applies ``f`` to each convolution or linear layer that would be followed by a
    normalizer (see :func:`weight_transform`), and ``create_norm(name, C)`` returns
    ``nn.Identity()`` for the slot where the activation normalizer would stand.
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
    """``f(module) -> module`` to apply to a layer's weight for ``norm``; identity if none."""
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
