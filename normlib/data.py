"""Real datasets that need no download, and CIFAR from disk.

Every loader returns a :class:`Split` of float32 tensors with a fixed,
seeded train/test split, so chapters and tests are reproducible offline:

- :func:`load_digits`: scikit-learn's 1,797 handwritten digits as ``(N, 1, 8, 8)`` images.
- :func:`load_wine`: scikit-learn's wine recognition data, 13 features whose scales differ
  by three orders of magnitude (the Motivation chapter's k-NN example).
- :func:`load_mnist1d`: MNIST-1D, generated procedurally by the ``mnist1d`` package
  (Greydanus, 2020), as ``(N, 1, 40)`` signals.
- :func:`load_cifar`: CIFAR-10/100 read from the standard python-version archive when it is on
  disk (no torchvision needed); a clear ``FileNotFoundError`` otherwise.

Example:
    >>> from normlib.data import load_digits
    >>> d = load_digits()
    >>> d.x_train.shape[1:], d.num_classes
    (torch.Size([1, 8, 8]), 10)
"""

from __future__ import annotations

import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from normlib._checks import argument_error, check_positive_int, check_probability, check_seed, is_int

__all__ = [
    "Split",
    "load_digits",
    "load_wine",
    "load_mnist1d",
    "load_cifar",
    "cifar_root",
    "train_test_split",
    "DataFormatError",
]


@dataclass(frozen=True)
class Split:
    """A dataset split into train and test tensors.

    Attributes:
        x_train: inputs ``(N_train, *)``, float32.
        y_train: integer labels ``(N_train,)``, int64.
        x_test: inputs ``(N_test, *)``.
        y_test: labels ``(N_test,)``.
        num_classes: number of classes.
        name: the dataset's name.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str

    def to(self, device) -> Split:
        """The same split with every tensor moved to ``device``."""
        return Split(
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.num_classes,
            self.name,
        )

    def __repr__(self) -> str:
        return (
            f"Split(name={self.name!r}, train={tuple(self.x_train.shape)}, "
            f"test={tuple(self.x_test.shape)}, num_classes={self.num_classes})"
        )


def train_test_split(
    x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, name: str
) -> Split:
    """A seeded, stratification-free random split of numpy arrays into a :class:`Split`."""
    check_seed(seed)
    check_probability("test_fraction", test_fraction, low_open=True, high_open=True)
    n = len(x)
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(test_fraction * n)))
    test, train = perm[:n_test], perm[n_test:]
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    return Split(xt[train], yt[train], xt[test], yt[test], int(yt.max()) + 1, name)


def _extra(module: str, dataset: str):
    """Import ``module`` of the ``data`` extra, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"the {dataset} data set needs {module.split('.')[0]}, which a base "
                          f"install of normlib lacks: pip install 'normlib[data]' ({err})") from err


def load_digits(test_fraction: float = 0.25, seed: int = 0, flatten: bool = False) -> Split:
    """scikit-learn's handwritten digits: 1,797 images of 8x8 pixels, 10 classes.

    Pixel values are scaled from 0..16 to 0..1.

    Args:
        test_fraction: fraction of samples held out for testing.
        seed: seed of the random split.
        flatten: return ``(N, 64)`` vectors instead of ``(N, 1, 8, 8)`` images.
    """
    check_seed(seed)
    bunch = _extra("sklearn.datasets", "digits").load_digits()
    x = bunch.images.astype(np.float32) / 16.0
    x = x.reshape(len(x), 64) if flatten else x[:, None]
    return train_test_split(x, bunch.target, test_fraction, seed, "digits")


def load_wine(test_fraction: float = 0.3, seed: int = 0) -> Split:
    """scikit-learn's wine recognition data: 178 samples, 13 raw features, 3 classes.

    The features are left in their original units (proline is in the hundreds to
    thousands, hue below 2), which is what makes this dataset a good example of
    why distance-based models need standardized inputs.
    """
    check_seed(seed)
    bunch = _extra("sklearn.datasets", "wine").load_wine()
    return train_test_split(bunch.data, bunch.target, test_fraction, seed, "wine")


