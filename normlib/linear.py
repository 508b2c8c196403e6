"""Why normalize inputs: input transforms, and the curvature of linear models.

This module backs the chapter *Motivation*. It has three parts.

Input transforms (fitted on training data, applied to any data):
    centering ``x - mu``, standardization ``(x - mu) / sigma``, PCA whitening
    ``Lambda^{-1/2} D^T (x - mu)`` and ZCA whitening ``D Lambda^{-1/2} D^T (x - mu)``,
    where ``Sigma = D Lambda D^T`` is the covariance of the training inputs.

Curvature of linear models:
    for least squares with loss ``L(w) = 1/(2N) sum_i (w^T x_i - y_i)^2`` the Hessian is the
    second moment ``H = E[x x^T]`` (with a bias, ``x`` is extended by a constant 1);
    for logistic regression ``H(w) = E[s(1 - s) x x^T]`` with ``s = sigmoid(w^T x)``.
    For ``x ~ N(m 1, I_d)``, ``E[x x^T] = I + m^2 1 1^T`` whose largest eigenvalue is
    ``1 + d m^2`` (:func:`mean_shift_lambda_max`): a mean shift alone makes the problem
    ill conditioned.

Gradient descent on a quadratic:
    the error ``e_t = w_t - w*`` obeys ``e_{t+1} = (I - eta H) e_t``; along an eigenvector
    with eigenvalue ``lambda`` it is multiplied by ``1 - eta lambda`` each step, so
    gradient descent converges iff ``eta < 2 / lambda_max``, and the step ``1 / lambda_max``
    removes the top direction's error in one step.

Example:
    >>> import torch
    >>> from normlib.linear import mean_shift_second_moment, mean_shift_lambda_max
    >>> S = mean_shift_second_moment(d=4, m=3.0)
    >>> float(torch.linalg.eigvalsh(S)[-1]), mean_shift_lambda_max(4, 3.0)
    (37.0, 37.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from normlib._checks import (
    check_int,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
    check_shape,
    check_tensor,
)
from normlib.whitening import covariance, whitening_matrix

__all__ = [
    "INPUT_TRANSFORMS",
    "InputTransform",
    "fit_input_transform",
    "knn_predict",
    "knn_accuracy",
    "LeastSquares",
    "LogisticRegression",
    "gradient_descent",
    "steps_to_converge",
    "lr_thresholds",
    "condition_number",
    "second_moment",
    "mean_shift_second_moment",
    "mean_shift_lambda_max",
]

INPUT_TRANSFORMS = ("raw", "center", "standardize", "pca", "zca")
_TINY = 1e-30


def _as_matrix(name: str, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (N, d), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}; use x.float()")
    return x


@dataclass(frozen=True)
class InputTransform:
    """An affine input transform ``x -> (x - mean) @ matrix.T`` fitted on training data.

    Attributes:
        kind: one of ``INPUT_TRANSFORMS``.
        mean: ``(d,)``.
        matrix: ``(d, d)``.
    """

    kind: str
    mean: torch.Tensor
    matrix: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = _as_matrix("x", x)
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"x has {x.shape[1]} features, the transform was fitted on "
                             f"{self.mean.shape[0]}")
        return (x - self.mean.to(x)) @ self.matrix.to(x).T


def fit_input_transform(x: torch.Tensor, kind: str, eps: float = 1e-8) -> InputTransform:
    """Fit one of ``raw``, ``center``, ``standardize``, ``pca``, ``zca`` on ``x: (N, d)``.

    Statistics use the biased (1/N) covariance. ``eps`` is added to the covariance's
    diagonal before taking inverse square roots (a tiny positive floor is used for ``eps=0``).
    Standardization and whitening matrices come from :func:`normlib.whitening.whitening_matrix`.

    Example:
        >>> import torch
        >>> x = torch.randn(500, 3, dtype=torch.float64) @ torch.tensor(
        ...     [[2.0, 0, 0], [1.0, 1, 0], [0, 0, 5]], dtype=torch.float64)
        >>> z = fit_input_transform(x, "zca")(x)
        >>> torch.allclose(z.T @ z / len(z), torch.eye(3, dtype=z.dtype), atol=1e-6)
        True
    """
    x = _as_matrix("x", x)
    if kind not in INPUT_TRANSFORMS:
        raise ValueError(f"unknown input transform {kind!r}; choose from {INPUT_TRANSFORMS}")
    if eps < 0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    d = x.shape[1]
    mean = x.mean(0)
    if kind == "raw":
        return InputTransform(kind, torch.zeros_like(mean), torch.eye(d, dtype=x.dtype, device=x.device))
    if kind == "center":
        return InputTransform(kind, mean, torch.eye(d, dtype=x.dtype, device=x.device))
    if kind != "standardize" and len(x) < 2:
        raise ValueError("whitening needs at least 2 samples")
    # One implementation of whitening in the library: normlib.whitening, on (d, N) matrices.
    _, cov = covariance(x.T)
    return InputTransform(kind, mean, whitening_matrix(cov, kind, eps=max(eps, _TINY)))


def knn_predict(x_train, y_train, x_query, k: int = 5) -> torch.Tensor:
    """Majority vote of the ``k`` nearest training points (Euclidean distance); ties -> smallest label."""
    x_train, x_query = _as_matrix("x_train", x_train), _as_matrix("x_query", x_query)
    check_int("k", k, minimum=1, maximum=len(x_train))
    dist = torch.cdist(x_query, x_train)
    idx = dist.topk(k, dim=1, largest=False).indices
    votes = torch.nn.functional.one_hot(y_train[idx], int(y_train.max()) + 1).sum(1)
    return votes.argmax(1)


def knn_accuracy(x_train, y_train, x_test, y_test, k: int = 5) -> float:
    """Test accuracy of :func:`knn_predict`."""
    return float((knn_predict(x_train, y_train, x_test, k) == y_test).double().mean())


def second_moment(x: torch.Tensor) -> torch.Tensor:
    """``E[x x^T] = X^T X / N`` for ``x: (N, d)``."""
    x = _as_matrix("x", x)
    return x.T @ x / len(x)


def mean_shift_second_moment(d: int, m: float, dtype=torch.float64) -> torch.Tensor:
    """``E[x x^T] = I + m^2 1 1^T`` for ``x ~ N(m 1, I_d)``."""
    check_positive_int("d", d)
    one = torch.ones(d, 1, dtype=dtype)
    return torch.eye(d, dtype=dtype) + m**2 * (one @ one.T)


def mean_shift_lambda_max(d: int, m: float) -> float:
    """Closed form ``1 + d m^2``: the top eigenvalue of ``E[x x^T]`` for ``x ~ N(m 1, I_d)``.

    The all-ones direction has eigenvalue ``1 + d m^2``; every direction orthogonal to it
    has eigenvalue 1, so the condition number is also ``1 + d m^2``.
    """
    check_positive_int("d", d)
    return 1.0 + d * float(m) ** 2


def condition_number(h: torch.Tensor) -> float:
    """``lambda_max / lambda_min`` of a symmetric positive definite matrix (inf if singular)."""
    evals = torch.linalg.eigvalsh(h)
    lo = float(evals[0])
    return float("inf") if lo <= 0 else float(evals[-1]) / lo


def lr_thresholds(h: torch.Tensor) -> tuple[float, float]:
    """``(1 / lambda_max, 2 / lambda_max)``: the optimal and the largest stable GD step."""
    lam = float(torch.linalg.eigvalsh(h)[-1])
    if lam <= 0:
        raise ValueError("the Hessian has no positive eigenvalue")
    return 1.0 / lam, 2.0 / lam


def _design(x, y, bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(N, d)`` (with a constant feature 1 appended if ``bias``) and targets ``(N,)``."""
    x = _as_matrix("x", x)
    check_tensor("y", y)
    check_shape("y", y, (len(x),))
    if bias:
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1)
    return x, y.to(x)


