"""Tests of normlib.analysis.stochasticity: the stochastic normalization disturbance (SND)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from analysis_problems import (
    DT,
    _correlated,
    _nearly_isotropic,
)

import normlib  # noqa: F401  (fills the registry)
from normlib import analysis as A

pytestmark = pytest.mark.usefixtures("one_thread")


def test_empirical_snd_is_the_mean_distance_from_the_mean_output():
    out = torch.tensor([[0.0, 0.0], [2.0, 0.0], [4.0, 3.0]], dtype=DT)
    centre = out.mean(0)
    expected = sum(float((o - centre).norm()) for o in out) / 3
    assert math.isclose(A.empirical_snd(out), expected, rel_tol=1e-15)


def test_normalize_in_batches_of_the_whole_data_is_batch_norm_and_zca_of_the_data():
    data = _correlated(m=50)
    out = A.normalize_in_batches(data, 7, 50, num_batches=3)
    ref = F.batch_norm(data, None, None, training=True, eps=1e-5)[7]  # torch's BN as the oracle
    torch.testing.assert_close(out, ref.expand(3, -1), rtol=1e-10, atol=1e-12)
    centred = data - data.mean(0)
    evals, evecs = torch.linalg.eigh(centred.T @ centred / 50 + 1e-5 * torch.eye(4, dtype=DT))
    zca = evecs @ torch.diag(evals.rsqrt()) @ evecs.T @ centred[7]  # D Lambda^-1/2 D^T (x - mu)
    out = A.normalize_in_batches(data, 7, 50, method="zca", num_batches=2)
    torch.testing.assert_close(out, zca.expand(2, -1), rtol=1e-8, atol=1e-10)


def test_snd_is_zero_when_every_batch_is_the_whole_data():
    est = A.stochastic_normalization_disturbance(_correlated(m=40), 40, method="cd", num_batches=5)
    assert est.value < 1e-10  # rounding only: every batch has the same statistics


@pytest.mark.parametrize("method", ["bn", "zca", "cd", "iternorm"])
def test_snd_falls_as_inverse_square_root_of_batch_size(method):
    kw = {"num_samples": 16, "num_batches": 50}
    small = A.stochastic_normalization_disturbance(_correlated(), 16, method=method, **kw)
    large = A.stochastic_normalization_disturbance(_correlated(), 64, method=method, **kw)
    # 1/sqrt(4) = 0.5 (times the finite-population factor 0.99); sampling noise: +-0.12
    assert 0.38 < large.value / small.value < 0.62, (small.value, large.value)


def test_snd_of_batch_norm_sweep_has_log_log_slope_minus_one_half():
    sweep = A.snd_sweep(_correlated(), [8, 16, 32, 64, 128], ["bn"], num_samples=16, num_batches=50)
    assert abs(sweep.slope("bn") + 0.5) < 0.1, sweep.values  # slope -1/2 +- 0.1


def test_pca_snd_does_not_fall_with_batch_size_on_nearly_equal_eigenvalues():
    data = _nearly_isotropic()
    sweep = A.snd_sweep(data, [16, 64], ["bn", "pca", "zca"], num_samples=16, num_batches=50)
    bn, pca, zca = sweep.values
    # PCA's axes swap and flip from batch to batch: its SND stays (ratio > 0.8) ...
    assert pca[1] / pca[0] > 0.8, pca
    # ... and is several times that of BN and ZCA at the larger batch
    assert pca[1] > 3 * zca[1] and pca[1] > 3 * bn[1], sweep.values


def test_snd_with_same_seed_is_reproducible():
    data = _correlated(m=300)
    a = A.stochastic_normalization_disturbance(data, 16, method="zca", num_batches=10, seed=4)
    b = A.stochastic_normalization_disturbance(data, 16, method="zca", num_batches=10, seed=4)
    assert torch.equal(a.per_sample, b.per_sample)


def test_snd_with_same_seed_normalizes_the_same_batches_for_every_method(monkeypatch):
    data = _correlated(m=300)
    seen = {}
    from normlib.analysis import stochasticity

    normalize = stochasticity._normalize_batches

    def recording(batches, method, eps, iterations):
        seen.setdefault(method, []).append(batches.clone())
        return normalize(batches, method, eps, iterations)

    monkeypatch.setattr(stochasticity, "_normalize_batches", recording)
    for method in ["bn", "zca", "pca", "cd", "iternorm"]:
        A.stochastic_normalization_disturbance(data, 16, method=method, num_batches=10, seed=4)
    A.stochastic_normalization_disturbance(data, 16, method="bn", num_batches=10, seed=5)
    batches = {m: torch.cat(v) for m, v in seen.items()}
    assert len(batches) == 5 and len(seen["bn"]) == 2
    reference = seen["bn"][0]
    for method, recorded in seen.items():
        assert torch.equal(recorded[0], reference), method
    assert not torch.equal(seen["bn"][1], reference)  # another seed, other batches


def test_snd_rejects_bad_arguments():
    data = _correlated(m=100)
    with pytest.raises(ValueError, match="batch_size=101 is larger than the data"):
        A.stochastic_normalization_disturbance(data, 101)
    with pytest.raises(ValueError, match="unknown normalization method 'svd'"):
        A.stochastic_normalization_disturbance(data, 16, method="svd")
    with pytest.raises(ValueError, match="needs batch_size > 4"):
        A.stochastic_normalization_disturbance(data, 4, method="zca")
    with pytest.raises(ValueError, match="num_samples=200 is larger"):
        A.stochastic_normalization_disturbance(data, 16, num_samples=200)
    with pytest.raises(ValueError, match="batch_size must be an int >= 2"):
        A.snd_sweep(data, [1, 16])
    with pytest.raises(TypeError, match="data must be a torch.Tensor"):
        A.stochastic_normalization_disturbance([[1.0]], 2)
    assert A.stochastic_normalization_disturbance(data, 16, method="cholesky", num_batches=4).method == "cd"