def load_mnist1d(num_samples: int = 5000, seed: int = 42, test_fraction: float = 0.2) -> Split:
    """MNIST-1D signals of length 40, 10 classes, generated locally (nothing is downloaded).

    Args:
        num_samples: total number of samples to generate (a multiple of 10 is used).
        seed: the generator's seed.
        test_fraction: fraction held out for testing.

    Returns:
        a :class:`Split` with inputs of shape ``(N, 1, 40)``.
    """
    check_seed(seed)
    check_positive_int("num_samples", num_samples, minimum=20)
    mnist1d_data = _extra("mnist1d.data", "MNIST-1D")
    get_dataset_args, make_dataset = mnist1d_data.get_dataset_args, mnist1d_data.make_dataset

    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    args.train_split = 1.0 - test_fraction
    data = make_dataset(args)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)[:, None]
    y = np.concatenate([data["y"], data["y_test"]])
    n_train = len(data["x"])
    xt, yt = torch.from_numpy(x), torch.as_tensor(y, dtype=torch.int64)
    return Split(xt[:n_train], yt[:n_train], xt[n_train:], yt[n_train:], 10, "mnist1d")


_CIFAR = {
    10: {
        "archive": "cifar-10-python.tar.gz",
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "label": b"labels",
    },
    100: {
        "archive": "cifar-100-python.tar.gz",
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "label": b"fine_labels",
    },
}
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def cifar_root() -> Path:
    """Where CIFAR archives are looked for: ``$NORMLIB_DATA`` or ``~/.cache/normlib/data``."""
    return Path(os.environ.get("NORMLIB_DATA", Path.home() / ".cache" / "normlib" / "data"))


class DataFormatError(ValueError):
    """A data file on disk is malformed, truncated or not what its name says it is.

    The message names the file and what was wrong with it.
    """


