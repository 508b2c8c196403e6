"""Fuzzing: every registered normalizer and the public tools under adversarial input.

Hypothesis draws shapes (empty batches, one sample, wrong channel counts, up to three
spatial dimensions), dtypes (float16, bfloat16, float32, float64, integers), values (tiny,
huge, NaN, inf), memory layouts (channels-last, non-contiguous) and arguments (non-finite,
negative, boolean, string). Only two outcomes are accepted:

* a correct result: the input's shape and dtype, finite wherever the input was finite and
  representable, and the layer's buffers unchanged in evaluation mode; or
* a ``ValueError``/``TypeError`` whose message names the offending argument (and then no
  buffer changed).

Any other exception, a silent NaN from finite input, or a changed buffer after an error is a
failure. ``FUZZ_EXAMPLES`` examples per test; the module runs in about a minute on two cores.
"""

from __future__ import annotations

import math
import re
import warnings

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normlib.registry import available_norms, create_norm

FUZZ_EXAMPLES = 150
SETTINGS = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
WEIGHT_NORMS = {"wn", "cwn", "own", "oni", "ws", "sws", "sn", "normprop"}
NORMS = [n for n in available_norms() if n not in WEIGHT_NORMS and n != "none"]
GROUPED = {"gn", "bgn", "gw"}
C = 8

BAD_FLOATS = [math.inf, -math.inf, math.nan, -1.0, 0.0, True, "1e-5", None]
ARG_VALUES = {
    "eps": st.one_of(st.sampled_from(BAD_FLOATS), st.floats(1e-12, 1.0)),
    "momentum": st.one_of(st.sampled_from([math.nan, math.inf, -0.1, 1.5, True, "0.1", None]),
                          st.floats(0.0, 1.0)),
    "affine": st.sampled_from([True, False, 1, "yes", None]),
}


def _names_argument(err: Exception, names) -> bool:
    msg = str(err)
    return any(re.search(rf"\b{re.escape(n)}\b", msg) for n in names)


def _state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _changed(m, before):
    after = m.state_dict()
    return [k for k in before if not torch.equal(after[k], before[k])
            and not (after[k].is_floating_point() and torch.equal(after[k].isnan(), before[k].isnan())
                     and torch.equal(after[k].nan_to_num(), before[k].nan_to_num()))]


def _build(name, kwargs):
    kw = dict(kwargs)
    if name in GROUPED:
        kw.setdefault("num_groups", 2)
    return create_norm(name, C, **kw)


@SETTINGS
@given(name=st.sampled_from(NORMS), data=st.data())
def test_constructor_arguments_are_accepted_or_refused_by_name(name, data):
    chosen = {}
    for arg, strategy in ARG_VALUES.items():
        if data.draw(st.booleans(), label=f"set {arg}"):
            chosen[arg] = data.draw(strategy, label=arg)
    try:
        layer = _build(name, chosen)
    except (ValueError, TypeError) as err:
        # Either a named argument was wrong, or the layer does not take it.
        assert _names_argument(err, list(chosen) + ["num_groups"]), (name, chosen, err)
        return
    eps = chosen.get("eps", 1e-5)
    if "eps" in chosen and eps is not None:
        assert isinstance(eps, float) and math.isfinite(eps) and eps > 0, (name, chosen)
    m = chosen.get("momentum", 0.1)
    if "momentum" in chosen and m is not None and hasattr(layer, "momentum"):
        assert not isinstance(m, bool) and isinstance(m, float) and 0.0 <= m <= 1.0, (name, chosen)


DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@st.composite
def inputs(draw):
    n = draw(st.sampled_from([0, 1, 2, 3, 8, 17]))
    c = draw(st.sampled_from([C, C, C, C - 1, C + 2]))
    spatial = tuple(draw(st.lists(st.integers(1, 5), min_size=0, max_size=3)))
    dtype = draw(st.sampled_from(DTYPES + [torch.int64]))
    scale = draw(st.sampled_from([1e-30, 1e-4, 1.0, 1.0, 1e3, 1e30]))
    shift = draw(st.sampled_from([0.0, 0.0, 5.0, -1e4]))
    special = draw(st.sampled_from([None, None, None, math.nan, math.inf]))
    layout = draw(st.sampled_from(["contiguous", "channels_last", "strided"]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, c, *spatial), generator=g, dtype=torch.float64) * scale + shift
    if special is not None and x.numel():
        x.view(-1)[seed % x.numel()] = special
    x = x.round() if dtype == torch.int64 else x
    x = x.to(dtype)
    if layout == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided" and x.dim() >= 3:
        x = torch.cat([x, x], dim=-1)[..., ::2]
    return x, special is None and math.isfinite(scale * 10) and dtype != torch.int64


