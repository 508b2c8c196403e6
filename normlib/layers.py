"""Normalization layers (filled in by the activation-normalization work)."""

from torch import nn

from normlib.registry import register_norm


# Temporary torch-backed entries so that models can be built; replaced by
# normlib's own layers.
@register_norm("bn", "batchnorm")
def _bn(num_features: int, **kw) -> nn.Module:
    return nn.BatchNorm2d(num_features, **kw)


@register_norm("gn", "groupnorm")
def _gn(num_features: int, num_groups: int = 32, **kw) -> nn.Module:
    return nn.GroupNorm(min(num_groups, num_features), num_features, **kw)
