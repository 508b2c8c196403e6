"""Training runs for the training map: a small SGD loop, the largest stable learning rate, a cache.

One run is described completely by a :class:`TrainConfig` (architecture, normalizer, data,
batch size, learning rate, schedule, epochs, seed). :func:`train` executes it:

- SGD with momentum and weight decay; the learning rate is scaled linearly with the batch size,
  :math:`\\eta = \\eta_{\\text{base}} \\cdot B / B_{\\text{ref}}` (Goyal et al., 2017), and
  follows a cosine (default) or constant schedule over the steps of the run, without warm-up,
  so that the initial learning rate is the one that has to be stable;
- the cross-entropy of every step is recorded; a run **diverges** when a loss is not finite or
  exceeds ``divergence_factor`` times :math:`\\max(\\ell_0, \\ln K)` (:math:`\\ell_0` the first
  step's loss, :math:`K` the number of classes), and stops there;
- test accuracy in evaluation mode at the end.

:func:`largest_stable_lr` tries a grid of base learning rates from the largest down and returns
the first whose run is stable (did not diverge, and ended clearly below the loss of a uniform
guess: a network that large first steps left at chance level is not stable either), as in
Figure 1 of :cite:t:`lubana2021beyond`. :func:`training_map` does that for a list of configurations and
trains several seeds at the chosen rate; :func:`results_frame` and :func:`curves_frame` turn the
result into ``pandas`` tables.

Every run is cached on disk (:class:`ResultCache`), keyed on a hash of normlib's source code
(:func:`source_hash`), the full configuration, a hash of the data's tensors
(:func:`data_fingerprint`), the device type and the torch version: a book re-render reuses the
results, and a change to the library or to the data retrains. The folder is
``$NORMLIB_CACHE_DIR`` (the Makefile sets it), else ``~/.cache/normlib`` (:func:`cache_dir`).

Under ``torchrun --nproc-per-node K`` (an initialized ``torch.distributed`` process group),
:func:`training_map` gives each rank a share of the configurations (round-robin by index); each
rank writes its runs to the cache and every rank returns the whole map, equal to a one-process
run (:func:`normlib.distributed.sharding.map_sharded`). Without a process group nothing changes.

The chapter "Training map" (``chapters/training_map.md``) runs this module.

Example:
    >>> from normlib.train import TrainConfig, train
    >>> cfg = TrainConfig(model="mlp", depth=2, width=16, norm="bn", batch_size=64, lr=0.1,
    ...                   epochs=2, train_samples=256)
    >>> run = train(cfg, cache=False, progress=False)
    >>> run.diverged, run.epoch_loss[-1] < run.initial_loss
    (False, True)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from normlib._checks import check_float, check_nonnegative_float, check_nonnegative_int, check_positive_int
from normlib.data import Split
from normlib.device import default_device
from normlib.distributed.sharding import map_sharded
from normlib.models import MLP, VGG, ResNet, has_activation_norm

__all__ = [
    "TrainConfig",
    "RunResult",
    "LrSearch",
    "MapEntry",
    "MODELS",
    "DATASETS",
    "SCHEDULES",
    "STABLE_PROGRESS",
    "source_hash",
    "data_fingerprint",
    "cache_dir",
    "ResultCache",
    "load_dataset",
    "build_model",
    "learning_rate_at",
    "divergence_threshold",
    "train",
    "largest_stable_lr",
    "train_seeds",
    "training_map",
    "results_frame",
    "curves_frame",
]

MODELS = ("mlp", "vgg", "resnet")
DATASETS = ("digits", "mnist1d", "cifar10", "cifar100")
SCHEDULES = ("cosine", "constant")
# A stable run ends below this fraction of min(initial loss, ln K).
STABLE_PROGRESS = 0.9
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines one training run (and its cache key).

    Args:
        model: ``"vgg"`` (non-residual CNN), ``"resnet"`` (CIFAR ResNet, depth ``6n + 2``)
            or ``"mlp"``.
        depth: number of convolutions (VGG), ``6n + 2`` (ResNet) or hidden layers (MLP).
        width: channels of the first stage (hidden width for the MLP).
        norm: a registered normalizer name (``"bn"``, ``"gn"``, ``"wn"``, ...) or ``"none"``.
        norm_kwargs: keyword arguments of the normalizer, e.g. ``{"group_size": 4}``.
        skipinit: ResNet only: a learnable scalar, initialized to 0, on each residual branch.
        dataset: ``"digits"`` (8x8 images, embedded), ``"mnist1d"``, ``"cifar10"`` or
            ``"cifar100"`` (from disk, see :func:`normlib.data.load_cifar`).
        batch_size: mini-batch size ``B`` (incomplete last batches are dropped).
        lr: base learning rate for a batch of ``reference_batch_size`` samples.
        reference_batch_size: ``B_ref`` of the linear scaling rule.
        epochs: passes over the training set.
        momentum: SGD momentum.
        weight_decay: L2 penalty coefficient of SGD.
        schedule: ``"cosine"`` (from the initial rate to 0 over the run) or ``"constant"``.
        seed: seeds the initialization and the order of the batches.
        divergence_factor: a loss above this multiple of ``max(first loss, ln K)`` is divergence.
        train_samples: use only the first ``train_samples`` training samples (``None``: all).
        dtype: ``"float32"`` or ``"float64"``.

    Raises:
        ValueError: for an unknown model, dataset, schedule or dtype, a non-positive size, a
            negative rate, or ``norm_kwargs`` for a normalizer that takes none (``"none"``, a
            weight normalizer: see :func:`normlib.models.has_activation_norm`); the message
            names the argument.

    Example:
        >>> TrainConfig(model="vgg", depth=10, norm="gn", norm_kwargs={"group_size": 4},
        ...             batch_size=16).effective_lr
        0.0125
    """

    model: str = "vgg"
    depth: int = 10
    width: int = 8
    norm: str = "bn"
    norm_kwargs: dict = field(default_factory=dict)
    skipinit: bool = False
    dataset: str = "digits"
    batch_size: int = 128
    lr: float = 0.1
    reference_batch_size: int = 128
    epochs: int = 3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    seed: int = 0
    divergence_factor: float = 5.0
    train_samples: int | None = None
    dtype: str = "float32"

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {tuple(_DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.norm, str):
            raise TypeError(f"norm must be a registered name (use 'none' for no normalizer), "
                            f"got {type(self.norm).__name__}")
        if not isinstance(self.norm_kwargs, dict):
            raise TypeError(f"norm_kwargs must be a dict, got {type(self.norm_kwargs).__name__}")
        for name in ("depth", "width", "batch_size", "reference_batch_size", "epochs"):
            check_positive_int(name, getattr(self, name))
        if self.train_samples is not None:
            check_positive_int("train_samples", self.train_samples)
            if self.train_samples < self.batch_size:
                raise ValueError(f"train_samples={self.train_samples} is smaller than "
                                 f"batch_size={self.batch_size}; no full batch would remain")
        check_nonnegative_int("seed", self.seed)
        for name in ("lr", "momentum", "weight_decay"):
            check_nonnegative_float(name, getattr(self, name))
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        check_float("divergence_factor", self.divergence_factor, low=1.0, low_open=True, example=4.0)
        if self.model == "resnet" and ((self.depth - 2) % 6 or self.depth < 8):
            raise ValueError(f"depth must be 6n + 2 (20, 32, 56, ...) for model='resnet', "
                             f"got {self.depth}")
        if self.skipinit and self.model != "resnet":
            raise ValueError(f"skipinit=True needs model='resnet', got model={self.model!r}")
        if self.norm_kwargs and has_activation_norm(self.norm, self.width) is False:
            raise ValueError(f"norm_kwargs={self.norm_kwargs!r} do not apply to norm={self.norm!r}: "
                             f"it puts no normalization layer in the model to pass them to "
                             f"(weight normalizers are applied with their defaults); drop "
                             f"norm_kwargs or use an activation normalizer such as 'gn'")

    @property
    def effective_lr(self) -> float:
        """The initial learning rate of SGD, ``lr * batch_size / reference_batch_size``."""
        return self.lr * self.batch_size / self.reference_batch_size

    @property
    def architecture(self) -> str:
        """A short name of the architecture, such as ``"VGG-10"`` or ``"ResNet-20 SkipInit"``."""
        name = {"mlp": "MLP", "vgg": "VGG", "resnet": "ResNet"}[self.model]
        return f"{name}-{self.depth}" + (" SkipInit" if self.skipinit else "")

    def replace(self, **changes) -> TrainConfig:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-able values."""
        out = dataclasses.asdict(self)
        out["norm_kwargs"] = dict(sorted(self.norm_kwargs.items()))
        return out


@dataclass
class RunResult:
    """The record of one run of :func:`train`.

    Attributes:
        config: the configuration, as :meth:`TrainConfig.to_dict`.
        step_loss: the training loss of every step (up to and including a divergent one).
        epoch_loss: the mean training loss of every completed epoch.
        initial_loss: the loss of the first step, before any update.
        num_classes: ``K``; ``ln K`` is the loss of a uniform guess.
        diverged: whether the loss became non-finite or exceeded the divergence threshold.
        diverged_step: the step at which it did (``None`` if it did not).
        test_accuracy: accuracy on the test split in evaluation mode (``nan`` if diverged).
        seconds: wall-clock time of the run when it was computed.
        from_cache: whether this record was read from the cache.
    """

    config: dict
    step_loss: list[float]
    epoch_loss: list[float]
    initial_loss: float
    num_classes: int
    diverged: bool
    diverged_step: int | None
    test_accuracy: float
    seconds: float
    from_cache: bool = False

    @property
    def final_loss(self) -> float:
        """The mean loss of the last epoch; ``inf`` for a run that diverged."""
        if self.diverged or not self.epoch_loss:
            return math.inf
        return self.epoch_loss[-1]

    def is_stable(self, progress: float = STABLE_PROGRESS) -> bool:
        """Did not diverge and ended below ``progress * min(initial loss, ln K)``.

        A run that does not diverge but stays at the loss of a uniform guess (a network whose
        first large steps killed it) is not counted as stable.
        """
        if not 0 < progress <= 1:
            raise ValueError(f"progress must be in (0, 1], got {progress!r}")
        reference = min(self.initial_loss, math.log(self.num_classes))
        return (not self.diverged) and self.final_loss < progress * reference

    @property
    def stable(self) -> bool:
        """:meth:`is_stable` with the default ``progress``."""
        return self.is_stable()

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("from_cache")
        return out


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------


# Modules that only draw or present results: editing them cannot change a training run.
PRESENTATION_MODULES = ("plotting.py", "widgets.py", "explorer.py")


def source_hash(root: str | os.PathLike | None = None) -> str:
    """SHA-256 of every ``*.py`` file under ``root`` (default: the installed normlib package).

    Relative paths are hashed with the contents, so a renamed or added module changes it too.
    The top-level presentation modules (``PRESENTATION_MODULES``: plotting, widgets and the
    static explorer) are left out: they cannot change a run, and a figure's edit should not
    retrain the training map.

    Example:
        >>> len(source_hash())
        64
    """
    root = Path(root) if root is not None else Path(__file__).resolve().parent
    if not root.is_dir():
        raise ValueError(f"root={str(root)!r} is not a folder; pass the normlib package folder")
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts or (path.parent == root and path.name in PRESENTATION_MODULES):
            continue
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


# id(x_train) -> (weak references to the four tensors, their versions and num_classes,
# digest): a split is hashed once while none of its tensors is replaced or modified in place.
_FINGERPRINTS: dict[int, tuple[tuple, tuple, str]] = {}


def data_fingerprint(data: Split) -> str:
    """SHA-256 of a split's tensors (dtype, shape and every byte) and its number of classes.

    Two splits with equal tensors have the same fingerprint, whatever their name; negating
    the inputs, relabelling or reordering a single sample changes it. Hashing runs at about
    1 GB/s (CIFAR-10 in float32: under a second) and is remembered for the same tensors while
    their version counters do not change, so a map of many cached runs hashes its data once.
    Edits that bypass the counters (through ``.data``, or through a NumPy array sharing the
    memory) are not seen: pass new tensors after such an edit.

    Raises:
        TypeError: if ``data`` is not a :class:`normlib.data.Split`.

    Example:
        >>> import torch
        >>> from normlib.data import Split
        >>> x, y = torch.zeros(4, 2), torch.tensor([0, 1, 0, 1])
        >>> a = data_fingerprint(Split(x, y, x, y, 2, "a"))
        >>> a == data_fingerprint(Split(x.clone(), y, x, y, 2, "b")), len(a)
        (True, 64)
        >>> a == data_fingerprint(Split(x + 1, y, x, y, 2, "a"))
        False
    """
    if not isinstance(data, Split):
        raise TypeError(f"data must be a normlib.data.Split, got {type(data).__name__}")
    tensors = (data.x_train, data.y_train, data.x_test, data.y_test)
    try:
        state = tuple(t._version for t in tensors) + (data.num_classes,)
    except RuntimeError:  # inference-mode tensors count no versions: hash every time
        state = None
    known = _FINGERPRINTS.get(id(data.x_train))
    # Weak references, not ids: a freed tensor's id may be reused by another one.
    if (state is not None and known is not None and known[1] == state
            and all(ref() is t for ref, t in zip(known[0], tensors))):
        return known[2]
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(b"\0")
        # uint8 view: numpy has no bfloat16, and the bytes are what matters.
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        digest.update(b"\0")
    digest.update(str(int(data.num_classes)).encode())
    value = digest.hexdigest()
    if state is not None:
        _FINGERPRINTS[id(data.x_train)] = (tuple(weakref.ref(t) for t in tensors), state, value)
    return value


def cache_dir() -> Path:
    """The folder of cached results: ``$NORMLIB_CACHE_DIR``, else ``~/.cache/normlib``."""
    value = os.environ.get("NORMLIB_CACHE_DIR", "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "normlib"


class ResultCache:
    """Runs of :func:`train` stored as JSON files, keyed on code, configuration, data and device.

    The key is the SHA-256 of the normlib source hash, the configuration, the
    :func:`data_fingerprint` of the data, the device type and the torch version. A changed
    configuration, library or dataset is a different key, so an edit of normlib (or a run on
    other data under the same ``config.dataset`` name) retrains instead of reusing results that
    do not belong to it. Files are written atomically, and an unreadable file counts as a miss.

    Args:
        directory: where the files go; default ``cache_dir() / "train"``.
        code_hash: the hash of the code; default :func:`source_hash` of normlib.

    Example:
        >>> import tempfile
        >>> cache = ResultCache(tempfile.mkdtemp(), code_hash="abc")
        >>> cache.get(TrainConfig(), torch.device("cpu")) is None
        True
    """

    def __init__(self, directory: str | os.PathLike | None = None, code_hash: str | None = None):
        self.directory = Path(directory) if directory is not None else cache_dir() / "train"
        self.code_hash = code_hash if code_hash is not None else source_hash()
        if not isinstance(self.code_hash, str) or not self.code_hash:
            raise ValueError(f"code_hash must be a non-empty str, got {code_hash!r}")

    def key(self, config: TrainConfig, device: torch.device,
            data: Split | str | None = None) -> str:
        """The hex key of ``config`` run on ``device`` with ``data``.

        ``data``: the split trained on, or its :func:`data_fingerprint`; ``None`` (default)
        means :func:`load_dataset` of ``config.dataset``, as in :func:`train`.
        """
        if data is None:
            data = load_dataset(config.dataset)
        if isinstance(data, Split):
            data = data_fingerprint(data)
        if not isinstance(data, str) or not data:
            raise TypeError(f"data must be a Split, its data_fingerprint() or None (the dataset "
                            f"of config), got {data!r}")
        payload = {
            "code": self.code_hash,
            "config": config.to_dict(),
            "data": data,
            "device": torch.device(device).type,
            "torch": torch.__version__.split("+")[0],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def path(self, config: TrainConfig, device: torch.device,
             data: Split | str | None = None) -> Path:
        """The file that holds the result of ``config`` on ``device`` with ``data`` (as :meth:`key`)."""
        return self.directory / f"{self.key(config, device, data)}.json"

    def get(self, config: TrainConfig, device: torch.device,
            data: Split | str | None = None) -> RunResult | None:
        """The stored result, or ``None`` when there is none (or it cannot be read)."""
        path = self.path(config, device, data)
        try:
            record = json.loads(path.read_text())
            return RunResult(**record, from_cache=True)
        except (OSError, ValueError, TypeError):
            return None

    def put(self, config: TrainConfig, device: torch.device, result: RunResult,
            data: Split | str | None = None) -> Path:
        """Store ``result`` (of a run on ``data``, as :meth:`key`); returns the file written."""
        path = self.path(config, device, data)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result.to_dict()))
        os.replace(tmp, path)
        return path

    def __repr__(self) -> str:
        return f"ResultCache({str(self.directory)!r}, code_hash={self.code_hash[:12]!r})"


def _as_cache(cache) -> ResultCache | None:
    if cache is None or cache is False:
        return None
    if cache is True:
        return ResultCache()
    if isinstance(cache, ResultCache):
        return cache
    raise TypeError(f"cache must be True, False, None or a ResultCache, got {type(cache).__name__}")


# --------------------------------------------------------------------------------------------
# Data and models
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def load_dataset(name: str) -> Split:
    """The dataset ``name`` with inputs standardized by the training set's mean and std.

    Images keep their channels (digits: ``(N, 1, 8, 8)``; CIFAR: ``(N, 3, 32, 32)``), MNIST-1D
    is ``(N, 1, 40)``. CIFAR is read from disk (already standardized per channel). The result
    is memoized; treat it as read-only.
    """
    from normlib import data

    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    if name.startswith("cifar"):
        return data.load_cifar(int(name[5:]))
    split = data.load_digits() if name == "digits" else data.load_mnist1d()
    mean, std = split.x_train.mean(), split.x_train.std()
    return Split((split.x_train - mean) / std, split.y_train, (split.x_test - mean) / std,
                 split.y_test, split.num_classes, split.name)


def build_model(config: TrainConfig, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """The model of ``config`` for inputs of shape ``input_shape`` (one sample, no batch axis).

    Signals ``(1, L)`` are given to the CNNs as ``(1, 1, L)`` images (see :func:`train`).
    """
    shape = tuple(int(s) for s in input_shape)
    kw = {"norm": config.norm, "norm_kwargs": dict(config.norm_kwargs)}
    if config.model == "mlp":
        return MLP(math.prod(shape), num_classes, width=config.width, depth=config.depth, **kw)
    if config.model == "vgg":
        return VGG(in_channels=shape[0], num_classes=num_classes, depth=config.depth,
                   width=config.width, **kw)
    return ResNet(depth=config.depth, num_classes=num_classes, width=config.width,
                  skipinit=config.skipinit, in_channels=shape[0], **kw)


def learning_rate_at(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of ``step`` (0-based) out of ``total_steps``.

    Cosine: :math:`\\eta_t = \\eta_0 (1 + \\cos(\\pi t / T)) / 2` with :math:`\\eta_0` the
    :attr:`TrainConfig.effective_lr`; constant: :math:`\\eta_0`.

    Example:
        >>> cfg = TrainConfig(lr=0.2, batch_size=64)
        >>> learning_rate_at(cfg, 0, 10), learning_rate_at(cfg, 5, 10)
        (0.1, 0.05)
    """
    eta0 = config.effective_lr
    if config.schedule == "constant":
        return eta0
    return eta0 * 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))


