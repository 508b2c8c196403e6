"""Device choice and the book's one size knob.

Every chapter asks this module two things: where to run (:func:`default_device`)
and how big to run (:func:`size_preset`, :func:`pick`). The same code then runs
in about a minute per chapter on a 2-core CPU (``small``) and at paper-like
sizes on a GPU (``full``).

Environment variables:

``NORMLIB_DEVICE``
    Overrides the device (``cpu``, ``cuda``, ``cuda:1``, ``mps``).
``NORMLIB_SIZE``
    ``small`` or ``full``. Default: ``full`` on a CUDA device, ``small`` otherwise.

Example:
    >>> import os, normlib.device as nd
    >>> os.environ["NORMLIB_SIZE"] = "small"
    >>> nd.size_preset()
    'small'
    >>> nd.pick(small=8, full=256)
    8
    >>> del os.environ["NORMLIB_SIZE"]
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from normlib._checks import check_nonnegative_int, check_seed

__all__ = ["default_device", "size_preset", "pick", "seed_everything", "SIZES"]

SIZES = ("small", "full")


def default_device() -> torch.device:
    """The device chapters and tools run on: ``NORMLIB_DEVICE``, else CUDA, else MPS, else CPU.

    Raises:
        ValueError: if ``NORMLIB_DEVICE`` names a device torch does not know or that is
            not available on this machine.
    """
    name = os.environ.get("NORMLIB_DEVICE", "").strip()
    if name:
        try:
            dev = torch.device(name)
        except RuntimeError as err:
            raise ValueError(
                f"NORMLIB_DEVICE={name!r} is not a torch device; use e.g. 'cpu', 'cuda', 'mps'"
            ) from err
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"NORMLIB_DEVICE={name!r} but CUDA is not available; unset it")
        if dev.type == "mps" and not _mps_available():
            raise ValueError(f"NORMLIB_DEVICE={name!r} but MPS is not available; unset it")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def size_preset() -> str:
    """``'small'`` or ``'full'``: ``NORMLIB_SIZE`` if set, else ``'full'`` on CUDA, else ``'small'``.

    Raises:
        ValueError: if ``NORMLIB_SIZE`` is set to anything but ``small`` or ``full``.
    """
    value = os.environ.get("NORMLIB_SIZE", "").strip().lower()
    if value:
        if value not in SIZES:
            raise ValueError(f"NORMLIB_SIZE={value!r}; expected one of {SIZES}")
        return value
    return "full" if default_device().type == "cuda" else "small"


def pick(small: Any, full: Any) -> Any:
    """Return ``small`` or ``full`` according to :func:`size_preset`."""
    return full if size_preset() == "full" else small


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU ``torch.Generator`` seeded the same way."""
    check_seed(seed)
    check_nonnegative_int("seed", seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