class LeastSquares:
    """``L(w) = 1/(2N) sum_i (w^T x_i - y_i)^2`` on inputs ``x: (N, d)``, targets ``y: (N,)``.

    With ``bias=True`` a constant feature 1 is appended, so ``w = (w_1, ..., w_d, b)``.
    The Hessian is constant: ``H = X^T X / N``.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, bias: bool = True):
        self.x, self.y = _design(x, y, bias)
        self.hessian = second_moment(self.x)
        self.solution = torch.linalg.lstsq(self.x, self.y.unsqueeze(1)).solution.squeeze(1)

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    def loss(self, w: torch.Tensor) -> torch.Tensor:
        """Loss at ``w: (d,)`` or at a batch of points ``w: (..., d)``."""
        r = w @ self.x.T - self.y
        return 0.5 * r.pow(2).mean(-1)

    def grad(self, w: torch.Tensor) -> torch.Tensor:
        return (w @ self.x.T - self.y) @ self.x / len(self.x)

    @property
    def lambda_max(self) -> float:
        return float(torch.linalg.eigvalsh(self.hessian)[-1])

    @property
    def condition_number(self) -> float:
        return condition_number(self.hessian)


class LogisticRegression:
    """Mean binary cross-entropy of ``sigmoid(w^T x)`` against labels ``y`` in {0, 1}.

    The Hessian at ``w`` is ``E[s (1 - s) x x^T]`` with ``s = sigmoid(w^T x)``; at ``w = 0``
    it is ``E[x x^T] / 4``.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, bias: bool = True):
        self.x, self.y = _design(x, y, bias)

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    def loss(self, w: torch.Tensor) -> torch.Tensor:
        z = w @ self.x.T
        return torch.nn.functional.binary_cross_entropy_with_logits(
            z, self.y.expand_as(z), reduction="none").mean(-1)

    def grad(self, w: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(w @ self.x.T) - self.y) @ self.x / len(self.x)

    def hessian(self, w: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.x @ w)
        return (self.x * (s * (1 - s)).unsqueeze(1)).T @ self.x / len(self.x)


def gradient_descent(problem, lr: float, steps: int, w0: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``w <- w - lr * grad(w)``; return the trajectory ``(steps + 1, d)`` (row 0 is ``w0``)."""
    check_positive_float("lr", lr, example=0.1)
    check_nonnegative_int("steps", steps)
    w = torch.zeros(problem.dim, dtype=problem.x.dtype) if w0 is None else w0.clone()
    path = [w.clone()]
    for _ in range(steps):
        w = w - lr * problem.grad(w)
        path.append(w.clone())
    return torch.stack(path)


def steps_to_converge(problem, lr: float, tol: float = 1e-6, max_steps: int = 100_000,
                      w0: torch.Tensor | None = None) -> int | None:
    """Gradient-descent steps until ``L(w) - L(w*) <= tol * (L(w0) - L(w*))``; ``None`` if not reached.

    ``problem`` needs a ``solution`` (least squares). Divergence returns ``None`` as soon as the
    loss gap is non-finite or has grown a million-fold.
    """
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    w = torch.zeros(problem.dim, dtype=problem.x.dtype) if w0 is None else w0.clone()
    best = problem.loss(problem.solution)
    gap0 = float(problem.loss(w) - best)
    if gap0 <= 0:
        return 0
    for t in range(1, max_steps + 1):
        w = w - lr * problem.grad(w)
        gap = float(problem.loss(w) - best)
        if gap <= tol * gap0:
            return t
        if not gap < 1e6 * gap0:
            return None
    return None