# What the official CIFAR "python version" batch files hold: a dict of str/bytes keys whose
# values are bytes, lists of ints or bytes, and a uint8 numpy array. Unpickling an array needs
# exactly these callables (numpy 1 writes ``numpy.core``, numpy 2 ``numpy._core``; protocol 5
# uses ``_frombuffer``; Python 3 pickles of bytes at protocol < 3 use ``_codecs.encode``).
def _allowed_globals() -> dict[tuple[str, str], object]:
    import codecs

    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric

    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): codecs.encode}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _multiarray._reconstruct
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = _numeric._frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that constructs only plain containers and uint8-capable numpy arrays.

    Any other global (a class or function named by the file) is refused *before* it is
    looked up, so a crafted file cannot run code when it is read.
    """

    _allowed: dict[tuple[str, str], object] | None = None

    def find_class(self, module: str, name: str):
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _allowed_globals()
        try:
            return _RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to construct {module}.{name}: a CIFAR batch holds only a dict of "
                "bytes, lists of ints and a uint8 array") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused a persistent reference: a CIFAR batch has none")


def _unpickle(fh, where: str) -> dict:
    """Read one CIFAR batch with the restricted unpickler; errors name ``where``."""
    try:
        obj = _RestrictedUnpickler(fh, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DataFormatError(f"{where}: not a CIFAR batch file ({err})") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError,
            MemoryError, UnicodeDecodeError, OSError) as err:
        # Truncated or corrupt: a raw EOFError/KeyError would not say which file.
        raise DataFormatError(
            f"{where}: truncated or corrupt CIFAR batch file ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise DataFormatError(f"{where}: expected a dict, the file holds a {type(obj).__name__}")
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def _read_members(source, names: list[str], where: str) -> list[tuple[str, dict]]:
    """The unpickled batches ``names`` from a folder or an open tar archive, each with its path."""
    out = []
    if isinstance(source, tarfile.TarFile):
        try:
            members = {Path(m.name).name: m for m in source.getmembers() if m.isfile()}
        except (tarfile.TarError, EOFError, OSError) as err:
            raise DataFormatError(f"{where}: truncated or corrupt archive ({err})") from None
        for name in names:
            if name not in members:
                raise DataFormatError(f"{where}: the archive has no batch file {name!r} "
                                      f"(expected {', '.join(names)})")
            label = f"{where}:{members[name].name}"
            try:
                fh = source.extractfile(members[name])
                out.append((label, _unpickle(fh, label)))
            except (tarfile.TarError, EOFError, OSError) as err:
                raise DataFormatError(f"{label}: truncated or corrupt archive member ({err})") from None
    else:
        for name in names:
            path = Path(source) / name
            if not path.is_file():
                raise FileNotFoundError(f"{path}: CIFAR batch file missing (expected {', '.join(names)} "
                                        f"in {source})")
            with open(path, "rb") as fh:
                out.append((str(path), _unpickle(fh, str(path))))
    return out


def _validate(where: str, batch: dict, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The batch's uint8 ``(N, 3072)`` pixels and int64 labels, or a :class:`DataFormatError`."""
    for key in (b"data", label_key):
        if key not in batch:
            raise DataFormatError(f"{where}: missing the key {key.decode()!r} "
                                  f"(keys present: {sorted(k.decode(errors='replace') for k in batch)})")
    x = batch[b"data"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
        kind = f"{x.dtype} array" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataFormatError(f"{where}: 'data' must be a uint8 array, got a {kind} "
                              "(pixels are not converted: 0.5 or 300 would be silently changed)")
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise DataFormatError(f"{where}: 'data' must have shape (N, 3072), got {tuple(x.shape)}")
    raw = batch[label_key]
    if isinstance(raw, np.ndarray):
        if raw.ndim != 1 or raw.dtype.kind not in "iu":
            raise DataFormatError(f"{where}: {label_key.decode()!r} must be a 1-D integer array, "
                                  f"got {raw.dtype} of shape {tuple(raw.shape)}")
        y = raw.astype(np.int64)
    elif isinstance(raw, list) and all(type(v) is int for v in raw):
        y = np.asarray(raw, dtype=np.int64) if raw else np.zeros(0, np.int64)
    else:
        raise DataFormatError(f"{where}: {label_key.decode()!r} must be a list of ints")
    if len(y) != len(x):
        raise DataFormatError(f"{where}: {len(x)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataFormatError(f"{where}: labels must lie in [0, {num_classes}), "
                              f"found {int(y.min())}..{int(y.max())}")
    return x, y


def _stack(batches: list[tuple[str, dict]], label_key: bytes, num_classes: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [_validate(where, b, label_key, num_classes) for where, b in batches]
    x = np.concatenate([p[0] for p in pairs])
    y = np.concatenate([p[1] for p in pairs])
    x = torch.from_numpy(x.reshape(-1, 3, 32, 32)).float().div_(255.0)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (x - mean) / std, torch.from_numpy(y)


def load_cifar(num_classes: int = 10, root: str | os.PathLike | None = None) -> Split:
    """CIFAR-10 or CIFAR-100 from the python-version archive on disk.

    Looks in ``root`` (default :func:`cifar_root`) for the extracted folder
    (``cifar-10-batches-py`` / ``cifar-100-python``) or the ``.tar.gz`` archive. Images are
    returned as ``(N, 3, 32, 32)`` float32, standardized per channel with the usual CIFAR
    mean and standard deviation.

    The batch files are read with a restricted unpickler that constructs only what the
    official files hold (a dict, bytes, lists of ints and a uint8 array): a crafted file cannot
    run code when it is read, and every file is validated (uint8 ``(N, 3072)`` pixels, ``N``
    integer labels in ``[0, num_classes)``).

    Raises:
        ValueError: if ``num_classes`` is not the int 10 or 100.
        DataFormatError: (a ``ValueError``) if a file is malformed, truncated, corrupt or holds
            anything else; the message names the file and what was wrong.
        FileNotFoundError: if neither the folder nor the archive is there; the message names
            the expected path and where to obtain the archive.
    """
    if not is_int(num_classes) or num_classes not in _CIFAR:
        raise argument_error(ValueError, "num_classes", "the int 10 or 100", num_classes,
                             "use num_classes=10 (CIFAR-10) or num_classes=100 (CIFAR-100)")
    spec = _CIFAR[num_classes]
    root = Path(root) if root is not None else cifar_root()
    folder, archive = root / spec["folder"], root / spec["archive"]
    if folder.is_dir():
        train = _read_members(folder, spec["train"], str(folder))
        test = _read_members(folder, spec["test"], str(folder))
    elif archive.is_file():
        try:
            tar = tarfile.open(archive, "r:gz")
        except (tarfile.TarError, EOFError, OSError) as err:
            raise DataFormatError(f"{archive}: not a readable .tar.gz archive ({err})") from None
        with tar:
            train = _read_members(tar, spec["train"], str(archive))
            test = _read_members(tar, spec["test"], str(archive))
    else:
        raise FileNotFoundError(
            f"CIFAR-{num_classes} not found: expected the folder {folder} or the archive "
            f"{archive}. Download '{spec['archive']}' (the 'CIFAR-{num_classes} python version' "
            "from the CIFAR page of the University of Toronto) into that folder, or set "
            "NORMLIB_DATA to the folder that holds it."
        )
    x_train, y_train = _stack(train, spec["label"], num_classes)
    x_test, y_test = _stack(test, spec["label"], num_classes)
    return Split(x_train, y_train, x_test, y_test, num_classes, f"cifar{num_classes}")
