"""Signal propagation at initialization: probes, sweeps and the theory they are held against.

- :mod:`normlib.propagation.statistics`: scale, similarity and rank of one batch of activations.
- :mod:`normlib.propagation.probe`: hooks that record them (and gradient norms) per layer or
  residual block in one forward and one backward pass, leaving the model as found.
- :mod:`normlib.propagation.sweep`: the probes over a grid of configurations, as one tidy table.
- :mod:`normlib.propagation.theory`: variance recursion of residual networks (and the
  mean-field stream of normlib's ResNet), the ReLU arc-cosine map, the BatchNorm similarity
  fixed point, BatchNorm and GroupNorm gradient-explosion rates, the GroupNorm rank bound.

They back the chapters "Stable forward propagation", "Informative forward
propagation" and "Stable backward propagation", which reproduce the analysis
of Lubana, Dick and Tanaka (2021), *Beyond BatchNorm*.

Example:
    >>> import torch
    >>> from normlib.models import MLP
    >>> from normlib.propagation import probe, relu_correlation_map
    >>> table = probe(MLP(32, 2, width=256, depth=3), torch.randn(16, 32), backward=False)
    >>> round(relu_correlation_map(0.0), 4)
    0.3183
"""

from normlib.propagation.probe import GRADIENT_STATISTICS, MODES, preserved_state, probe, probe_points
from normlib.propagation.statistics import (
    STATISTICS,
    activation_variance,
    cosine_similarity_matrix,
    effective_rank,
    gram_eigenvalues,
    gram_matrix,
    mean_cosine_similarity,
    numerical_rank,
    orthogonality_gap,
    representation_statistics,
    second_moment,
    stable_rank,
)
from normlib.propagation.sweep import derived_seed, grid_configurations, growth_rate, sweep
from normlib.propagation.theory import (
    BN_GRADIENT_EXPLOSION_LIMIT,
    RESNET_BRANCHES,
    bn_gradient_explosion_rate,
    bn_similarity_fixed_point,
    gn_gradient_explosion_rate,
    groupnorm_rank_lower_bound,
    readout_gap_curve,
    relu_correlation_map,
    relu_resnet_moments,
    relu_similarity_by_depth,
    residual_variance,
    running_maximum_moments,
)

__all__ = [
    "STATISTICS",
    "GRADIENT_STATISTICS",
    "MODES",
    "probe",
    "probe_points",
    "preserved_state",
    "sweep",
    "grid_configurations",
    "derived_seed",
    "growth_rate",
    "activation_variance",
    "second_moment",
    "gram_matrix",
    "gram_eigenvalues",
    "cosine_similarity_matrix",
    "mean_cosine_similarity",
    "stable_rank",
    "numerical_rank",
    "effective_rank",
    "orthogonality_gap",
    "representation_statistics",
    "BN_GRADIENT_EXPLOSION_LIMIT",
    "RESNET_BRANCHES",
    "residual_variance",
    "running_maximum_moments",
    "relu_resnet_moments",
    "relu_correlation_map",
    "relu_similarity_by_depth",
    "bn_similarity_fixed_point",
    "bn_gradient_explosion_rate",
    "gn_gradient_explosion_rate",
    "groupnorm_rank_lower_bound",
    "readout_gap_curve",
]