def divergence_threshold(initial_loss: float, num_classes: int, factor: float) -> float:
    """The loss above which a run counts as diverged: ``factor * max(initial_loss, ln K)``.

    ``ln K`` is the loss of a uniform prediction over ``K`` classes; the maximum keeps the
    threshold meaningful when the first loss happens to be small.

    Example:
        >>> round(divergence_threshold(2.0, 10, 5.0), 3)
        11.513
    """
    if not math.isfinite(initial_loss):
        return -math.inf
    return factor * max(initial_loss, math.log(num_classes))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _progress(iterable, total: int | None, progress: bool | None, desc: str, leave: bool = False):
    # None: a text bar on a terminal only. tqdm.auto would draw ipywidgets in a notebook even
    # when asked to decide, and every bar's widget state would end up in the rendered book.
    return tqdm(iterable, total=total, disable=None if progress is None else not progress,
                desc=desc, leave=leave)


def _as_images(x: torch.Tensor, model: str) -> torch.Tensor:
    # The CNNs are 2-D; a signal (N, 1, L) becomes a 1 x L image.
    return x.unsqueeze(2) if model != "mlp" and x.dim() == 3 else x


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return correct / max(len(x), 1)


def _run(config: TrainConfig, data: Split, device: torch.device, progress: bool | None) -> RunResult:
    start = time.perf_counter()
    dtype = _DTYPES[config.dtype]
    x_train, y_train = data.x_train, data.y_train
    if config.train_samples is not None:
        if config.train_samples > len(x_train):
            raise ValueError(f"train_samples={config.train_samples} exceeds the {len(x_train)} "
                             f"training samples of {data.name}")
        x_train, y_train = x_train[:config.train_samples], y_train[:config.train_samples]
    if len(x_train) < config.batch_size:
        raise ValueError(f"batch_size={config.batch_size} exceeds the {len(x_train)} training "
                         f"samples of {data.name}; choose a smaller batch")
    x_train = _as_images(x_train, config.model).to(device, dtype)
    y_train = y_train.to(device)
    x_test = _as_images(data.x_test, config.model).to(device, dtype)
    y_test = data.y_test.to(device)

    torch.manual_seed(config.seed)
    order = torch.Generator().manual_seed(config.seed)
    model = build_model(config, x_train.shape[1:], data.num_classes).to(device, dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.effective_lr,
                                momentum=config.momentum, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    steps_per_epoch = len(x_train) // config.batch_size
    total = steps_per_epoch * config.epochs

    step_loss: list[float] = []
    epoch_loss: list[float] = []
    threshold, diverged_step = math.inf, None
    model.train()
    step = 0
    bar = _progress(range(config.epochs), config.epochs, progress,
                    f"{config.architecture} {config.norm} B={config.batch_size} lr={config.lr:g}")
    for _ in bar:
        perm = torch.randperm(len(x_train), generator=order).to(device)
        losses = []
        for b in range(steps_per_epoch):
            idx = perm[b * config.batch_size:(b + 1) * config.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(config, step, total)
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            value = loss.item()
            step_loss.append(value)
            if step == 0:
                threshold = divergence_threshold(value, data.num_classes, config.divergence_factor)
            if not math.isfinite(value) or value > threshold:
                diverged_step = step
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(value)
            step += 1
        if diverged_step is not None:
            break
        epoch_loss.append(sum(losses) / len(losses))
    bar.close()
    diverged = diverged_step is not None
    accuracy = math.nan if diverged else _accuracy(model, x_test, y_test)
    return RunResult(config.to_dict(), step_loss, epoch_loss, step_loss[0], data.num_classes,
                     diverged, diverged_step, accuracy, time.perf_counter() - start)


def train(
    config: TrainConfig,
    *,
    data: Split | None = None,
    device: torch.device | str | None = None,
    cache: ResultCache | bool | None = True,
    progress: bool | None = None,
) -> RunResult:
    """Train the model of ``config`` with SGD and return the record of the run.

    Args:
        config: the run.
        data: the dataset; default :func:`load_dataset` of ``config.dataset``. Its
            :func:`data_fingerprint` is part of the cache key, so other data under the same
            ``config.dataset`` is a different run.
        device: default :func:`normlib.device.default_device`.
        cache: ``True`` (default): the :class:`ResultCache` in :func:`cache_dir`; a
            :class:`ResultCache`; ``False``/``None``: always train, store nothing.
        progress: show a progress bar (``None``: only on a terminal).

    Returns:
        a :class:`RunResult`; ``from_cache`` says whether it was read from the cache.

    Raises:
        TypeError: if ``config`` is not a :class:`TrainConfig`, ``data`` not a
            :class:`normlib.data.Split` or ``cache`` has a wrong type.
        ValueError: if the batch is larger than the training set.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if data is not None and not isinstance(data, Split):
        raise TypeError(f"data must be a normlib.data.Split, got {type(data).__name__}")
    store = _as_cache(cache)
    device = torch.device(device) if device is not None else default_device()
    data = data if data is not None else load_dataset(config.dataset)
    if store is not None:
        fingerprint = data_fingerprint(data)
        hit = store.get(config, device, fingerprint)
        if hit is not None:
            return hit
    result = _run(config, data, device, progress)
    if store is not None:
        store.put(config, device, result, fingerprint)
    return result


@dataclass
class LrSearch:
    """The result of :func:`largest_stable_lr`.

    Attributes:
        lr: the largest stable base learning rate of the grid (``None`` if none was stable).
        tried: ``(lr, stable)`` for each rate tried, largest first.
        probes: every run of the search, in the order they were made.
        runs: the runs at :attr:`lr`, one per seed (empty if no rate was stable).
    """

    lr: float | None
    tried: list[tuple[float, bool]]
    probes: list[RunResult]
    runs: list[RunResult]


def largest_stable_lr(
    config: TrainConfig,
    lrs: Iterable[float],
    seeds: Sequence[int] | None = None,
    *,
    probe_epochs: int | None = None,
    data: Split | None = None,
    device: torch.device | str | None = None,
    cache: ResultCache | bool | None = True,
    progress: bool | None = None,
) -> LrSearch:
    """The largest base learning rate of ``lrs`` at which ``config`` trains stably for every seed.

    Rates are tried from the largest down. At each rate the seeds are trained in turn until one
    is not stable (:meth:`RunResult.is_stable`); the first rate at which all are stable is
    returned. Divergent runs stop at the divergent step, so rates that blow up are cheap to
    reject; requiring every seed keeps the chosen rate off the edge where one initialization
    trains and another does not.

    Args:
        config: the run; its ``lr`` and ``seed`` are replaced.
        lrs: the grid of base learning rates (positive).
        seeds: the seeds that must all be stable (default: ``config.seed`` alone).
        probe_epochs: train this many epochs per probe; ``None`` (default) probes with full runs,
            which then are the result's :attr:`LrSearch.runs`.
        data: as in :func:`train`.
        device: as in :func:`train`.
        cache: as in :func:`train`.
        progress: as in :func:`train`.

    Raises:
        ValueError: if ``lrs`` is empty or holds a non-positive rate, or ``seeds`` is empty.
    """
    lrs = list(lrs)
    grid = sorted({float(lr) for lr in lrs}, reverse=True)
    if not grid or grid[-1] <= 0 or not all(math.isfinite(lr) for lr in grid):
        raise ValueError(f"lrs must be a non-empty list of positive rates, got {lrs!r}")
    seeds = [config.seed] if seeds is None else [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got an empty list")
    if probe_epochs is not None:
        check_positive_int("probe_epochs", probe_epochs)
    kwargs = {"data": data, "device": device, "cache": cache, "progress": progress}
    tried, probes = [], []
    for lr in grid:
        runs = []
        for s in seeds:
            run = train(config.replace(lr=lr, seed=s, epochs=probe_epochs or config.epochs),
                        **kwargs)
            probes.append(run)
            runs.append(run)
            if not run.stable:
                break
        stable = len(runs) == len(seeds) and runs[-1].stable
        tried.append((lr, stable))
        if stable:
            if probe_epochs is not None:
                runs = train_seeds(config.replace(lr=lr), seeds, **kwargs)
            return LrSearch(lr, tried, probes, runs)
    return LrSearch(None, tried, probes, [])


def train_seeds(config: TrainConfig, seeds: Iterable[int], **kwargs) -> list[RunResult]:
    """:func:`train` of ``config`` for each seed of ``seeds`` (keyword arguments as :func:`train`)."""
    return [train(config.replace(seed=int(s)), **kwargs) for s in seeds]


@dataclass
class MapEntry:
    """One cell of the training map: a configuration, its learning-rate search and its runs.

    Attributes:
        config: the configuration as given (its ``lr`` and ``seed`` are not used).
        search: the :class:`LrSearch` over the seeds.
    """

    config: TrainConfig
    search: LrSearch

    @property
    def runs(self) -> list[RunResult]:
        """One :class:`RunResult` per seed at ``search.lr`` (empty if no rate was stable)."""
        return self.search.runs


def training_map(
    configs: Iterable[TrainConfig],
    lrs: Sequence[float],
    seeds: Sequence[int] = (0, 1),
    *,
    probe_epochs: int | None = None,
    data: Split | None = None,
    device: torch.device | str | None = None,
    cache: ResultCache | bool | None = True,
    progress: bool | None = None,
    shard: bool | None = None,
    process_group=None,
) -> list[MapEntry]:
    """Figure 1 of :cite:t:`lubana2021beyond`: each configuration at its largest stable rate.

    For each configuration, :func:`largest_stable_lr` over all ``seeds``; the entry keeps the
    runs of every seed at that rate. Keyword arguments as :func:`largest_stable_lr`, and:

    Args:
        shard: ``None`` (default): when ``torch.distributed`` is initialized with more than one
            rank (``torchrun --nproc-per-node K``, on one node or several), rank ``r`` searches
            the configurations ``r, r + K, ...``, stores its runs in the cache, and the entries
            are gathered, so every rank returns the whole map, equal to a one-process run;
            every rank must call it with the same arguments. ``False``: every rank runs every
            configuration. ``True``: shard, and raise without a process group.
        process_group: the ranks that share the configurations (default: the default group).

    Raises:
        ValueError: if ``seeds`` is empty.
    """
    configs = list(configs)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got an empty list")
    store = _as_cache(cache)
    kwargs = {"probe_epochs": probe_epochs, "data": data, "device": device,
              "cache": store if store is not None else False, "progress": progress}

    def search(config: TrainConfig) -> MapEntry:
        return MapEntry(config, largest_stable_lr(config, lrs, seeds, **kwargs))

    def bar(jobs, total):
        return _progress(jobs, total, progress, "training map", leave=True)

    return map_sharded(search, configs, shard=shard, process_group=process_group, bar=bar)


def results_frame(entries: Iterable[MapEntry]):
    """One row per run of a :func:`training_map` (a ``pandas.DataFrame``).

    Columns: ``architecture``, ``norm``, ``batch_size``, ``lr`` (the largest stable base rate,
    ``nan`` if none), ``seed``, ``diverged``, ``initial_loss``, ``final_loss``, ``min_loss``
    (smallest epoch loss), ``test_accuracy``, ``seconds``, ``from_cache``. A configuration
    without a stable rate has one row with ``diverged=True``.
    """
    import pandas as pd

    rows = []
    for e in entries:
        base = {"architecture": e.config.architecture, "norm": e.config.norm,
                "batch_size": e.config.batch_size,
                "lr": e.search.lr if e.search.lr is not None else math.nan}
        if not e.runs:
            rows.append({**base, "seed": math.nan, "diverged": True, "initial_loss": math.nan,
                         "final_loss": math.inf, "min_loss": math.inf,
                         "test_accuracy": math.nan, "seconds": 0.0, "from_cache": False})
        for r in e.runs:
            rows.append({**base, "seed": r.config["seed"], "diverged": r.diverged,
                         "initial_loss": r.initial_loss, "final_loss": r.final_loss,
                         "min_loss": min(r.epoch_loss) if r.epoch_loss else math.inf,
                         "test_accuracy": r.test_accuracy, "seconds": r.seconds,
                         "from_cache": r.from_cache})
    return pd.DataFrame(rows)


def curves_frame(entries: Iterable[MapEntry]):
    """The training curves of a :func:`training_map` in long form (a ``pandas.DataFrame``).

    One row per run and epoch (epoch 0 is the initial loss): ``architecture``, ``norm``,
    ``batch_size``, ``seed``, ``epoch``, ``loss``. Runs that diverged are left out, as in
    Figure 1 of the paper.
    """
    import pandas as pd

    rows = []
    for e in entries:
        for r in e.runs:
            if r.diverged:
                continue
            for epoch, loss in enumerate([r.initial_loss, *r.epoch_loss]):
                rows.append({"architecture": e.config.architecture, "norm": e.config.norm,
                             "batch_size": e.config.batch_size, "seed": r.config["seed"],
                             "epoch": epoch, "loss": loss})
    return pd.DataFrame(rows, columns=["architecture", "norm", "batch_size", "seed", "epoch", "loss"])
