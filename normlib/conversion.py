"""Swap the normalizers of any model: activation normalizers and weight normalizers, both ways.

:func:`convert` replaces every activation normalizer of a model (torch's ``BatchNorm*``,
``SyncBatchNorm``, ``GroupNorm``, ``LayerNorm``, ``RMSNorm``, ``InstanceNorm*``,
``LocalResponseNorm``, timm's and torchvision's ``LayerNorm2d``, and normlib's own) by a
registered normalizer, in place, as ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does;
:func:`revert` puts the originals back. :func:`convert_weights` parametrizes the weights of
convolutions and linear layers with a weight normalizer (weight standardization, weight
normalization, ...); :func:`remove_weight_norms` gives back plain weights equal to the
effective ones. Chapters "Review I: normalizing activations" and "Review III: weights and
gradients" explain the normalizers.

What a replacement keeps (the parameters and buffers that mean the same thing):

- always the per-channel affine ``weight`` and ``bias`` when the new layer has them with the
  same shape (the recovery after normalizing, whatever the normalizer), the device, the
  floating dtype and the train/eval mode of the old layer;
- for the same normalizer (torch's ``BatchNorm2d`` to normlib's ``"bn"``, ``GroupNorm`` to
  ``"gn"``, ``LayerNorm`` to ``"ln"``, ...) also its settings (``eps``, ``momentum``,
  ``affine``, ``track_running_stats``, ``num_groups``) and every state entry of the same name
  and shape, the running statistics included: the converted model computes the same function.

timm's norm-act layers (``BatchNormAct2d``, ``GroupNormAct``, ...), which apply an
activation as well, are not replaced.

The layout of each slot is read from the old layer: ``(N, C, *)`` for batch, group and
instance norms and the ``...2d`` layer norms, ``(N, *, C)`` tokens for ``nn.LayerNorm`` and
``nn.RMSNorm`` (transformers), where the new normalizer is wrapped in
:class:`normlib.registry.ChannelsLast` (``"ln"``/``"rms"``/``"ln2d"``/``"rms2d"`` become the
usual per-token forms).

The four functions are also at the top level: ``normlib.convert``, ``normlib.revert``,
``normlib.convert_weights``, ``normlib.remove_weight_norms``.

Example:
    >>> import torch, normlib
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    >>> model = normlib.convert(model, "gn", num_groups=4)
    >>> model[1]
    GroupNorm(8, num_groups=4, eps=1e-05, affine=True)
    >>> type(normlib.revert(model)[1]).__name__
    'BatchNorm2d'
    >>> conv = normlib.convert_weights(nn.Sequential(nn.Conv2d(3, 8, 3)), "ws")[0]
    >>> hasattr(conv, "parametrizations")
    True
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from normlib._checks import argument_error, check_module, check_str
from normlib._state import preserved_state
from normlib.layers import NormLayer, RegionNorm
from normlib.multimode import SwitchableWhitening
from normlib.recovery import AttentiveNorm
from normlib.registry import (
    _ALIASES,
    _REGISTRY,
    _WEIGHT,
    ChannelsLast,
    NormSpec,
    _canonical,
    _key,
    norm_factory,
    weight_transform,
)
from normlib.whitening import BatchWhitening, GroupWhitening

__all__ = [
    "convert",
    "revert",
    "convert_weights",
    "remove_weight_norms",
    "find_norms",
    "fuser_method_mapping",
]

# torch's (and its ecosystem's) activation normalizers and the registered name each one is.
_TORCH_KINDS: tuple[tuple[type, str], ...] = (
    (nn.modules.batchnorm._BatchNorm, "bn"),  # BatchNorm1d/2d/3d, SyncBatchNorm, Lazy*
    (nn.GroupNorm, "gn"),
    (nn.modules.instancenorm._InstanceNorm, "in"),
    (nn.LocalResponseNorm, "lrn"),
    (nn.LayerNorm, "ln"),
    (nn.RMSNorm, "rms"),
)
# Settings a replacement keeps when it is the same normalizer; torch's LayerNorm names its
# ``affine`` ``elementwise_affine``.
_SETTINGS = ("eps", "momentum", "affine", "track_running_stats", "num_groups")
_ORIGINAL = "_normlib_original"  # instance attribute: the module a converted one replaced
_WEIGHT_MARK = "_normlib_weight_norm"  # instance attribute: the weight normalizer applied


def _channels_first_subclass(module: nn.Module) -> bool:
    """timm's and torchvision's ``LayerNorm2d``/``RmsNorm2d``: layer norms on ``(N, C, H, W)``."""
    return type(module).__name__.lower().endswith(("2d", "2dfp32"))


def _holds_activation(module: nn.Module) -> bool:
    """timm's norm-act layers (``BatchNormAct2d``, ``GroupNormAct``, ...) apply an activation too."""
    return isinstance(getattr(module, "act", None), nn.Module)


