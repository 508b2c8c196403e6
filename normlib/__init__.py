"""normlib: normalization layers, analysis tools and the numerics of the book.

The layers follow torch's conventions (``num_features`` first, train/eval
semantics, unbiased running variance) and are tested against torch's own layers
or independent references. ``create_norm(name, num_features)`` builds any of them
by name.
"""

from normlib import layers as _layers  # noqa: F401  (fills the registry)
from normlib import multimode, recovery  # noqa: F401  (register whitening, recovery, multi-mode norms)
from normlib import weight as _weight  # noqa: F401  (registers the weight normalizers)
from normlib.registry import available_norms, create_norm, register_norm

__version__ = "0.1.0"
__all__ = ["available_norms", "create_norm", "register_norm", "__version__"]
