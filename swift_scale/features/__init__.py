"""Per-example features (pure functions), the memory-mapped feature store, and the extraction pass."""

from swift_scale.features.functions import CLASSIFICATION_FEATURES, classification_features
from swift_scale.features.store import FeatureStore, quantile_table

__all__ = ["CLASSIFICATION_FEATURES", "classification_features", "FeatureStore", "quantile_table"]
