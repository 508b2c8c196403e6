"""normlib: normalization layers, analysis tools and the numerics of the book.

The map of the library: which module serves which chapter.

======================================  ==============================================================
chapter                                 modules
======================================  ==============================================================
Motivation                              ``normlib.linear``
Hessian conditioning                    ``normlib.hessian`` (``operator``, ``eigen``, ``estimators``,
                                        ``conditioning``)
Review I: normalizing activations       ``normlib.functional``, ``normlib.framework``,
                                        ``normlib.layers``
Normalization across devices            ``normlib.distributed`` (synchronized batch statistics,
                                        local multi-process runs)
Review II: whitening, recovery,         ``normlib.whitening``, ``normlib.recovery``,
multi-mode                              ``normlib.multimode``
Review III: weights and gradients       ``normlib.weight``, ``normlib.optim``
Analysis                                ``normlib.analysis`` (``scaling``, ``invariance``,
                                        ``norm_dynamics``, ``stochasticity``, ``discrepancy``)
Stable and informative forward,         ``normlib.propagation`` (``probe``, ``statistics``, ``sweep``,
stable backward propagation             ``theory``)
Training map                            ``normlib.train``, ``normlib.diagnose``
======================================  ==============================================================

Supporting modules: ``normlib.registry`` (``create_norm(name, num_features)`` builds any normalizer
by name; ``norm_factory(name)`` is a ``norm_layer`` for torchvision's and timm's models),
``normlib.conversion`` (``convert``/``revert`` swap the activation normalizers of any model,
``convert_weights``/``remove_weight_norms`` its weight normalizers), ``normlib.models`` (MLP,
VGG-style CNN, CIFAR ResNet with a pluggable normalizer), ``normlib.data`` (embedded datasets,
on-disk CIFAR), ``normlib.device`` (device and size preset), ``normlib.cli`` (the commands of
``python -m normlib``), ``normlib.plotting``, ``normlib.widgets`` and ``normlib.explorer`` (figures
and explorers, for the chapters only). Two internal modules serve every other one:
``normlib._checks`` (argument checks: one message format, ``ValueError`` for a bad value,
``TypeError`` for a bad type) and ``normlib._state`` (tools leave a user's model as they found it).

Imports flow one way, and a test reads the import graph to keep it so (no module imports
another that imports it back)::

    chapters -> analysis, hessian, propagation, train, diagnose -> models -> layers
             -> framework, functional -> _checks
    conversion -> layers, whitening, recovery, multimode, registry

Layers never import analysis tools; only the chapters (and ``widgets``, which draws with
``plotting``) import ``plotting`` and ``widgets``.

The layers follow torch's conventions (``num_features`` first, train/eval semantics, unbiased
running variance) and are tested against torch's own layers or independent references.
"""

from normlib import layers as _layers  # noqa: F401  (fills the registry)
from normlib import multimode, recovery  # noqa: F401  (register whitening, recovery, multi-mode norms)
from normlib import weight as _weight  # noqa: F401  (registers the weight normalizers)
from normlib.conversion import convert, convert_weights, remove_weight_norms, revert
from normlib.distributed import convert_sync, revert_sync
from normlib.registry import available_norms, create_norm, norm_factory, register_norm

__version__ = "0.1.0"
__all__ = ["available_norms", "create_norm", "norm_factory", "register_norm", "convert", "revert",
           "convert_weights", "remove_weight_norms", "convert_sync", "revert_sync", "__version__"]
