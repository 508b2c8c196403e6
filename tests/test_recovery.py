"""normlib.recovery against torch's BatchNorm/InstanceNorm and reference formulas written here.

Tolerances: float64 comparisons use ``atol=1e-10`` (only the order of the
reductions differs). AdaIN's output standard deviation differs from the
target by the exact factor ``sigma_x / sqrt(sigma_x^2 + eps)``, which the
test states. Gradients: ``torch.autograd.gradcheck`` with its float64 defaults.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normlib
from normlib import recovery as R
from normlib.framework import BATCH, GROUP, INSTANCE, LAYER, Standardize, normalize

DT = torch.float64
TOL = {"atol": 1e-10, "rtol": 1e-10}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny float64 problems: a second thread only adds wake-up latency on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def maps(shape, seed=0, scale=2.0, shift=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=DT) * scale + shift


def randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.5 + (1 if p.dim() > 1 else 0))
    return module


# --------------------------------------------------------------------------- SampleAffine


@pytest.mark.parametrize("partition", [BATCH, LAYER, INSTANCE, GROUP(2)], ids=lambda p: p.name)
@pytest.mark.parametrize("param_shape", ["channel", "sample", "position"])
def test_sample_affine_recovery_equals_scaling_the_normalized_tensor(partition, param_shape):
    x = maps((3, 4, 5, 5))
    shape = {"channel": (4,), "sample": (3, 4), "position": (3, 4, 5, 5)}[param_shape]
    gamma, beta = maps(shape, seed=1), maps(shape, seed=2)
    xhat = normalize(x, partition, Standardize())
    broadcast = {"channel": (1, 4, 1, 1), "sample": (3, 4, 1, 1), "position": (3, 4, 5, 5)}[param_shape]
    y = normalize(x, partition, Standardize(), R.SampleAffine(gamma, beta))
    torch.testing.assert_close(y, xhat * gamma.reshape(broadcast) + beta.reshape(broadcast), **TOL)
    torch.testing.assert_close(R.sample_affine(xhat, gamma, beta), y, **TOL)


def test_sample_affine_with_a_leading_one_broadcasts_over_the_batch():
    xhat, gamma = maps((3, 4, 5)), maps((1, 4), seed=1)
    torch.testing.assert_close(R.sample_affine(xhat, gamma), xhat * gamma.reshape(1, 4, 1), **TOL)


def test_sample_affine_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"weight has shape \(3, 5\) but the input has shape \(3, 4, 5\)"):
        R.sample_affine(maps((3, 4, 5)), maps((3, 5)))
    with pytest.raises(TypeError, match="bias must be a torch.Tensor"):
        R.sample_affine(maps((3, 4, 5)), None, [1.0] * 4)


# --------------------------------------------------------------------------- AdaIN


def test_adain_output_carries_exactly_the_target_statistics():
    content, style, eps = maps((2, 3, 6, 6)), maps((2, 3, 4, 4), seed=1, scale=3.0, shift=-2.0), 1e-5
    y = R.adain(content, style, eps=eps)
    mu_y, sd_y = style.mean((2, 3)), style.std((2, 3), correction=0)
    sd_x = content.std((2, 3), correction=0)
    torch.testing.assert_close(y.mean((2, 3)), mu_y, **TOL)
    # the content is divided by sqrt(sigma_x^2 + eps): the exact output std
    torch.testing.assert_close(y.std((2, 3), correction=0), sd_y * sd_x / (sd_x**2 + eps).sqrt(), **TOL)
    relative = ((y.std((2, 3), correction=0) - sd_y) / sd_y).abs().max()
    assert float(relative) <= eps / (2 * float(sd_x.min()) ** 2)


def test_adain_equals_instance_norm_of_the_content_scaled_by_the_style_statistics():
    content, style = maps((2, 3, 6, 6)), maps((1, 3, 4, 4), seed=1, scale=3.0)
    y = R.adain(content, style, eps=1e-5)
    xhat = F.instance_norm(content, eps=1e-5)
    expected = xhat * style.std((2, 3), correction=0)[..., None, None] + style.mean((2, 3))[..., None, None]
    torch.testing.assert_close(y, expected, **TOL)
    stats = R.instance_statistics(style)
    torch.testing.assert_close(R.adain(content, style_mean=stats[0][0], style_std=stats[1][0]), y, **TOL)
    torch.testing.assert_close(R.AdaIN()(content, style), y, **TOL)


def test_adain_gradcheck():
    content = maps((2, 2, 3, 3)).requires_grad_()
    style = maps((2, 2, 3, 3), seed=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda c, s: R.adain(c, s), (content, style))


def test_adain_rejects_mismatched_styles():
    with pytest.raises(ValueError, match="style needs the same channels"):
        R.adain(maps((2, 3, 4, 4)), maps((2, 4, 4, 4)))
    with pytest.raises(ValueError, match="style needs the same channels and a batch of 1"):
        R.adain(maps((2, 3, 4, 4)), maps((3, 3, 4, 4)))
    with pytest.raises(ValueError, match="not both"):
        R.adain(maps((2, 3, 4, 4)), maps((2, 3, 4, 4)), style_mean=torch.zeros(3))
    with pytest.raises(ValueError, match="pass a style tensor"):
        R.adain(maps((2, 3, 4, 4)), style_mean=torch.zeros(3))
    with pytest.raises(ValueError, match=r"style_std has shape \(2, 3, 1\)"):
        R.adain(maps((2, 3, 4, 4)), style_mean=torch.zeros(2, 3), style_std=torch.ones(2, 3, 1))
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        R.adain(maps((2, 3)), maps((2, 3)))


# --------------------------------------------------------------------------- SPADE


def spade_reference(spade: R.SPADE, x, segmap, bn: nn.BatchNorm2d):
    seg = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
    hidden = F.relu(F.conv2d(seg, spade.shared.weight, spade.shared.bias, padding=1))
    gamma = F.conv2d(hidden, spade.gamma.weight, spade.gamma.bias, padding=1)
    beta = F.conv2d(hidden, spade.beta.weight, spade.beta.bias, padding=1)
    return bn(x) * (1 + gamma) + beta


def onehot_segmap(n, classes, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n, *size), generator=g)
    return F.one_hot(labels, classes).permute(0, 3, 1, 2).to(DT)


def test_spade_equals_batch_norm_then_per_pixel_modulation_in_training_and_evaluation():
    spade = randomize(R.SPADE(4, label_channels=3, hidden_channels=5, dtype=DT))
    bn = nn.BatchNorm2d(4, affine=False, dtype=DT)
    seg = onehot_segmap(3, 3, (4, 4))
    for seed in range(2):
        x = maps((3, 4, 8, 8), seed=seed)
        torch.testing.assert_close(spade(x, seg), spade_reference(spade, x, seg, bn), **TOL)
    spade.eval()
    bn.eval()
    x = maps((3, 4, 8, 8), seed=7)
    torch.testing.assert_close(spade(x, seg), spade_reference(spade, x, seg, bn), **TOL)


def test_spade_with_zero_modulation_is_parameter_free_batch_norm():
    spade = R.SPADE(4, label_channels=2, hidden_channels=3, dtype=DT)
    with torch.no_grad():
        for conv in (spade.gamma, spade.beta):
            conv.weight.zero_()
            conv.bias.zero_()
    x = maps((3, 4, 6, 6))
    torch.testing.assert_close(spade(x, onehot_segmap(3, 2, (6, 6))),
                               F.batch_norm(x, None, None, training=True), **TOL)


def test_spade_gradcheck():
    spade = randomize(R.SPADE(2, label_channels=2, hidden_channels=2, dtype=DT))
    x = maps((2, 2, 3, 3)).requires_grad_()
    seg = onehot_segmap(2, 2, (3, 3))
    assert torch.autograd.gradcheck(lambda z, w: spade(z, seg) * w.sum(), (x, spade.gamma.bias))


def test_spade_rejects_mismatched_maps():
    spade = R.SPADE(4, label_channels=3, hidden_channels=5)
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"segmap has shape \(3, 3, 4, 4\) but x has \(2, 4, 8, 8\)"):
        spade(x, torch.randn(3, 3, 4, 4))
    with pytest.raises(ValueError, match="segmap has 2 channels .* num_features=3"):
        spade(x, torch.randn(2, 2, 4, 4))
    with pytest.raises(ValueError, match="segmap has shape"):
        spade(x, torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="x must have 2 spatial axes"):
        spade(torch.randn(2, 4, 8, 8, 8), torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        R.SPADE(4, 3, kernel_size=2)


# --------------------------------------------------------------------------- Attentive Normalization


@pytest.mark.parametrize("attention", ["sigmoid", "softmax"])
def test_attentive_norm_equals_its_formula(attention):
    an = randomize(R.AttentiveNorm(4, num_mixtures=3, attention=attention, dtype=DT))
    bn = nn.BatchNorm2d(4, affine=False, dtype=DT)
    x = maps((5, 4, 3, 3))
    logits = x.mean((2, 3)) @ an.attention_fc.weight.T + an.attention_fc.bias
    lam = torch.sigmoid(logits) if attention == "sigmoid" else logits.softmax(-1)
    expected = bn(x) * (lam @ an.weight)[..., None, None] + (lam @ an.bias)[..., None, None]
    torch.testing.assert_close(an(x), expected, **TOL)


def test_attentive_norm_with_one_softmax_mixture_equals_torch_batch_norm():
    an = randomize(R.AttentiveNorm(4, num_mixtures=1, attention="softmax", dtype=DT))
    bn = nn.BatchNorm2d(4, dtype=DT)
    with torch.no_grad():
        bn.weight.copy_(an.weight[0])
        bn.bias.copy_(an.bias[0])
    for seed in range(2):
        x = maps((5, 4, 3, 3), seed=seed)
        torch.testing.assert_close(an(x), bn(x), **TOL)
    an.eval()
    bn.eval()
    torch.testing.assert_close(an(x), bn(x), **TOL)


def test_attentive_norm_gradcheck():
    an = randomize(R.AttentiveNorm(3, num_mixtures=2, dtype=DT))
    x = maps((4, 3, 2, 2)).requires_grad_()
    assert torch.autograd.gradcheck(lambda z, w, a: an(z) * (w.sum() + a.sum()),
                                    (x, an.weight, an.attention_fc.weight))


def test_attentive_norm_is_registered_and_works_on_vectors_and_maps():
    layer = normlib.create_norm("attentive", 8, num_mixtures=2)
    assert isinstance(layer, R.AttentiveNorm)
    assert layer(torch.randn(4, 8)).shape == (4, 8)
    assert layer(torch.randn(4, 8, 3, 3)).shape == (4, 8, 3, 3)
    assert "8, num_mixtures=2, attention='sigmoid'" in repr(layer)
    with pytest.raises(ValueError, match="attention must be 'sigmoid' or 'softmax'"):
        R.AttentiveNorm(8, attention="relu")


# --------------------------------------------------------------------------- conditional BN


def test_conditional_batch_norm_with_one_class_in_the_batch_equals_torch_batch_norm():
    cbn = randomize(R.ConditionalBatchNorm(4, num_classes=3, dtype=DT))
    bn = nn.BatchNorm2d(4, dtype=DT)
    with torch.no_grad():
        bn.weight.copy_(cbn.weight[2])
        bn.bias.copy_(cbn.bias[2])
    labels = torch.full((5,), 2)
    for seed in range(2):
        x = maps((5, 4, 3, 3), seed=seed)
        torch.testing.assert_close(cbn(x, labels), bn(x), **TOL)
    cbn.eval()
    bn.eval()
    torch.testing.assert_close(cbn(x, labels), bn(x), **TOL)


def test_conditional_batch_norm_picks_each_samples_row_and_one_hot_vectors_agree():
    cbn = randomize(R.ConditionalBatchNorm(4, num_classes=3, dtype=DT))
    x, labels = maps((5, 4, 3, 3)), torch.tensor([0, 2, 1, 2, 0])
    xhat = F.batch_norm(x, None, None, training=True)
    expected = xhat * cbn.weight[labels][..., None, None] + cbn.bias[labels][..., None, None]
    torch.testing.assert_close(cbn(x, labels), expected, **TOL)
    torch.testing.assert_close(cbn(x, F.one_hot(labels, 3).to(DT)), expected, **TOL)


def test_conditional_instance_norm_through_the_norm_argument():
    cin = randomize(R.ConditionalBatchNorm(4, num_classes=2, norm="in", dtype=DT))
    x, labels = maps((3, 4, 5, 5)), torch.tensor([1, 0, 1])
    expected = F.instance_norm(x) * cin.weight[labels][..., None, None] + cin.bias[labels][..., None, None]
    torch.testing.assert_close(cin(x, labels), expected, **TOL)


def test_conditional_batch_norm_gradcheck():
    cbn = randomize(R.ConditionalBatchNorm(3, num_classes=2, dtype=DT))
    x, cond = maps((4, 3, 2, 2)).requires_grad_(), maps((4, 2), seed=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda z, c, w: cbn(z, c) * w.sum(), (x, cond, cbn.weight))


def test_conditional_batch_norm_rejects_mismatched_conditions():
    cbn = R.ConditionalBatchNorm(4, num_classes=3)
    x = torch.randn(5, 4, 3, 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got values in \[0, 3\]"):
        cbn(x, torch.tensor([0, 1, 2, 3, 0]))
    with pytest.raises(ValueError, match=r"labels must have shape \(N=5,\), got \(4,\)"):
        cbn(x, torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match=r"vectors must have shape \(N=5, num_classes=3\), got \(5, 4\)"):
        cbn(x, torch.randn(5, 4))
    with pytest.raises(TypeError, match="condition must be a torch.Tensor"):
        cbn(x, [0, 1, 2, 1, 0])
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        R.ConditionalBatchNorm(4, num_classes=0)


def test_recovery_layers_reset_their_parameters():
    cbn = randomize(R.ConditionalBatchNorm(4, num_classes=3))
    cbn.reset_parameters()
    assert torch.equal(cbn.weight, torch.ones(3, 4)) and torch.equal(cbn.bias, torch.zeros(3, 4))
    an = R.AttentiveNorm(64, num_mixtures=4)
    assert abs(float(an.weight.detach().mean()) - 1) < 0.05 and abs(float(an.bias.detach().mean())) < 0.05


# --------------------------------------------------------------------------- whitening and coloring


def test_whitening_coloring_output_has_the_style_mean_and_covariance():
    content = maps((2, 3, 9, 9))
    mix = torch.tensor([[2.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.4, 0.0, 0.7]], dtype=DT)
    style = torch.einsum("cd,nd...->nc...", mix, maps((2, 3, 7, 7), seed=1)) + 4.0
    eps = 1e-6
    y = R.whitening_coloring(content, style, eps=eps)
    for n in range(2):
        cov_s = torch.cov(style[n].reshape(3, -1), correction=0)
        cov_y = torch.cov(y[n].reshape(3, -1), correction=0)
        # the residual of both whitening steps is of relative size eps / lambda_min
        bound = 4 * eps / float(torch.linalg.eigvalsh(cov_s).min().clamp_max(
            torch.linalg.eigvalsh(torch.cov(content[n].reshape(3, -1), correction=0)).min()))
        assert float(((cov_y - cov_s).abs() / cov_s.abs().max()).max()) <= bound
        torch.testing.assert_close(y[n].reshape(3, -1).mean(1), style[n].reshape(3, -1).mean(1), **TOL)


def test_whitening_coloring_equals_a_reference_formula():
    content, style, eps = maps((1, 3, 6, 6)), maps((1, 3, 5, 5), seed=2), 1e-4
    xc = content[0].reshape(3, -1)
    sc = style[0].reshape(3, -1)
    cov_c, cov_s = torch.cov(xc, correction=0), torch.cov(sc, correction=0)
    lam_c, vec_c = torch.linalg.eigh(cov_c + eps * torch.eye(3, dtype=DT))
    lam_s, vec_s = torch.linalg.eigh(cov_s + eps * torch.eye(3, dtype=DT))
    whiten = vec_c @ torch.diag(lam_c.rsqrt()) @ vec_c.T
    color = cov_s @ vec_s @ torch.diag(lam_s.rsqrt()) @ vec_s.T
    expected = color @ whiten @ (xc - xc.mean(1, keepdim=True)) + sc.mean(1, keepdim=True)
    torch.testing.assert_close(R.whitening_coloring(content, style, eps)[0].reshape(3, -1), expected,
                               atol=1e-9, rtol=1e-9)


def test_matrix_affine_with_a_diagonal_matrix_equals_sample_affine():
    x, gamma, beta = maps((2, 3, 4, 4)), maps((2, 3), seed=1), maps((2, 3), seed=2)
    y = normalize(x, INSTANCE, Standardize(), R.MatrixAffine(torch.diag_embed(gamma), beta))
    torch.testing.assert_close(y, normalize(x, INSTANCE, Standardize(), R.SampleAffine(gamma, beta)), **TOL)
    with pytest.raises(ValueError, match="one channel per group"):
        normalize(x, LAYER, Standardize(), R.MatrixAffine(torch.eye(3, dtype=DT)))


def test_whitening_coloring_gradcheck_and_errors():
    content, style = maps((1, 2, 3, 3)).requires_grad_(), maps((1, 2, 3, 3), seed=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda c, s: R.whitening_coloring(c, s, 1e-3), (content, style))
    with pytest.raises(ValueError, match="too few to estimate a 3x3 covariance"):
        R.whitening_coloring(torch.randn(1, 3, 3), torch.randn(1, 3, 9))
    with pytest.raises(ValueError, match="style needs the same channels"):
        R.whitening_coloring(torch.randn(1, 3, 9), torch.randn(1, 2, 9))


def test_matrix_affine_rejects_a_matrix_of_the_wrong_size():
    with pytest.raises(ValueError, match=r"matrix must have shape \(3, 3\) or \(N, 3, 3\), got \(2, 2\)"):
        normalize(maps((2, 3, 4)), INSTANCE, Standardize(), R.MatrixAffine(torch.eye(2, dtype=DT)))
