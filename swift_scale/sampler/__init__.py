"""The 10-parameter Swift sampler and the ways to apply it (indexed epochs, streaming rejection)."""

from swift_scale.sampler.select import (
    DistributedWeightedSampler,
    epoch_indices,
    keep_mask,
    keep_threshold,
    keep_top_k,
    race_keys,
    rank_share,
)
from swift_scale.sampler.swift import (
    UNIFORM_THETA,
    SwiftSampler,
    kept_share,
    params_to_theta,
    theta_to_params,
)

__all__ = [
    "SwiftSampler",
    "UNIFORM_THETA",
    "theta_to_params",
    "params_to_theta",
    "kept_share",
    "epoch_indices",
    "rank_share",
    "race_keys",
    "keep_threshold",
    "keep_mask",
    "keep_top_k",
    "DistributedWeightedSampler",
]
