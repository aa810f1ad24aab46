"""Hugging Face datasets as a CLI source: datasets written by ``datasets`` itself (save_to_disk, parquet)."""

import json

import numpy as np
import pytest

from tests.conftest import TINY, cli

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def hf_digits(tmp_path_factory):
    """sklearn digits as an HF DatasetDict (Image + ClassLabel features) saved to disk, plus a parquet copy."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("hf")
    d = load_digits()
    imgs = (d.images * 255 / 16).astype(np.uint8)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})

    def make(lo, hi):
        return datasets.Dataset.from_dict({"image": [Image.fromarray(x) for x in imgs[lo:hi]],
                                           "label": d.target[lo:hi].tolist()}, features=feats)

    dd = datasets.DatasetDict({"train": make(0, 1200), "val": make(1200, 1500), "test": make(1500, 1797)})
    dd.save_to_disk(str(root / "digits"))
    dd["train"].to_parquet(str(root / "train.parquet"))
    return root


def test_run_on_hf_sources(hf_digits, tmp_path):
    out = tmp_path / "run"
    r = cli("run", f"data.train=hf:parquet:{hf_digits / 'train.parquet'}", f"data.val=hf:{hf_digits / 'digits'}#val",
            f"data.test=hf:{hf_digits / 'digits'}#test", f"run.out_dir={out}", *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_train"] == 1200 and summary["search"]["trials"] == 3
    index = json.loads((out / "index.json").read_text())
    assert index["train"]["total"] == 1200 and index["val"]["total"] == 300
    noise = json.loads((out / "noise.json").read_text())
    assert noise["num_flipped"] == 480  # 40% of 1200 rows, by row index
    from swift_scale.data.hf import load_hf_split

    clean = load_hf_split(f"hf:{hf_digits / 'digits'}#train")
    assert noise["clean_labels"] == clean.labels[noise["flipped_ids"]].tolist()


def test_hf_bad_references_exit_2(hf_digits, tmp_path):
    def run(train, name):
        return cli("run", f"data.train={train}", f"data.val=hf:{hf_digits / 'digits'}#val",
                   f"data.test=hf:{hf_digits / 'digits'}#test", f"run.out_dir={tmp_path / name}", *TINY)

    r = run(f"hf:{hf_digits / 'digits'}", "a")
    assert r.returncode == 2 and "data.train" in r.stderr and "#SPLIT" in r.stderr
    r = run(f"hf:{tmp_path / 'nope'}", "b")
    assert r.returncode == 2 and "does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    for name in ("a", "b"):
        assert not (tmp_path / name / "summary.json").exists()


def test_hf_missing_columns_name_the_key(tmp_path):
    from swift_scale.data import DataError
    from swift_scale.data.hf import load_hf_split

    datasets.Dataset.from_dict({"x": [[[0, 1], [2, 3]]] * 2, "y": [0, 1]}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DataError, match=r"data.train: no column 'png'.*data.image_key"):
        load_hf_split(f"hf:{tmp_path / 'd'}", image_key="png", field="data.train")
    split = load_hf_split(f"hf:{tmp_path / 'd'}", image_key="x", label_key="y")  # arrays are images too
    assert split.images.shape == (2, 1, 2, 2) and split.labels.tolist() == [0, 1]


def test_streaming_run_on_hf_parquet_files(hf_digits, tmp_path):
    """data.mode=streaming over parquet files written by `datasets` (uneven: 3 files), read as IterableDatasets."""
    ds = datasets.load_from_disk(str(hf_digits / "digits"))["train"]
    files = tmp_path / "pq"
    files.mkdir()
    for i, (lo, hi) in enumerate([(0, 40), (40, 400), (400, 1200)]):
        ds.select(range(lo, hi)).to_parquet(str(files / f"train-{i:05d}.parquet"))
    from swift_scale.data.stream import hf_stream_index

    index = hf_stream_index(f"hf:parquet:{files}/*.parquet")
    assert index.counts == [40, 360, 800]
    out = tmp_path / "run"
    r = cli("run", f"data.train=hf:parquet:{files}/*.parquet", f"data.val=hf:{hf_digits / 'digits'}#val",
            f"data.test=hf:{hf_digits / 'digits'}#test", f"run.out_dir={out}", *TINY, "data.mode=streaming",
            "data.on_error=fail", "data.num_workers=2")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_train"] == 1200 and summary["search"]["trials"] == 3
    assert len(list((out / "features" / "done").iterdir())) == 3  # one unit per parquet file