def _kind(module: nn.Module) -> str | None:
    """The registered name of the normalizer ``module`` is, or ``None`` if it is none."""
    if isinstance(module, ChannelsLast):
        return _kind(module.norm)
    if isinstance(module, (NormLayer, AttentiveNorm)):
        if isinstance(module, RegionNorm):
            return None  # it needs its mask: no slot of another model holds it
        # Registered through a factory function rather than as a class:
        if isinstance(module, BatchWhitening):
            return module.method  # "zca", "pca", "cholesky", "iternorm"
        if isinstance(module, GroupWhitening):
            return "gw"
        if isinstance(module, SwitchableWhitening):
            return "switchable_whitening"
        for cls in type(module).__mro__:
            for name, factory in _REGISTRY.items():
                if factory is cls:
                    return name
        return type(module).__name__  # a NormLayer of a user's: a normalizer all the same
    if _holds_activation(module):
        return None
    for cls, name in _TORCH_KINDS:
        if isinstance(module, cls):
            if name == "ln" and _channels_first_subclass(module):
                return "ln2d"
            return name
    cls_name = type(module).__name__.lower()
    if cls_name.startswith("rmsnorm") and hasattr(module, "normalized_shape"):  # timm's RmsNorm*
        return "rms2d" if _channels_first_subclass(module) else "rms"
    return None


