"""Tests of normlib.analysis.invariance: the invariance table against entries derived by hand."""

from __future__ import annotations

import pytest
import torch
from analysis_problems import (
    _assert_same_state,
    _mlp,
    _state,
    _x,
)

import normlib  # noqa: F401  (fills the registry)
from normlib import analysis as A

pytestmark = pytest.mark.usefixtures("one_thread")


T = list(A.TRANSFORMS)


# Expected entries, derived by hand for y = N(W x) on x: (N, C_in, P) with P = 4 positions:
# BN pools over (N, P) per channel, LN over (C, P) per sample, IN over P per sample and channel,
# GN over (C/G, P); WN normalizes each row of W, WS standardizes each row of W.
#          w-rescale w-recenter row-rescale d-rescale d-recenter sample-rescale
EXPECTED = {
    "bn": [True, False, True, True, True, False],
    "ln": [True, False, False, True, False, True],
    "in": [True, False, True, True, True, True],
    "gn": [True, False, False, True, False, True],
    "wn": [True, False, True, False, False, False],
    "ws": [True, False, True, False, False, False],
}


@pytest.mark.parametrize("norm", list(EXPECTED))
@pytest.mark.parametrize("j,transform", list(enumerate(T)))
def test_invariance_table_entry(norm, j, transform):
    kw = {"num_groups": 2} if norm == "gn" else None
    err = A.invariance_error(norm, transform, norm_kwargs=kw)
    # invariant: rounding plus eps = 1e-10 effects (< 1e-6); not invariant: order 1 (> 1e-2)
    if EXPECTED[norm][j]:
        assert err < 1e-6, (norm, transform, err)
    else:
        assert err > 1e-2, (norm, transform, err)


def test_invariance_table_decides_like_the_entries():
    table = A.invariance_table(list(EXPECTED))
    assert table.transforms == T
    assert table.as_dict() == {n: dict(zip(T, row)) for n, row in EXPECTED.items()}
    # the decision does not hinge on tol: a gap of at least 1e4 between the two classes
    inv = table.invariant
    assert float(table.errors[~inv].min()) > 1e4 * float(table.errors[inv].max())


def test_layer_and_group_norm_are_invariant_to_weight_recentering_only_for_feature_vectors():
    # One position per sample: W -> W + 1 c^T shifts every channel of a sample equally.
    for norm, kw in (("ln", None), ("gn", {"num_groups": 2})):
        assert A.invariance_error(norm, "weight_recentering", spatial_size=1, norm_kwargs=kw) < 1e-6
        assert A.invariance_error(norm, "weight_recentering", spatial_size=4, norm_kwargs=kw) > 1e-2


def test_group_norm_with_one_channel_per_group_is_instance_norm_in_the_table():
    row = [A.invariance_error("gn", t, norm_kwargs={"num_groups": 8}) < 1e-6 for t in T]
    assert row == EXPECTED["in"]


def test_invariance_error_raises_when_the_output_is_rounding_noise():
    with pytest.raises(ValueError, match="zero up to rounding"):
        A.invariance_error("in", "data_rescaling", spatial_size=1)


def test_invariance_table_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown transform 'shear'"):
        A.invariance_table(["bn"], ["shear"])
    with pytest.raises(ValueError, match="unknown normalizer 'batchy'"):
        A.invariance_error("batchy", "data_rescaling")


def test_scale_invariant_parameters_are_the_weights_in_front_of_batch_norm():
    net = _mlp("bn", eps=1e-5)
    with torch.no_grad():  # non-zero BN shifts: the gains are no longer invariant
        for layer in net.layers:
            layer[1].bias.normal_()
    state = _state(net)
    names = A.scale_invariant_parameters(net, _x())
    assert names == ["layers.0.0.weight", "layers.1.0.weight", "layers.2.0.weight"]
    assert A.scale_invariant_parameters(_mlp(None), _x()) == []
    _assert_same_state(net, state)


def test_invariance_table_accepts_every_registered_weight_normalizer():
    from normlib.registry import _WEIGHT

    # One name per weight normalizer (the registry also holds aliases).
    names = sorted({fn: name for name, fn in _WEIGHT.items()}.values())
    assert {"wn", "own", "oni", "sn", "normprop"} <= {n for n in _WEIGHT}
    table = A.invariance_table(names)
    assert table.errors.shape[0] == len(names) >= 8 and torch.isfinite(table.errors).all()
