"""Data: WebDataset shard tables and global ids, split loading, label-noise injection, dataset writers."""

from swift_scale.data.noise import symmetric_label_noise
from swift_scale.data.shards import DataError, ShardIndex, build_index, expand_shards, load_split

__all__ = ["DataError", "ShardIndex", "build_index", "expand_shards", "load_split", "symmetric_label_noise"]
