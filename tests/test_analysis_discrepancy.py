"""Tests of normlib.analysis.discrepancy: the gap between training and inference outputs."""

from __future__ import annotations

import pytest
from analysis_problems import (
    _correlated,
)

import normlib  # noqa: F401  (fills the registry)
from normlib import analysis as A

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_inference_discrepancy_falls_with_batch_size_and_running_estimate_is_close():
    data = _correlated()
    small = A.train_inference_discrepancy(data, 16, momentum=None, num_updates=200, num_samples=16)
    large = A.train_inference_discrepancy(data, 64, momentum=None, num_updates=200, num_samples=16)
    # the training output scatters around the inference output like the SND: about 1/sqrt(4)
    assert 0.35 < large.train_vs_eval / small.train_vs_eval < 0.65, (small, large)
    # a cumulative average over 200 batches (3200 or 12800 samples, expected error about
    # 0.03 or less) is far closer to the population than one batch is
    for r in (small, large):
        assert r.eval_vs_population < 0.3 * r.train_vs_population, r


def test_short_running_average_is_further_from_the_population_than_a_cumulative_one():
    data = _correlated()
    errors = {mom: [A.train_inference_discrepancy(data, 64, momentum=mom, num_updates=100,
                                                  num_samples=4, num_batches=2, seed=s).eval_vs_population
                    for s in range(3)]
              for mom in (None, 0.5)}
    # momentum 0.5 averages about 2 batches against 100: errors about 7x larger; mean of 3 seeds
    assert sum(errors[0.5]) > 2.5 * sum(errors[None]), errors


def test_averaged_whitening_matrices_are_biased_where_averaged_covariances_are_not():
    data = _correlated()
    kw = {"momentum": None, "num_updates": 200, "num_samples": 16, "num_batches": 2}
    by_matrix = A.train_inference_discrepancy(data, 16, method="zca", **kw)
    by_cov = A.train_inference_discrepancy(data, 16, method="zca",
                                           layer_kwargs={"running_stat": "covariance"}, **kw)
    # B = 16, d = 4: E[Sigma_B^(-1/2)] is far from Sigma^(-1/2) (measured 0.34 vs 0.04)
    assert by_matrix.eval_vs_population > 4 * by_cov.eval_vs_population, (by_matrix, by_cov)
    assert by_cov.eval_vs_population < 0.1, by_cov


def test_train_inference_discrepancy_rejects_bad_momentum():
    with pytest.raises(ValueError, match=r"momentum must be a float in \(0, 1\]"):
        A.train_inference_discrepancy(_correlated(m=100), 16, momentum=1.5)
