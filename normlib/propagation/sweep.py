"""Sweeps: run the probes over a grid of configurations and collect one tidy table.

A sweep is a grid (``{"norm": [...], "depth": [...], "seed": [0, 1, 2]}``), a
function that builds the model for one configuration and a function that
makes its inputs. Every combination is probed with :func:`~normlib.propagation.probe.probe`
and the rows are stacked into one ``pandas.DataFrame`` whose first columns are
the grid's keys: one row per configuration and probed layer, ready for
``groupby`` and plotting. A progress bar (tqdm) counts the configurations.

Seeding makes configurations comparable: the inputs are drawn from a
generator seeded by ``seed`` alone and the model from one seeded by ``seed``
and a different salt, so for one seed every normalizer sees the same inputs,
and models that differ only in their normalizer start from the same weights.
Without a ``"seed"`` key the seed is 0.

Under ``torchrun --nproc-per-node K`` (an initialized ``torch.distributed`` process group),
every rank probes a share of the configurations (round-robin by index) and every rank returns
the whole table, equal to the table of one process (see
:func:`normlib.distributed.sharding.map_sharded`); without a process group nothing changes.

Used by chapters "Stable forward propagation", "Informative forward
propagation" and "Stable backward propagation".

Example:
    >>> import torch
    >>> from normlib.models import MLP
    >>> from normlib.propagation import sweep
    >>> table = sweep(
    ...     lambda norm, depth, seed: MLP(8, 2, width=16, depth=depth, norm=norm),
    ...     {"norm": ["bn", "ln"], "depth": [2, 3], "seed": [0]},
    ...     lambda **config: torch.randn(6, 8),
    ...     progress=False)
    >>> len(table), list(table.columns[:5])      # 2 norms x (3 + 4 rows: input and layers)
    (14, ['norm', 'depth', 'seed', 'layer', 'name'])
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from normlib._checks import check_nonnegative_int
from normlib.device import seed_everything
from normlib.distributed.sharding import map_sharded
from normlib.propagation.probe import probe

__all__ = ["sweep", "grid_configurations", "derived_seed", "growth_rate"]

_SALTS = {"inputs": 1, "model": 2}


def derived_seed(seed: int, purpose: str) -> int:
    """The seed a sweep uses for ``purpose`` (``"inputs"`` or ``"model"``) of configuration ``seed``.

    Distinct purposes get distinct streams: seeding inputs and weights with the
    same number would make the first weights copies of the first inputs.

    Example:
        >>> derived_seed(0, "inputs") != derived_seed(0, "model")
        True
    """
    check_nonnegative_int("seed", seed)
    if purpose not in _SALTS:
        raise ValueError(f"purpose must be one of {sorted(_SALTS)}, got {purpose!r}")
    return (seed * 1_000_003 + _SALTS[purpose]) % (2**63 - 1)


def grid_configurations(grid: Mapping[str, list]) -> list[dict]:
    """All combinations of a grid, in row-major order (the last key varies fastest).

    Raises:
        TypeError: if ``grid`` is not a mapping from names to lists.
        ValueError: if it is empty or a key has no values.

    Example:
        >>> grid_configurations({"norm": ["bn", "ln"], "seed": [0, 1]})[1]
        {'norm': 'bn', 'seed': 1}
    """
    if not isinstance(grid, Mapping):
        raise TypeError(f"grid must be a dict of name -> list of values, got {type(grid).__name__}")
    if not grid:
        raise ValueError("grid is empty; give at least one key, e.g. {'seed': [0]}")
    for key, values in grid.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"grid keys must be identifiers (they become keyword arguments), got {key!r}")
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise TypeError(f"grid[{key!r}] must be a list of values, got {values!r}")
        if len(list(values)) == 0:
            raise ValueError(f"grid[{key!r}] is empty; give at least one value")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(list(grid[k]) for k in keys))]


def sweep(
    make_model: Callable[..., torch.nn.Module],
    grid: Mapping[str, list],
    make_inputs: Callable[..., object],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    desc: str = "probing",
    shard: bool | None = None,
    process_group=None,
    **probe_kwargs,
) -> pd.DataFrame:
    """Probe every configuration of ``grid``; return one tidy table.

    Args:
        make_model: ``make_model(**config) -> nn.Module``, called with one combination
            of the grid's values as keyword arguments.
        grid: ``{name: [values]}``; all combinations are run.
        make_inputs: ``make_inputs(**config)`` returning what
            :func:`~normlib.propagation.probe.probe` takes as ``inputs``: a tensor ``(N, *)``,
            or a list of tensors or ``(x, y)`` pairs.
        device: where to run (default CPU); inputs are moved there.
        dtype: cast the model and floating point inputs to this dtype (e.g. ``torch.float64``).
        progress: show a progress bar.
        desc: the progress bar's label.
        shard: ``None`` (default): when ``torch.distributed`` is initialized with more than
            one rank, each rank probes the configurations ``rank, rank + K, ...`` and the
            tables are gathered, so every rank returns the full table, equal to a one-process
            run; every rank must then call :func:`sweep` with the same grid. ``False``: every
            rank runs the whole grid. ``True``: shard, and raise without a process group.
        process_group: the ranks that share the grid (default: the default group).
        **probe_kwargs: passed to :func:`~normlib.propagation.probe.probe` (``at``, ``mode``,
            ``backward``, ``loss_fn``, ``include_input``, ``rtol``).

    Returns:
        pandas.DataFrame: the grid's keys, then :func:`~normlib.propagation.probe.probe`'s columns.

    Raises:
        TypeError: if ``make_model`` or ``make_inputs`` is not callable or a model is
            not an ``nn.Module``.
        ValueError: for a malformed grid (see :func:`grid_configurations`) or a probe error.
    """
    if not callable(make_model) or not callable(make_inputs):
        raise TypeError("make_model and make_inputs must be callables taking the grid's keys")
    configs = grid_configurations(grid)
    device = torch.device(device) if device is not None else torch.device("cpu")

    def run(config: dict) -> pd.DataFrame:
        seed = config.get("seed", 0)
        seed_everything(derived_seed(seed, "inputs"))
        inputs = _to(make_inputs(**config), device, dtype)
        seed_everything(derived_seed(seed, "model"))
        model = make_model(**config)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"make_model returned {type(model).__name__}, not an nn.Module")
        model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
        table = probe(model, inputs, **probe_kwargs)
        for i, (key, value) in enumerate(config.items()):
            table.insert(i, key, [value] * len(table))
        return table

    def bar(jobs, total):
        return tqdm(jobs, total=total, desc=desc, disable=not progress)

    tables = map_sharded(run, configs, shard=shard, process_group=process_group, bar=bar)
    return pd.concat(tables, ignore_index=True)


def _to(inputs, device, dtype):
    def move(t):
        if not isinstance(t, torch.Tensor):
            return t
        t = t.to(device)
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    if isinstance(inputs, torch.Tensor):
        return move(inputs)
    if isinstance(inputs, (list, tuple)):
        return [tuple(move(t) for t in item) if isinstance(item, (tuple, list)) else move(item)
                for item in inputs]
    return inputs


def growth_rate(
    table: pd.DataFrame,
    column: str = "grad_norm",
    *,
    by: str | Sequence[str] | None = None,
    first: int = 1,
    last: int | None = None,
    squared: bool = True,
) -> float | pd.Series:
    r"""Per-layer growth factor of a statistic towards the input, from a probe or sweep table.

    For the layers :math:`l = \text{first}, \dots, \text{last}` of each group the factor is
    the geometric mean of :math:`(v_l / v_{l+1})^2` (or of :math:`v_l / v_{l+1}` with
    ``squared=False``): for gradient norms, how much the squared norm grows per layer
    on its way back to the input, the quantity of
    :func:`normlib.propagation.theory.bn_gradient_explosion_rate`.

    Args:
        table: a table of :func:`~normlib.propagation.probe.probe` or :func:`sweep`.
        column: the statistic (default ``"grad_norm"``).
        by: grid keys to group by (one factor per group); ``None``: the table is one network.
        first: first layer of the range (skip layers near the input here).
        last: last layer of the range; default the deepest layer (skip layers near the
            output by passing a smaller value).
        squared: ratio of squares (default) or of the values.

    Returns:
        float, or pandas.Series indexed by the ``by`` keys.

    Raises:
        ValueError: for a missing column, fewer than two layers in range, or values
            that are not positive and finite.

    Example:
        >>> t = pd.DataFrame({"layer": [1, 2, 3], "grad_norm": [4.0, 2.0, 1.0]})
        >>> growth_rate(t)
        4.0
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(
            f"table must be a pandas DataFrame from probe() or sweep(), got {type(table).__name__}"
        )
    keys = [] if by is None else ([by] if isinstance(by, str) else list(by))
    for name in [column, "layer", *keys]:
        if name not in table.columns:
            raise ValueError(f"table has no column {name!r}; columns: {list(table.columns)}")

    def factor(group: pd.DataFrame) -> float:
        upper = group["layer"].max() if last is None else last
        rows = group[(group["layer"] >= first) & (group["layer"] <= upper)].sort_values("layer")
        values = rows[column].to_numpy(dtype=np.float64)
        if len(values) < 2:
            raise ValueError(f"layers {first}..{upper} hold fewer than two rows; widen first/last")
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise ValueError(f"{column} must be positive and finite on layers {first}..{upper}")
        logs = np.log(values[:-1] / values[1:]) * (2.0 if squared else 1.0)
        return math.exp(float(np.mean(logs)))

    if not keys:
        return factor(table)
    groups = table.groupby(keys if len(keys) > 1 else keys[0], sort=False)
    names, values = zip(*[(name, factor(group)) for name, group in groups])
    index = (pd.MultiIndex.from_tuples(names, names=keys) if len(keys) > 1
             else pd.Index(names, name=keys[0]))
    return pd.Series(values, index=index, name=f"{column}_growth")
