"""normlib._checks: one message format, ValueError for bad values, TypeError for bad types."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from normlib import _checks as C

# "<name> must <requirement>, got <value>" with an optional "; <fix>"
MESSAGE = re.compile(r"^(?P<name>\S+) must (be|have) .+, got .+")

NUMBER_CHECKS = [
    lambda v: C.check_positive_int("n", v),
    lambda v: C.check_nonnegative_int("n", v),
    lambda v: C.check_positive_float("n", v),
    lambda v: C.check_nonnegative_float("n", v),
    lambda v: C.check_eps(v, name="n"),
    lambda v: C.check_momentum(v, name="n", allow_none=False),
    lambda v: C.check_probability("n", v),
    lambda v: C.check_float("n", v, low=-1.0, high=1.0),
]


def _raises_named(call, error):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert MESSAGE.match(message), message
    assert message.startswith("n must"), message
    return message


@pytest.mark.parametrize("check", NUMBER_CHECKS)
@pytest.mark.parametrize("value", [True, False, "1", None, [1], torch.tensor(1.0)])
def test_a_non_number_is_a_type_error_naming_the_argument(check, value):
    _raises_named(lambda: check(value), TypeError)


@pytest.mark.parametrize("check", NUMBER_CHECKS[2:])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, np.float64("nan")])
def test_inf_and_nan_are_refused_where_a_finite_float_is_needed(check, value):
    _raises_named(lambda: check(value), ValueError)


@pytest.mark.parametrize("value", [0, 0.0, -1, math.inf, math.nan, -1e-5])
def test_eps_must_be_finite_and_positive(value):
    message = _raises_named(lambda: C.check_eps(value, name="n"), ValueError)
    assert "e.g. n=1e-05" in message


def test_a_message_says_what_is_wrong_and_how_to_fix_it():
    with pytest.raises(ValueError, match=r"^eps must be a positive float, got inf; use a finite value, "
                                         r"e\.g\. eps=1e-05$"):
        C.check_eps(math.inf)
    with pytest.raises(TypeError, match=r"^num_features must be a positive int, got 2\.5; pass an int, "
                                        r"e\.g\. num_features=1$"):
        C.check_positive_int("num_features", 2.5)
    with pytest.raises(ValueError, match=r"^momentum must be a float in \[0, 1\] or None, got 1\.5"):
        C.check_momentum(1.5)
    with pytest.raises(ValueError, match=r"^weight must have shape \(3,\) \(one entry per channel\), "
                                         r"got \(4,\)$"):
        C.check_per_channel("weight", torch.ones(4), 3)


@given(st.integers(min_value=1, max_value=10**12))
def test_positive_ints_pass_unchanged(n):
    assert C.check_positive_int("n", n) == n
    assert C.check_positive_int("n", np.int64(n)) == n


@given(st.integers(max_value=0))
def test_non_positive_ints_are_value_errors(n):
    _raises_named(lambda: C.check_positive_int("n", n), ValueError)


@given(st.floats(min_value=0.0, max_value=1.0))
def test_momentum_in_the_unit_interval_passes_and_none_means_a_cumulative_average(m):
    assert C.check_momentum(m) == m
    assert C.check_momentum(None) is None
    with pytest.raises(TypeError):
        C.check_momentum(None, allow_none=False)


@given(st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: not 0.0 <= v < 1.0))
def test_a_half_open_interval_refuses_its_upper_end_and_everything_outside(v):
    _raises_named(lambda: C.check_probability("n", v, high_open=True), ValueError)


def test_bools_are_not_numbers_but_are_bools():
    assert C.check_bool("flag", True) is True
    with pytest.raises(TypeError, match="flag must be True or False, got 1"):
        C.check_bool("flag", 1)


def test_choices_dtypes_devices_and_tensors():
    assert C.check_choice("backend", "auto", ("auto", "torch")) == "auto"
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'torch'\), got 'cuda'"):
        C.check_choice("backend", "cuda", ("auto", "torch"))
    with pytest.raises(ValueError, match="backend must be one of"):
        C.check_choice("backend", ["unhashable"], {"auto": 1})
    assert C.check_dtype("dtype", torch.float16, floating=True) is torch.float16
    with pytest.raises(ValueError, match="dtype must be a floating-point torch.dtype"):
        C.check_dtype("dtype", torch.int64, floating=True)
    with pytest.raises(TypeError, match="dtype must be a torch.dtype"):
        C.check_dtype("dtype", "float32")
    assert C.check_device("device", "cpu") == torch.device("cpu")
    assert C.check_device("device", None) is None
    with pytest.raises(ValueError, match="device must be a torch.device"):
        C.check_device("device", "not-a-device")
    with pytest.raises(TypeError, match="device must be a torch.device"):
        C.check_device("device", True)
    with pytest.raises(TypeError, match="x must be a floating-point torch.Tensor, got dtype torch.int64"):
        C.check_tensor("x", torch.ones(2, dtype=torch.int64), floating=True)
    with pytest.raises(ValueError, match=r"x must be a 2-dim tensor, got shape \(2,\)"):
        C.check_tensor("x", torch.ones(2), ndim=2)
    with pytest.raises(TypeError, match="model must be an nn.Module, got int"):
        C.check_module("model", 3)
    with pytest.raises(TypeError, match="loss_fn must be callable, got int"):
        C.check_callable("loss_fn", 3)
    with pytest.raises(ValueError, match="mode must be 'train'"):
        C.check_mode("test")


def test_ints_with_bounds_and_none():
    assert C.check_int("k", 3, minimum=1, maximum=3) == 3
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 3\], got 4"):
        C.check_int("k", 4, minimum=1, maximum=3)
    assert C.check_positive_int("num_groups", None, allow_none=True) is None
    with pytest.raises(ValueError, match=r"num_groups must be a positive int or None \(None: one group"):
        C.check_positive_int("num_groups", 0, allow_none=True, meaning="None: one group per channel")
