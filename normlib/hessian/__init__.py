"""The Hessian of a model's loss: products, the exact matrix, eigenpairs, trace and density.

For a model :math:`f_\\theta`, a loss :math:`\\ell` and data :math:`D` split into batches
:math:`B_1, \\dots, B_m` of sizes :math:`n_b`, the Hessian is

.. math::

    H = \\nabla^2_\\theta L(\\theta), \\qquad
    L(\\theta) = \\sum_b \\frac{n_b}{\\sum_c n_c}\\, \\ell\\big(f_\\theta(x_b), y_b\\big),

the second derivative of the batch-size-weighted mean loss with respect to every trainable
parameter, flattened into one vector :math:`\\theta \\in \\mathbb{R}^P`.

:class:`HessianOperator` computes products :math:`Hv` for vectors :math:`v` of shape ``(P,)``
(or blocks ``(B, P)``) without forming :math:`H`, with ``torch.func.functional_call`` on a flat
parameter vector and a second derivative of the gradient. On top of it:

- :func:`hessian_matrix`: the exact :math:`P \\times P` Hessian, for small models.
- :func:`top_eigenpairs`: extreme eigenvalues and eigenvectors by Lanczos with full
  reorthogonalization (default; eigenvalues only in :math:`O(P)` memory on request) or by power
  iteration with deflation.
- :func:`hessian_trace`: Hutchinson's estimator :math:`\\operatorname{tr} H \\approx \\frac1s
  \\sum_i z_i^\\top H z_i` with its standard error, or Hutch++ (a low-rank part computed exactly).
- :func:`spectral_density`: stochastic Lanczos quadrature (SLQ) of the eigenvalue density,
  smoothed with a Gaussian kernel.
- :func:`layer_second_moments`: per linear layer, the second moments of its inputs
  :math:`\\Sigma_x` and of its output gradients :math:`\\Sigma_{\\nabla h}`, the Kronecker factors
  of the layer's curvature block :cite:p:`martens2015optimizing`.
- :func:`run_sgd`: (full-batch or minibatch) gradient descent on a copy of a model, to test
  those thresholds.
- :func:`condition_number` and :func:`learning_rate_thresholds`: :math:`\\kappa =
  \\lambda_{\\max} / \\lambda_{\\min}`, the step :math:`1/\\lambda_{\\max}` that is optimal along the
  sharpest direction and the step :math:`2/\\lambda_{\\max}` above which gradient descent diverges.

Data-parallel: with ``process_group=...`` every rank holds a shard of the data, the products
are all-reduced count-weighted sums, and every tool below computes on each rank the result of
one process on all the data. Memory: Lanczos grows its basis one vector per product (or keeps
it on ``basis_device="cpu"``, or keeps none with ``eigenvectors=False`` / ``reorthogonalize=False``:
:math:`O(P)`, as power iteration).

The BatchNorm mode is explicit: ``mode="train"`` is the Hessian of the training loss, with batch
statistics (running statistics are neither used nor updated); ``mode="eval"`` is the Hessian of
the inference function, with the running statistics. The model's parameters, buffers, train/eval
flags and ``.grad`` fields are exactly as before after every call, also when it raises.

The package, one module per idea:

- :mod:`normlib.hessian.operator`: :class:`HessianOperator`, :func:`hessian_matrix`,
  :func:`preserved_model_state`.
- :mod:`normlib.hessian.eigen`: :func:`lanczos`, :func:`top_eigenpairs`.
- :mod:`normlib.hessian.estimators`: :func:`hessian_trace`, :func:`spectral_density`.
- :mod:`normlib.hessian.conditioning`: :func:`condition_number`, :func:`learning_rate_thresholds`,
  :func:`layer_second_moments`, :func:`run_sgd`.

The chapter "Hessian conditioning" (``chapters/hessian.md``) explains what these numbers say
about training; the methods follow :cite:t:`ghorbani2019investigation` (SLQ density of neural
network Hessians), :cite:t:`yao2020pyhessian` (PyHessian), :cite:t:`golub2009matrices`
(Lanczos quadrature), :cite:t:`hutchinson1989stochastic` and :cite:t:`meyer2021hutch`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from normlib.hessian import HessianOperator, top_eigenpairs, hessian_trace
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    >>> x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
    >>> op = HessianOperator(model, nn.CrossEntropyLoss(), (x, y), mode="train")
    >>> op.shape
    (67, 67)
    >>> eig = top_eigenpairs(op, k=2)
    >>> eig.eigenvalues.shape, bool(eig.converged.all())
    (torch.Size([2]), True)
    >>> est = hessian_trace(op, num_probes=20, seed=0)
    >>> bool(est.stderr > 0)
    True
"""

from normlib.hessian.conditioning import (
    LayerMoments,
    LearningRateThresholds,
    SGDRun,
    condition_number,
    layer_second_moments,
    learning_rate_thresholds,
    run_sgd,
)
from normlib.hessian.eigen import ConvergenceWarning, EigenResult, LanczosResult, lanczos, top_eigenpairs
from normlib.hessian.estimators import SpectralDensity, TraceEstimate, hessian_trace, spectral_density
from normlib.hessian.operator import HessianOperator, hessian_matrix, preserved_model_state

__all__ = [
    "HessianOperator",
    "preserved_model_state",
    "hessian_matrix",
    "lanczos",
    "LanczosResult",
    "top_eigenpairs",
    "EigenResult",
    "hessian_trace",
    "TraceEstimate",
    "spectral_density",
    "SpectralDensity",
    "condition_number",
    "learning_rate_thresholds",
    "LearningRateThresholds",
    "ConvergenceWarning",
    "layer_second_moments",
    "LayerMoments",
    "run_sgd",
    "SGDRun",
]