@SETTINGS
@given(name=st.sampled_from(NORMS), x_info=inputs(), training=st.booleans())
def test_forward_gives_a_correct_result_or_a_clear_error(name, x_info, training):
    x, finite_input = x_info
    torch.manual_seed(0)
    layer = _build(name, {}).train(training)
    if x.is_floating_point() and x.dtype != torch.float32:
        layer = layer.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    before = _state(layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            y = layer(x)
        except (ValueError, TypeError) as err:
            assert _names_argument(err, ["x", "input", "num_features", "channels", "batch",
                                         "normalized_shape", "samples", "dtype", "whiten",
                                         "running", "overflows"]), (name, tuple(x.shape), err)
            assert _changed(layer, before) == [], (name, "a refused input changed buffers")
            return
    assert y.shape == x.shape and y.dtype == x.dtype, (name, tuple(x.shape), y.shape, y.dtype)
    if not training:
        assert _changed(layer, before) == [], (name, "evaluation changed buffers")
    rep_ok = x.dtype in (torch.float32, torch.float64) and float(x.abs().max() if x.numel() else 0) < 1e15
    if finite_input and rep_ok and x.numel():
        assert torch.isfinite(y).all(), (name, tuple(x.shape), x.dtype)


def _finite(v, low=-math.inf, high=math.inf, low_open=False):
    return isinstance(v, float) and math.isfinite(v) and (v > low if low_open else v >= low) and v <= high


def _tool_cases():
    """name -> (call on a list of floats, argument names an error may name, when it may accept)."""
    from normlib.analysis import equilibrium_angular_update, equilibrium_norm
    from normlib.diagnose import Thresholds, spearman
    from normlib.hessian import condition_number, learning_rate_thresholds
    from normlib.optim import LAMB, LARS

    p = [torch.nn.Parameter(torch.ones(2))]
    return {
        "condition_number": (lambda v: condition_number(torch.tensor(v, dtype=torch.float64)),
                             ["source", "eigenvalue", "eigenvalues", "rtol"],
                             lambda v: not any(math.isnan(a) for a in v)),
        "learning_rate_thresholds": (lambda v: learning_rate_thresholds(v[0]), ["lambda_max"],
                                     lambda v: _finite(v[0], 0.0, low_open=True)),
        "Thresholds": (lambda v: Thresholds(explosion_ratio=v[0]), ["explosion_ratio"],
                       lambda v: _finite(v[0], 0.0, low_open=True)),
        "equilibrium_norm": (lambda v: equilibrium_norm(v[0], abs(v[-1]), 1.0),
                             ["lr", "weight_decay", "unit_grad_norm"],
                             lambda v: _finite(v[0], 0.0, low_open=True)
                             and _finite(abs(v[-1]), 0.0, low_open=True)),
        "equilibrium_angular_update": (lambda v: equilibrium_angular_update(v[0], 0.1),
                                       ["lr", "weight_decay", "momentum"],
                                       lambda v: _finite(v[0], 0.0, low_open=True)),
        # documented: inf ranks last, and a constant sequence has no correlation (nan)
        "spearman": (lambda v: spearman(v, list(range(len(v)))), ["x", "y"],
                     lambda v: len(v) >= 3 and not any(math.isnan(a) for a in v)),
        "LARS": (lambda v: LARS(p, lr=v[0]), ["lr"], lambda v: _finite(v[0], 0.0)),
        "LAMB": (lambda v: LAMB(p, lr=v[0]), ["lr"], lambda v: _finite(v[0], 0.0)),
    }


TOOL_VALUES = st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                 st.sampled_from([0.0, 1.0, -1.0])), min_size=1, max_size=6)


@SETTINGS
@given(tool=st.sampled_from(sorted(_tool_cases())), values=TOOL_VALUES)
def test_public_tools_give_a_finite_answer_or_refuse_by_name(tool, values):
    fn, names, may_accept = _tool_cases()[tool]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = fn(values)
        except (ValueError, TypeError) as err:
            assert _names_argument(err, names), (tool, values, err)
            return
    assert may_accept(values), (tool, values, "accepted an argument it should refuse")
    numbers = []
    if isinstance(out, (int, float)):
        numbers = [float(out)]
    elif hasattr(out, "__dataclass_fields__"):
        numbers = [float(getattr(out, f)) for f in out.__dataclass_fields__
                   if isinstance(getattr(out, f), (int, float))]
    constant = tool == "spearman" and len(set(values)) == 1
    for v in numbers:
        assert not math.isnan(v) or constant, (tool, values, out)
