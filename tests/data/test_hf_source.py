"""Hugging Face datasets as a CLI source: datasets written by ``datasets`` itself (save_to_disk, parquet, json)."""

import json

import numpy as np
import pytest

from tests.conftest import TINY, cli, digits_hf_dataset

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def hf_digits(tmp_path_factory):
    """sklearn digits as an HF DatasetDict (Image + ClassLabel features) saved to disk, plus a parquet copy."""
    root = tmp_path_factory.mktemp("hf")
    make = digits_hf_dataset
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


def test_hf_bad_references_exit_2(hf_digits, tmp_path, main_cli):
    def run(train, name):
        return main_cli("run", f"data.train={train}", f"data.val=hf:{hf_digits / 'digits'}#val",
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


@pytest.fixture(scope="module")
def hf_stream_files(hf_digits, tmp_path_factory):
    """The digits train split as files written by ``datasets``: a save_to_disk folder of 3 arrow shards, 3 uneven
    parquet files and 3 uneven JSON-lines files (images as nested lists of pixels)."""
    root = tmp_path_factory.mktemp("hfstream")
    train = datasets.load_from_disk(str(hf_digits / "digits"))["train"]
    train.save_to_disk(str(root / "arrow"), num_shards=3)
    (root / "pq").mkdir()
    for i, (lo, hi) in enumerate([(0, 40), (40, 400), (400, 1200)]):
        train.select(range(lo, hi)).to_parquet(str(root / "pq" / f"train-{i:05d}.parquet"))
    pixels = train.cast_column("image", datasets.Image(decode=True)).map(
        lambda r: {"pixels": np.asarray(r["image"]).tolist()}, remove_columns=["image"])
    (root / "json").mkdir()
    for i, (lo, hi) in enumerate([(0, 7), (7, 500), (500, 1200)]):
        pixels.select(range(lo, hi)).to_json(str(root / "json" / f"train-{i}.jsonl"))
    return root


def test_streaming_hf_index_and_rows_match_the_map_style_dataset(hf_digits, hf_stream_files):
    """Every builder streams the rows in stored order with global id = file offset + row (checked against the
    map-style dataset), images kept raw until decoded."""
    from swift_scale.data.hf import hf_stream_index, load_hf_split
    from swift_scale.data.stream import StreamingSplit, StreamOptions

    clean = load_hf_split(f"hf:{hf_digits / 'digits'}#train")
    for ref, image_key, counts in [(f"hf:arrow:{hf_stream_files / 'arrow'}", "image", [400, 400, 400]),
                                   (f"hf:json:{hf_stream_files / 'json'}/*.jsonl", "pixels", [7, 493, 700])]:
        index = hf_stream_index(ref)
        assert index.counts == counts
        split = StreamingSplit(index, StreamOptions(image_key=image_key, label_key="label", num_classes=10))
        got = [b for s in range(len(index.urls)) for b in split.feature_batches(s, 0, 0, 256)]
        gids = np.concatenate([g.numpy() for _, _, g in got])
        assert gids.tolist() == list(range(1200))
        assert np.array_equal(np.concatenate([x.numpy() for x, _, _ in got]), clean.images)
        assert np.concatenate([y.numpy() for _, y, _ in got]).tolist() == clean.labels.tolist()


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_hf_kept_set_is_the_same_for_world_1_2_4(hf_stream_files, workers):
    """Streaming from a ``datasets.IterableDataset`` inside DataLoader workers: the delivered set of a sampled
    pass is identical for world 1/2/4 and workers 0/2, every rank gets the same step count, and each worker
    reads only its own rows (``IterableDataset.iter`` does not re-shard itself over the workers)."""
    from swift_scale.data.hf import hf_stream_index
    from swift_scale.data.stream import StreamingSplit, StreamOptions

    index = hf_stream_index(f"hf:json:{hf_stream_files / 'json'}/*.jsonl")
    split = StreamingSplit(index, StreamOptions(image_key="pixels", label_key="label", num_classes=10, seed=3,
                                                shuffle_buffer=64, num_workers=workers))
    p = np.random.default_rng(0).random(1200) + 0.05
    plan = split.plan(p / p.sum(), 1)
    sets = []
    for world in (1, 2, 4):
        steps = split.steps(plan, world, 48 // world)
        ranks = [[g.tolist() for _, _, g in split.loader(plan, 1, r, world, 48 // world)] for r in range(world)]
        assert [len(b) for b in ranks] == [steps] * world and all(len(x) == 48 // world for b in ranks for x in b)
        ids = [g for b in ranks for x in b for g in x]
        assert len(ids) == len(set(ids)) == steps * 48
        sets.append(set(ids))
    assert sets[0] == sets[1] == sets[2] and sets[0] <= set(np.flatnonzero(plan.mask).tolist())


@pytest.mark.parametrize("kind,counts", [("parquet", [40, 360, 800]), ("arrow", [400, 400, 400])])
def test_streaming_run_on_hf_files(hf_digits, hf_stream_files, tmp_path, kind, counts):
    """data.mode=streaming over files written by `datasets` (uneven parquet files; a save_to_disk folder) with 2
    DataLoader workers: every phase runs, one feature unit per file."""
    train = {"parquet": f"hf:parquet:{hf_stream_files / 'pq'}/*.parquet",
             "arrow": f"hf:arrow:{hf_stream_files / 'arrow'}"}[kind]
    out = tmp_path / "run"
    r = cli("run", f"data.train={train}", f"data.val=hf:{hf_digits / 'digits'}#val",
            f"data.test=hf:{hf_digits / 'digits'}#test", f"run.out_dir={out}", *TINY, "data.mode=streaming",
            "data.on_error=fail", "data.num_workers=2")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_train"] == 1200 and summary["search"]["trials"] == 3
    index = json.loads((out / "index.json").read_text())["train"]
    assert index["counts"] == counts and index["urls"][0].startswith(f"hf:{kind}:")
    assert len(list((out / "features" / "done").iterdir())) == 3


def test_streaming_hf_bad_files_exit_2(hf_digits, tmp_path, main_cli):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    common = (f"data.val=hf:{hf_digits / 'digits'}#val", f"data.test=hf:{hf_digits / 'digits'}#test", *TINY,
              "data.mode=streaming", "data.on_error=fail")
    r = main_cli("run", f"data.train=hf:parquet:{tmp_path / 'bad.parquet'}", f"run.out_dir={tmp_path / 'a'}", *common)
    assert r.returncode == 2 and "bad.parquet" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = main_cli("run", f"data.train=hf:json:{tmp_path}/none-*.jsonl", f"run.out_dir={tmp_path / 'b'}", *common)
    assert r.returncode == 2 and "names no json files" in r.stderr, r.stderr
    r = main_cli("run", f"data.train=hf:imagefolder:{tmp_path}", f"run.out_dir={tmp_path / 'c'}", *common)
    assert r.returncode == 2 and "data.mode" in r.stderr, r.stderr
    assert not (tmp_path / "a" / "summary.json").exists()


@pytest.mark.dist
def test_streaming_hf_run_under_two_real_processes(hf_digits, hf_stream_files, tmp_path):
    """torchrun, 2 gloo ranks × 2 DataLoader workers, streaming 3 uneven JSON-lines files (7/493/700 rows, fewer
    files than ranks × workers): the index counted in parallel, every file's features written, equal steps."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "swift_scale.cli", "run", f"data.train=hf:json:{hf_stream_files / 'json'}/*.jsonl",
           "data.image_key=pixels", f"data.val=hf:{hf_digits / 'digits'}#val",
           f"data.test=hf:{hf_digits / 'digits'}#test", f"run.out_dir={out}", *TINY, "data.mode=streaming",
           "data.on_error=fail", "data.num_workers=2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    assert json.loads((out / "index.json").read_text())["train"]["counts"] == [7, 493, 700]
    meta = json.loads((out / "features" / "meta.json").read_text())
    assert meta["complete"] and len(list((out / "features" / "done").iterdir())) == 3