def _layout(module: nn.Module) -> tuple[int | tuple[int, ...] | None, int]:
    """``(num_features or normalized shape, channel_dim)`` of a normalizer's input."""
    if isinstance(module, ChannelsLast):
        inner, _ = _layout(module.norm)
        return inner, -1
    shape = getattr(module, "normalized_shape", None)
    if shape is not None:
        shape = tuple(shape)
        if _channels_first_subclass(module) or _kind(module) in ("ln2d", "rms2d"):
            return shape[0], 1
        return (shape[0] if len(shape) == 1 else shape), -1
    for attr in ("num_features", "num_channels"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value, 1
    return None, 1  # torch's LocalResponseNorm has no channel count


def find_norms(model: nn.Module, include=None, exclude=None) -> dict[str, nn.Module]:
    """The activation normalizers of ``model`` that :func:`normlib.conversion.convert` would replace, by name.

    Outermost only: a normalizer inside another (the BatchNorm of an attentive norm, the layer
    in a :class:`normlib.registry.ChannelsLast`) is part of it. ``include``/``exclude`` as in
    :func:`normlib.conversion.convert`.

    Example:
        >>> import torchvision  # doctest: +SKIP
        >>> len(find_norms(torchvision.models.resnet18()))  # doctest: +SKIP
        20
        >>> list(find_norms(nn.Sequential(nn.Linear(2, 4), nn.LayerNorm(4))))
        ['1']
    """
    check_module("model", model)
    return _outermost(model, lambda m: _kind(m) is not None, include, exclude)


def _matches(name: str, module: nn.Module, rule, argument: str) -> bool:
    if callable(rule) and not isinstance(rule, type):
        return bool(rule(name, module))
    rules = rule if isinstance(rule, (list, tuple, set, frozenset)) else [rule]
    for r in rules:
        if isinstance(r, str):
            if fnmatch.fnmatchcase(name, r) or _kind(module) == _ALIASES.get(_key(r), _key(r)):
                return True
        elif isinstance(r, type):
            if isinstance(module, r):
                return True
        else:
            raise argument_error(TypeError, argument,
                                 "a name pattern, a module type, a list of those or a callable "
                                 "f(name, module) -> bool", rule, show=type(r).__name__)
    return False


def _outermost(model: nn.Module, hit, include, exclude) -> dict[str, nn.Module]:
    """``{name: module}`` of the outermost modules with ``hit(module)`` that the filters select
    (the search does not look inside a hit)."""
    found: dict[str, nn.Module] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        if hit(module):
            if _selected(prefix, module, include, exclude):
                found[prefix] = module
            return
        for name, child in module.named_children():
            visit(child, f"{prefix}.{name}" if prefix else name)

    visit(model, "")
    return found


def _selected(name: str, module: nn.Module, include, exclude) -> bool:
    if include is not None and not _matches(name, module, include, "include"):
        return False
    return exclude is None or not _matches(name, module, exclude, "exclude")


def _factory_of(module: nn.Module) -> dict:
    """``device`` and floating ``dtype`` of a module's tensors (empty if it has none)."""
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return {"device": t.device, "dtype": t.dtype}
    for t in module.buffers():
        return {"device": t.device}
    return {}


def _settings(source: nn.Module, build: Callable) -> dict:
    """The settings of ``source`` that ``build`` takes, for a replacement by the same normalizer."""
    try:
        accepted = set(inspect.signature(build).parameters)
    except (TypeError, ValueError):
        return {}
    out = {}
    for key in _SETTINGS:
        if key not in accepted:
            continue
        if key == "affine" and not hasattr(source, "affine"):
            key_on_source = "elementwise_affine"  # torch's LayerNorm and RMSNorm, timm's RmsNorm
        else:
            key_on_source = key
        if not hasattr(source, key_on_source):
            continue
        value = getattr(source, key_on_source)
        if value is None or isinstance(value, (bool, int, float)):
            out[key] = value
    if "bias" in accepted and out.get("affine") and getattr(source, "bias", 0) is None:
        out["bias"] = False  # torch's LayerNorm(bias=False)
    return out


def _carry(source: nn.Module, target: nn.Module, same: bool) -> None:
    """Copy what means the same from ``source`` into ``target`` (no gradient)."""
    src = source.norm if isinstance(source, ChannelsLast) else source
    dst = target.norm if isinstance(target, ChannelsLast) else target
    if same:
        theirs = dict(src.state_dict(keep_vars=True))
    else:
        theirs = {k: v for k, v in ((k, getattr(src, k, None)) for k in ("weight", "bias"))
                  if isinstance(v, torch.Tensor)}
    ours = dict(dst.state_dict(keep_vars=True))
    with torch.no_grad():
        for key, value in theirs.items():
            mine = ours.get(key)
            if isinstance(value, torch.Tensor) and isinstance(mine, torch.Tensor) and \
                    mine.shape == value.shape:
                mine.copy_(value.detach().to(mine.dtype) if mine.is_floating_point()
                           else value.detach())
                if isinstance(mine, nn.Parameter) and isinstance(value, nn.Parameter):
                    mine.requires_grad_(value.requires_grad)


def _channels_by_forward(model: nn.Module, modules: dict[str, nn.Module], example_input) -> dict:
    """The channel count each of ``modules`` sees in one forward pass of ``example_input``."""
    seen: dict[str, int] = {}
    handles = []
    for name, module in modules.items():
        def hook(mod, args, name=name):
            if args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 2:
                seen[name] = int(args[0].shape[1])
        handles.append(module.register_forward_pre_hook(hook))
    try:
        with preserved_state(model), torch.no_grad():
            model.eval()
            if isinstance(example_input, (tuple, list)):
                model(*example_input)
            else:
                model(example_input)
    finally:
        for h in handles:
            h.remove()
    return seen


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _check_filters(include, exclude) -> None:
    for argument, rule in (("include", include), ("exclude", exclude)):
        if rule is None or callable(rule) or isinstance(rule, (str, type, list, tuple, set,
                                                                 frozenset)):
            continue
        raise argument_error(TypeError, argument, "a name pattern, a module type, a list of "
                             "those or a callable f(name, module) -> bool", rule,
                             show=type(rule).__name__)


def convert(model: nn.Module, norm: NormSpec, /, include=None, exclude=None, *,
            example_input=None, **kwargs) -> nn.Module:
    """Replace the activation normalizers of ``model`` by ``norm``, in place.

    Every normalizer :func:`normlib.conversion.find_norms` finds (torch's batch, group, layer,
    RMS, instance and local response norms, timm's and torchvision's ``LayerNorm2d``, normlib's layers) is
    replaced by ``norm`` built for the same channels, keeping what means the same (see the
    module docstring: affine parameters always, settings and running statistics for the same
    normalizer), the device, dtype and mode. The replaced module is remembered for
    :func:`normlib.conversion.revert`.

    Args:
        model: any ``nn.Module``; if it is itself a normalizer, the replacement is returned
            (as ``convert_sync_batchnorm`` does).
        norm: a registered name (``"gn"``, ``"bn"``, ``"ln2d"``, ``"none"`` to drop them,
            ...) or a callable ``f(num_features, **kw)`` such as ``nn.BatchNorm2d``. Weight
            normalizers are refused: use :func:`normlib.conversion.convert_weights`.
        include: which normalizers to replace (default all): a name pattern
            (``"layer1.*"``, fnmatch), a registered name of a normalizer (``"bn"`` matches
            torch's and normlib's batch norms), a module type, a list of those, or a callable
            ``f(name, module) -> bool``.
        exclude: which to leave, in the same forms.
        example_input: an input of the model; needed only to read the channel count of
            torch's ``LocalResponseNorm``, which does not store it (one forward in eval mode,
            without gradient; the model's state is restored).
        **kwargs: for the new layers (``num_groups``, ``eps``, ...), over the kept settings.

    Returns:
        ``model``, changed in place (or the replacement of a normalizer given as ``model``).

    Raises:
        ValueError: an unknown or weight normalizer's name; a ``LocalResponseNorm`` without
            ``example_input``; a multi-dimensional ``LayerNorm`` shape replaced by other
            than ``"ln"``/``"rms"``.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8).eval())
        >>> x = torch.randn(2, 3, 6, 6)
        >>> before = model(x)
        >>> model = convert(model, "bn")  # normlib's BatchNorm, same statistics and mode
        >>> bool(torch.equal(model(x), before)), model[1].training
        (True, False)
    """
    check_module("model", model)
    _check_filters(include, exclude)
    if isinstance(norm, str):
        target = _canonical(norm, "norm")
        if target in _WEIGHT:
            norm_factory(norm)  # raises the message that points to convert_weights
    elif norm is not None and not callable(norm):
        raise argument_error(TypeError, "norm", "a registered name, a callable f(num_features) "
                             "or None", norm, show=type(norm).__name__)
    found = find_norms(model, include, exclude)
    unknown = {n: m for n, m in found.items() if _layout(m)[0] is None}
    channels = {}
    if unknown:
        if example_input is None:
            names = ", ".join(repr(n or "<model>") for n in unknown)
            raise argument_error(ValueError, "example_input", "an input of the model when it "
                                 "holds a LocalResponseNorm (which does not store its channel "
                                 f"count: {names})", None, "pass example_input=a batch")
        channels = _channels_by_forward(model, unknown, example_input)
    replaced = model
    model_factory = _factory_of(model)
    for name, old in found.items():
        size, channel_dim = _layout(old)
        if size is None:
            if name not in channels:
                raise ValueError(f"the LocalResponseNorm {name!r} did not run on example_input, "
                                 f"so its channel count is unknown; pass an input that reaches it")
            size = channels[name]
        # A layer without tensors (torch's LocalResponseNorm) takes the model's device and dtype.
        new = _build_like(old, norm, size, channel_dim, kwargs, _factory_of(old) or model_factory)
        original = old.__dict__.get(_ORIGINAL, old)
        new.__dict__[_ORIGINAL] = original
        if name:
            _replace(model, name, new)
        else:
            replaced = new
    return replaced


_PER_TOKEN = ({"ln", "ln2d"}, {"rms", "rms2d"})


def _same_normalizer(source: str | None, target: str, channel_dim: int) -> bool:
    """Whether ``target`` in this slot computes what ``source`` did (settings carry over)."""
    if source == target:
        return True
    # On tokens, ln and ln2d are both the per-token LayerNorm (and rms, rms2d the RMSNorm).
    return channel_dim == -1 and any({source, target} <= pair for pair in _PER_TOKEN)


def _build_like(old: nn.Module, norm: NormSpec, size, channel_dim: int, kwargs: dict,
                factory_kwargs: dict) -> nn.Module:
    """``norm`` for the slot of ``old``: same channels, layout, device, dtype and mode."""
    source = _kind(old)
    if isinstance(norm, str) or norm is None:
        target = "none" if norm is None else _canonical(norm, "norm")
        if not isinstance(size, int) and target not in ("ln", "rms"):
            raise ValueError(
                f"norm={norm!r} cannot replace a {type(old).__name__} over the shape {size}: only "
                f"'ln' and 'rms' normalize over several trailing dimensions")
        same = target != "none" and _same_normalizer(source, target, channel_dim)
        settings = {}
        if same:
            # On tokens the per-token forms are built as torch's LayerNorm(C)/RMSNorm(C) are.
            built_as = target.removesuffix("2d") if channel_dim == -1 else target
            settings = _settings(old, _REGISTRY[built_as])
        factory = norm_factory(target, channel_dim=channel_dim, **{**settings, **kwargs})
    else:
        factory = norm_factory(norm, channel_dim=channel_dim, **kwargs)
        same = None
    extra = {} if _is_none(norm) else factory_kwargs
    new = factory(size, **extra)
    if same is None:
        # A callable (torch's nn.BatchNorm2d, say): the same normalizer if it builds the same
        # kind, and then it is rebuilt with the old layer's settings that it takes.
        same = _kind(new) is not None and _kind(new) == source
        settings = _settings(old, norm) if same else {}
        if settings:
            new = norm_factory(norm, channel_dim=channel_dim, **{**settings, **kwargs})(size, **extra)
    _carry(old, new, same)
    new.train(old.training)
    return new


def _is_none(norm) -> bool:
    return norm is None or (isinstance(norm, str) and _canonical(norm, "norm") == "none")


def revert(model: nn.Module, include=None, exclude=None) -> nn.Module:
    """Undo :func:`normlib.conversion.convert`: put back the modules it replaced, in place.

    Each original comes back with what its replacement learned where it means the same (the
    affine ``weight``/``bias``; settings and statistics when the original is the same
    normalizer), on the replacement's device and dtype and in its mode. Modules that
    :func:`normlib.conversion.convert` did not build are left alone. ``include``/``exclude`` as in
    :func:`normlib.conversion.convert`, matched against the replacements.

    Returns:
        ``model``, changed in place (or the original of a normalizer given as ``model``).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        >>> type(revert(convert(model, "ln"))[1]).__name__
        'BatchNorm1d'
    """
    check_module("model", model)
    _check_filters(include, exclude)
    result = model
    targets = _outermost(model, lambda m: _ORIGINAL in m.__dict__, include, exclude)
    for name, current in targets.items():
        original = current.__dict__[_ORIGINAL]
        same = _kind(original) == _kind(current) and _layout(original) == _layout(current)
        _carry(current, original, same)
        factory = _factory_of(current)
        if factory:
            original.to(**factory)
        original.train(current.training)
        if name:
            _replace(model, name, original)
        else:
            result = original
    return result


def convert_weights(model: nn.Module, norm: str = "ws", types=(nn.Conv2d, nn.Linear),
                    include=None, exclude=None, **kwargs) -> nn.Module:
    """Parametrize the weights of ``model``'s layers of ``types`` with a weight normalizer.

    ``norm`` is a registered weight normalizer (``"ws"``, ``"sws"``, ``"wn"``, ``"cwn"``,
    ``"own"``, ``"oni"``, ``"sn"``, ``"normprop"``; chapter "Review III: weights and
    gradients"), applied with ``torch.nn.utils.parametrize.register_parametrization``
    through :func:`normlib.registry.weight_transform`, so ``module.weight`` becomes the
    normalized weight and the optimizer trains the parametrization's tensors. Layers whose
    weight is already parametrized are left alone. The activation normalizers stay; use
    :func:`normlib.conversion.convert` with ``"none"`` to drop them.

    Args:
        model: any ``nn.Module``.
        norm: the weight normalizer's registered name.
        types: the layer types to parametrize (default convolutions 2-D and linear layers).
        include: which layers (default all of ``types``): name patterns, types or a callable
            ``f(name, module) -> bool``.
        exclude: which to leave (the classifier, say: ``exclude="fc"``).
        **kwargs: options of the weight normalizer (``eps``, ``n_power_iterations``, ...).

    Returns:
        ``model``, changed in place.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
        >>> net = convert_weights(net, "ws")
        >>> w = net[0].weight
        >>> bool(w.mean(dim=(1, 2, 3)).abs().max() < 1e-5)
        True
    """
    check_module("model", model)
    check_str("norm", norm)
    key = _canonical(norm, "norm")
    if key not in _WEIGHT:
        raise ValueError(f"norm={norm!r} is not a weight normalizer (those are "
                         f"{', '.join(sorted(_WEIGHT))}); use normlib.convert for activation "
                         "normalizers")
    if isinstance(types, type):
        types = (types,)
    if not isinstance(types, tuple) or not types or not all(isinstance(t, type) for t in types):
        raise argument_error(TypeError, "types", "a module type or a tuple of module types",
                             types, "e.g. types=(nn.Conv2d, nn.Linear)", show=repr(types))
    _check_filters(include, exclude)
    apply = weight_transform(key, **kwargs)
    for name, module in list(model.named_modules()):
        if not isinstance(module, types) or not isinstance(getattr(module, "weight", None),
                                                            torch.Tensor):
            continue
        if parametrize.is_parametrized(module, "weight") or not _selected(name, module, include,
                                                                           exclude):
            continue
        apply(module)
        module.__dict__[_WEIGHT_MARK] = key
    return model


def remove_weight_norms(model: nn.Module, include=None, exclude=None) -> nn.Module:
    """Undo :func:`normlib.conversion.convert_weights`: plain weights equal to the effective ones.

    Removes the weight parametrizations that :func:`normlib.conversion.convert_weights` added
    (``leave_parametrized=True``), so the model computes the same function with an ordinary
    ``weight`` parameter. Other parametrizations are left alone.

    Returns:
        ``model``, changed in place.

    Example:
        >>> net = convert_weights(nn.Sequential(nn.Linear(4, 3)), "wn")
        >>> w = net[0].weight.detach().clone()
        >>> net = remove_weight_norms(net)
        >>> isinstance(net[0].weight, nn.Parameter), bool(torch.equal(net[0].weight, w))
        (True, True)
    """
    check_module("model", model)
    _check_filters(include, exclude)
    for name, module in list(model.named_modules()):
        if _WEIGHT_MARK not in module.__dict__ or not _selected(name, module, include, exclude):
            continue
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        del module.__dict__[_WEIGHT_MARK]
    return model


def fuser_method_mapping() -> dict:
    """Fuser methods for normlib's BatchNorm, for ``torch.ao.quantization.fuse_modules``.

    ``fuse_modules`` looks fusers up by exact module types; normlib's
    :class:`normlib.layers.BatchNorm` is a ``torch.nn.BatchNorm2d`` but not that exact type.
    Pass this as ``fuse_custom_config_dict={"additional_fuser_method_mapping":
    fuser_method_mapping()}``: conv (1-3d) + BN, conv + BN + ReLU, linear + BN, fused as torch
    fuses its own BatchNorm.

    Example:
        >>> from torch.ao.quantization import fuse_modules
        >>> import normlib
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), normlib.create_norm("bn", 4)).eval()
        >>> config = {"additional_fuser_method_mapping": fuser_method_mapping()}
        >>> fused = fuse_modules(net, [["0", "1"]], fuse_custom_config_dict=config)
        >>> type(fused[1]).__name__
        'Identity'
    """
    from torch.ao.quantization.fuser_method_mappings import (
        fuse_conv_bn,
        fuse_conv_bn_relu,
        fuse_linear_bn,
    )

    from normlib.layers import BatchNorm

    mapping = {(nn.Linear, BatchNorm): fuse_linear_bn}
    for conv in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        mapping[(conv, BatchNorm)] = fuse_conv_bn
        mapping[(conv, BatchNorm, nn.ReLU)] = fuse_conv_bn_relu
    return mapping
