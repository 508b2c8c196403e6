"""Turn a model's batch normalizers into synchronized ones, and back.

:func:`convert_sync` replaces every batch-pooling normalizer of a model (normlib's BatchNorm,
Batch Group Norm, Variance and Population Norm, EvoNorm-B0, batch whitening, mode, switchable
normalization and switchable whitening, and torch's own ``BatchNorm1d/2d/3d`` and
``SyncBatchNorm``) by its synchronized form of ``normlib.distributed.sync``, as
``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does for torch's BatchNorm; the new layers
share the old ones' parameters and buffers (same tensors: device, dtype, values and
``requires_grad`` kept) and train/eval mode. :func:`revert_sync` goes back, e.g. to evaluate or
save a model in one process. Chapter "Normalization across devices".

Example:
    >>> import torch
    >>> from torch import nn
    >>> from normlib.distributed import convert_sync, revert_sync
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    >>> synced = convert_sync(model)
    >>> type(synced[1]).__name__, synced[1].weight is model[1].weight
    ('SyncBatchNorm', True)
    >>> type(revert_sync(synced)[1]).__name__
    'BatchNorm2d'
"""

from __future__ import annotations

import copy

from torch import nn

from normlib._checks import check_module
from normlib.distributed.sync import SYNC_CLASSES, SyncBatchNorm, _Synchronized

__all__ = ["convert_sync", "revert_sync"]

_TORCH_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _rebuilt(module: nn.Module, cls: type) -> nn.Module:
    """A ``cls`` instance sharing ``module``'s state (parameters, buffers, submodules, hooks, mode)."""
    new = cls.__new__(cls)
    state = dict(module.__dict__)
    for key, value in state.items():
        # own containers (parameters, buffers, children, hooks), holding the same objects
        if isinstance(value, (dict, set)) and key.startswith("_"):
            state[key] = copy.copy(value)
    new.__dict__.update(state)
    return new


def _sync_class_of(module: nn.Module) -> type | None:
    if isinstance(module, _Synchronized):
        return None
    for cls in type(module).__mro__:
        if cls in SYNC_CLASSES:
            return SYNC_CLASSES[cls] if type(module) is cls else None
    return None


def _from_torch(module: nn.modules.batchnorm._BatchNorm, process_group) -> SyncBatchNorm:
    p = module.weight if module.weight is not None else module.running_mean
    factory = {} if p is None else {"device": p.device, "dtype": p.dtype}
    new = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                        module.track_running_stats, process_group=process_group, **factory)
    for name in ("weight", "bias"):
        setattr(new, name, getattr(module, name))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        new._buffers[name] = module._buffers.get(name)
    new.train(module.training)
    new._normlib_reverts_to = type(module)
    if type(module) is nn.SyncBatchNorm:
        new._normlib_torch_group = module.process_group
    return new


def _convert(module: nn.Module, process_group, converted: list) -> nn.Module:
    if isinstance(module, _TORCH_BATCH_NORMS):
        converted.append(module)
        return _from_torch(module, process_group)
    cls = _sync_class_of(module)
    out = module
    if cls is not None:
        out = _rebuilt(module, cls)
        out.process_group = process_group
        converted.append(module)
    for name, child in list(out._modules.items()):
        if child is not None:
            out._modules[name] = _convert(child, process_group, converted)
    return out


def convert_sync(model: nn.Module, process_group=None) -> nn.Module:
    """``model`` with every batch-pooling normalizer synchronized over ``process_group``.

    Each normlib layer of ``SYNC_CLASSES`` (exactly that class,
    not a user's subclass of it) becomes its ``Sync`` form, and torch's ``BatchNorm1d/2d/3d``
    (and ``SyncBatchNorm``) become :class:`~normlib.distributed.SyncBatchNorm`, which
    runs on CPU tensors too. Parameters and buffers are the same tensor objects (an optimizer
    built before still updates them), the train/eval mode is kept; batch-independent layers
    (LayerNorm, GroupNorm, ...) and everything else are left as they are. As
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, the containers are updated in place and
    the (possibly new) root is returned: use ``model = convert_sync(model)``.

    Synchronization happens in training inside an initialized process group of more than one
    process; elsewhere a converted model computes exactly what the original did.

    Args:
        model: any ``nn.Module``.
        process_group: the group whose ranks share statistics (``None``: the default group).

    Returns:
        the converted model.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.

    Example:
        >>> import normlib
        >>> from torch import nn
        >>> model = nn.Sequential(normlib.create_norm("iternorm", 8), normlib.create_norm("gn", 8))
        >>> [type(m).__name__ for m in convert_sync(model)]
        ['SyncBatchWhitening', 'GroupNorm']
    """
    check_module("model", model)
    return _convert(model, process_group, [])


def _revert(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, _Synchronized):
        original = getattr(module, "_normlib_reverts_to", None)
        if original is not None:  # came from torch's BatchNorm
            kwargs = {"process_group": module.__dict__.get("_normlib_torch_group")} \
                if original is nn.SyncBatchNorm else {}
            p = module.weight if module.weight is not None else module.running_mean
            factory = {} if p is None else {"device": p.device, "dtype": p.dtype}
            out = original(module.num_features, module.eps, module.momentum, module.affine,
                           module.track_running_stats, **kwargs, **factory)
            for name in ("weight", "bias"):
                setattr(out, name, getattr(module, name))
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                out._buffers[name] = module._buffers.get(name)
            out.train(module.training)
        else:
            base = next(c for c in type(module).__mro__[1:]
                        if issubclass(c, nn.Module) and not issubclass(c, _Synchronized))
            out = _rebuilt(module, base)
            out.__dict__.pop("process_group", None)
    for name, child in list(out._modules.items()):
        if child is not None:
            out._modules[name] = _revert(child)
    return out


def revert_sync(model: nn.Module) -> nn.Module:
    """Inverse of :func:`convert_sync`: every synchronized layer back to its local form.

    normlib layers become their local class, layers converted from torch's BatchNorm become
    that torch class again; parameters, buffers and mode are shared as in :func:`convert_sync`.

    Args:
        model: any ``nn.Module``.

    Returns:
        the model with local normalizers (updated in place; the root may be new).

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.

    Example:
        >>> import normlib
        >>> from torch import nn
        >>> model = convert_sync(nn.Sequential(normlib.create_norm("bn", 4)))
        >>> type(revert_sync(model)[0]).__name__
        'BatchNorm'
    """
    check_module("model", model)
    return _revert(model)
