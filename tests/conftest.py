import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

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
    "search.rounds=1",  # one round keeps the suite fast; the rounds have their own tests (the default is up to 12)
]


class CliResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def cli_in_process(capfd, *args) -> CliResult:
    """``swift_scale.cli.main`` in this process, as the console script would run it (cwd = the repository):
    about 0.2 s a call instead of ~3.5 s for a fresh interpreter, for tables of cases that fail early. What a
    subprocess would print besides ``main``'s own output counts as stderr too: warnings Python shows by default and
    log records at WARNING or above. The accelerate state is reset afterwards, as a new process would start."""
    import logging
    import warnings

    from accelerate.state import AcceleratorState, GradientState

    from swift_scale.cli import main

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    root, cwd = logging.getLogger(), os.getcwd()
    capfd.readouterr()
    root.addHandler(handler)
    os.chdir(ROOT)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(cwd)
        root.removeHandler(handler)
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    out, err = capfd.readouterr()
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
    extra = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, hidden)]
    extra += [r.getMessage() for r in records]
    return CliResult(code, out, err + "".join(f"{line}\n" for line in extra))


@pytest.fixture
def main_cli(capfd):
    """``main_cli(*args)``: the CLI in this process (:func:`cli_in_process`), for cases that fail early."""
    return lambda *args: cli_in_process(capfd, *args)


def tiny_overrides(shards, out_dir, *extra):
    return [f"data.train={shards['train']}", f"data.val={shards['val']}", f"data.test={shards['test']}",
            f"run.out_dir={out_dir}", *TINY, *extra]


def corrupt_shard(path):
    """6 samples: good, undecodable png, missing cls, wrong shape, non-integer label, good."""
    import numpy as np
    import webdataset as wds

    with wds.TarWriter(str(path)) as sink:
        sink.write({"__key__": "ok0", "png": np.full((4, 4), 7, np.uint8), "cls": 1})
        sink.write({"__key__": "badpng", "png": b"not a png", "cls": 2})
        sink.write({"__key__": "nolabel", "png": np.zeros((4, 4), np.uint8)})
        sink.write({"__key__": "shape", "png": np.zeros((6, 6), np.uint8), "cls": 0})
        sink.write({"__key__": "label", "png": np.zeros((4, 4), np.uint8), "cls": b"cat"})
        sink.write({"__key__": "ok1", "png": np.full((4, 4), 9, np.uint8), "cls": 3})


def digits_hf_dataset(lo: int, hi: int):
    """Rows [lo, hi) of sklearn digits as a ``datasets.Dataset`` with ``Image`` and ``ClassLabel`` features."""
    import datasets
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = (d.images[lo:hi] * 255 / 16).astype(np.uint8)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    return datasets.Dataset.from_dict({"image": [Image.fromarray(x) for x in imgs],
                                       "label": d.target[lo:hi].tolist()}, features=feats)
