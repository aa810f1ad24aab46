import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory):
    """sklearn's digits written with webdataset.ShardWriter: {split: brace pattern}."""
    from swift_scale.data.writers import write_digits

    return write_digits(tmp_path_factory.mktemp("digits"), maxcount=300)


def cli(*args, cwd=None, timeout=300):
    """Run the real console entry point in a subprocess; returns CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "swift_scale.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT, timeout=timeout)


TINY = [
    "train.epochs=2", "train.batch_size=64", "train.cpu=true", "train.progress=false",
    "search.trials=3", "search.finetune_epochs=1", "search.n_init=1", "search.num_restarts=1",
    "search.raw_samples=16", "data.noise_rate=0.4", "model.name=swift_cnn",
]


def tiny_overrides(shards, out_dir, *extra):
    return [f"data.train={shards['train']}", f"data.val={shards['val']}", f"data.test={shards['test']}",
            f"run.out_dir={out_dir}", *TINY, *extra]
