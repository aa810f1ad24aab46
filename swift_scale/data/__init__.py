"""Data: shard tables and global ids, one sample decoder, in-memory and streaming training sources, label and
text noise, dataset writers, and :func:`load_data`, which opens every split of a run."""

from swift_scale.data.decode import DataError, LoadedSplit, decode_sample
from swift_scale.data.loading import load_data
from swift_scale.data.noise import NoisePlan, symmetric_label_noise
from swift_scale.data.shards import ShardIndex, build_index, expand_shards, load_split
from swift_scale.data.splits import Data, Split, TokenSplit, TrainingSource

__all__ = ["DataError", "LoadedSplit", "decode_sample", "load_data", "NoisePlan", "symmetric_label_noise",
           "ShardIndex", "build_index", "expand_shards", "load_split", "Data", "Split", "TokenSplit",
           "TrainingSource"]
