"""Import timm and torchvision, the peers whose models the integration tests build.

The test environment installs them without their dependencies (``pip install --no-deps
torchvision==0.28.0 timm==1.0.29``, pinned in constraints.txt), so that no second torch is
pulled in. The registry's torchvision wheel is built against torch's CUDA libraries: on the
CPU torch of this environment its C extension (``torchvision/_C.so``, the detection operators
``nms``, ``roi_align``, ...) cannot be loaded. Torchvision then skips every registration for
those operators except the fake (meta) kernels of ``torchvision::nms`` and ``torchvision::qnms``,
which it registers unconditionally and which fail with "operator torchvision::nms does not
exist". Defining those two schemas first (no kernel: calling them raises) lets the pure-Python
part, the models, import. Where the extension loads (a torchvision built for this torch),
nothing is defined.

timm needs torchvision (its data transforms) and PyYAML; huggingface_hub and safetensors are
optional for it (pretrained weights only, never used here).

Usage in a test module::

    from peers import timm, torchvision

A missing peer is an ImportError that names the install line, not a skip: the tests it
would hide are the point of the module.
"""

from __future__ import annotations

import importlib.util
import os

import torch

INSTALL = ("install the peers with: .venv/bin/python -m pip install -q --no-deps "
           "-c constraints.txt torchvision==0.28.0 timm==1.0.29")
_SHIM = None  # the torch.library.Library holding the two schemas, kept alive


def _extension_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    for folder in spec.submodule_search_locations:
        for name in os.listdir(folder):
            if name.startswith("_C.") and name.endswith((".so", ".pyd")):
                try:
                    torch.ops.load_library(os.path.join(folder, name))
                    return True
                except OSError:
                    return False
    return False


def _define_detection_schemas() -> None:
    """Define ``torchvision::nms`` and ``torchvision::qnms`` unless they exist (idempotent)."""
    global _SHIM
    if _SHIM is not None or hasattr(torch.ops.torchvision, "nms") or _extension_loads():
        return
    try:
        torch._C._dispatch_has_kernel_for_dispatch_key("torchvision::nms", "Meta")
        return  # defined elsewhere already
    except RuntimeError:
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _SHIM = lib


def import_torchvision():
    """``torchvision``, importable on this CPU torch."""
    if importlib.util.find_spec("torchvision") is None:
        raise ImportError(f"torchvision is not installed; {INSTALL}")
    _define_detection_schemas()
    import torchvision

    return torchvision


def import_timm():
    """``timm`` (after :func:`import_torchvision`, which it imports)."""
    import_torchvision()
    if importlib.util.find_spec("timm") is None:
        raise ImportError(f"timm is not installed; {INSTALL}")
    import timm

    return timm


torchvision = import_torchvision()
timm = import_timm()
