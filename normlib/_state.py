"""Leave a user's model exactly as it was found (internal).

Every analysis tool of normlib runs forward and backward passes through a model
that belongs to the user: BatchNorm updates its running statistics, spectral
normalization its power-iteration vectors, the tool itself may switch modes or
fill ``.grad``. :func:`preserved_state` undoes all of that on exit, also on an
exception, and it restores *only what changed*: a tensor that was not modified
is not written to, so autograd's version counters of the user's parameters and
buffers stay as they were and a loss computed before the analysis can still be
back-propagated after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["preserved_state", "check_materialized"]


def check_materialized(model: nn.Module, *, what: str = "this tool") -> None:
    """Raise a ``ValueError`` if ``model`` still has uninitialized lazy parameters or buffers.

    A lazy module (``nn.LazyLinear``, ``nn.LazyConv2d``, ...) creates its weights on its first
    forward pass; an analysis tool that ran that pass would change the model for good.
    """
    if not isinstance(model, nn.Module):
        return  # the caller's own check names the wrong type
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if isinstance(t, nn.parameter.UninitializedTensorMixin):
            raise ValueError(
                f"{what} needs an initialized model, but {name!r} is an uninitialized lazy "
                "tensor: run one forward pass of the model on a batch first (as torch requires "
                "before an optimizer or a state dict is built)")


def _version(t: torch.Tensor) -> int | None:
    """Autograd's version counter of ``t``; ``None`` for inference tensors, which have none."""
    try:
        return t._version
    except RuntimeError:
        return None


def _changed(t: torch.Tensor, version: int | None, saved: torch.Tensor) -> bool:
    """Whether ``t`` differs from its snapshot.

    The version counter catches in-place writes through autograd; native kernels that update
    running statistics (``torch.batch_norm``) do not bump it, so the values are compared too
    (NaN equal to NaN, so that a NaN entry alone does not count as a change).
    """
    if version is not None and t._version != version:
        return True
    if t.shape != saved.shape or t.dtype != saved.dtype:
        return True
    if t.is_floating_point() or t.is_complex():
        return not bool(((t == saved) | (t.isnan() & saved.isnan())).all())
    return not torch.equal(t, saved)


def _write(t: torch.Tensor, saved: torch.Tensor) -> None:
    """Put the saved values back without moving autograd's version counter.

    Writing through ``.data`` restores exactly the values a pending graph of the user saw, and
    does not make autograd believe they were modified after being saved.
    """
    if t.is_inference():
        with torch.inference_mode():
            t.copy_(saved)
    else:
        t.data.copy_(saved)


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager that restores ``model`` on exit as it was on entry, also on an exception.

    Restored: the ``training`` flag of every submodule; every parameter and buffer (the same
    tensor objects in the same slots, with their values; buffers a forward pass added are
    removed again); every parameter's ``.grad`` (the same object, with its values). A tensor is
    written back only if it was modified in place (its autograd version counter moved), so
    unmodified parameters keep their version and a pending ``loss.backward()`` of the user is
    not disturbed.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> bn = nn.BatchNorm1d(3).eval()
        >>> with preserved_state(bn):
        ...     _ = bn.train()(torch.randn(8, 3) + 5.0)
        >>> bn.training, float(bn.running_mean.abs().max())
        (False, 0.0)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = list(model.modules())
    flags = [(m, m.training) for m in modules]
    slots = []  # (module, dict name, key, tensor, version, saved value)
    for m in modules:
        for store in ("_buffers", "_parameters"):
            for key, t in getattr(m, store).items():
                if t is None:
                    slots.append((m, store, key, None, None, None))
                    continue
                slots.append((m, store, key, t, _version(t), t.detach().clone()))
    keys_before = {(id(m), store): set(getattr(m, store))
                   for m in modules for store in ("_buffers", "_parameters")}
    grads = []
    for m in modules:
        for p in m._parameters.values():
            if p is None:
                continue
            g = p.grad
            if g is None:
                grads.append((p, None, None, None))
            else:
                grads.append((p, g, _version(g), g.detach().clone()))
    try:
        yield model
    finally:
        with torch.no_grad():
            for m in modules:
                for store in ("_buffers", "_parameters"):
                    table = getattr(m, store)
                    for key in set(table) - keys_before[(id(m), store)]:
                        del table[key]
            for m, store, key, t, version, saved in slots:
                table = getattr(m, store)
                if table.get(key) is not t:
                    table[key] = t
                if t is not None and _changed(t, version, saved):
                    _write(t, saved)
            for p, g, version, saved in grads:
                if p.grad is not g:
                    p.grad = g
                if g is not None and _changed(g, version, saved):
                    _write(g, saved)
        for m, flag in flags:
            m.training = flag
