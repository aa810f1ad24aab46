"""Hub datasets (``hf:hub:NAME[@REVISION][:CONFIG][#SPLIT]``), resolved through ``datasets.load_dataset_builder``
exactly as for the Hub, on a local folder laid out like a Hub repo (``data/SPLIT-0000K-of-0000N.parquet``, written
by ``datasets``); tests run offline (``HF_HUB_OFFLINE=1``), so an unknown Hub name must fail in one line."""

import json

import pytest

from tests.conftest import TINY, cli, digits_hf_dataset

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def hub_repo(tmp_path_factory):
    """sklearn digits (Image + ClassLabel) as a Hub-style repo: 3 uneven train files, one validation, one test;
    plus a text repo with a ``text`` column in 2 train files."""
    root = tmp_path_factory.mktemp("hub")
    make = digits_hf_dataset
    (root / "digits" / "data").mkdir(parents=True)
    parts = [(0, 40), (40, 400), (400, 1200)]
    for k, (lo, hi) in enumerate(parts):
        make(lo, hi).to_parquet(str(root / "digits" / "data" / f"train-{k:05d}-of-{len(parts):05d}.parquet"))
    make(1200, 1500).to_parquet(str(root / "digits" / "data" / "validation-00000-of-00001.parquet"))
    make(1500, 1797).to_parquet(str(root / "digits" / "data" / "test-00000-of-00001.parquet"))
    (root / "text" / "data").mkdir(parents=True)
    for k in range(2):
        rows = [f"document {k} {j}: " + " ".join(["in the beginning"] * (j % 7 + 1)) for j in range(30)]
        datasets.Dataset.from_dict({"text": rows, "n": list(range(30))}).to_parquet(
            str(root / "text" / "data" / f"train-{k:05d}-of-00002.parquet"))
    return root


def test_hub_references_parse_with_the_fields_default_split():
    from swift_scale.data.hf import parse_hub

    assert parse_hub("hf:hub:org/name@v1.0:sample-10BT#valid", "data.val") == ("org/name", "v1.0", "sample-10BT",
                                                                                "valid")
    assert parse_hub("hf:hub:org/name", "data.train") == ("org/name", None, None, "train")
    assert parse_hub("hf:hub:org/name", "data.val")[3] == "validation"
    assert parse_hub("hf:hub:org/name:en", "data.test") == ("org/name", None, "en", "test")


def test_hub_split_streams_its_files_in_order_with_ids_as_load_dataset(hub_repo):
    """One shard per data file of the split, in the builder's order; rows = what ``load_dataset`` returns."""
    from swift_scale.data.hf import hf_shard_rows, hf_stream_files, hf_stream_index, hf_stream_open

    ref = f"hf:hub:{hub_repo / 'digits'}"
    urls = hf_stream_files(ref)
    assert urls == [f"hf:parquet:{hub_repo / 'digits' / 'data' / f'train-{k:05d}-of-00003.parquet'}"
                    for k in range(3)]
    assert hf_stream_index(ref).counts == [40, 360, 800]
    assert hf_stream_index(f"{ref}#validation").counts == [300]
    ds = hf_stream_open(urls)
    labels = [r["label"] for k in range(3) for r in hf_shard_rows(ds, k, ["label"], urls[k])]
    assert labels == datasets.load_dataset(str(hub_repo / "digits"), split="train")["label"]


def test_remote_urls_are_counted_from_the_parquet_footer_and_stamped(hub_repo):
    """A file behind a URL (``hf://`` on the Hub; ``file://`` here, through the same fsspec path) is counted from its
    footer and identified for the token cache by size and stamp, without a local path."""
    from swift_scale.data.hf import HFStreamCounter
    from swift_scale.data.tokens import _identity

    path = hub_repo / "digits" / "data" / "train-00001-of-00003.parquet"
    url = f"hf:parquet:file://{path}"
    assert HFStreamCounter([url])(0) == 360
    ident = _identity(url, 32, "sha", "text")
    assert ident["size"] == path.stat().st_size and ident["mtime_ns"] is not None


def test_hub_text_is_read_row_by_row_as_documents(hub_repo):
    from swift_scale.data.loading import _text_sources

    urls, read = _text_sources(f"hf:hub:{hub_repo / 'text'}", "text")
    assert len(urls) == 2
    lines = [line for lines, _ in read(1) for line in lines]
    assert "".join(lines).splitlines()[0] == "document 1 0: in the beginning"


@pytest.mark.parametrize("train,needle", [
    ("{repo}#nope", "has no split 'nope'"),
    ("someorg/not-cached-anywhere", "cannot resolve hf:hub:someorg/not-cached-anywhere"),
])
def test_hub_bad_references_exit_2(hub_repo, tmp_path, main_cli, train, needle):
    repo = hub_repo / "digits"
    r = main_cli("run", f"data.train=hf:hub:{train.format(repo=repo)}", f"data.val=hf:hub:{repo}",
                 f"data.test=hf:hub:{repo}", f"run.out_dir={tmp_path / 'r'}", *TINY, "data.mode=streaming")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr[-2000:]
    assert not (tmp_path / "r" / "summary.json").exists()


@pytest.mark.slow
def test_streaming_run_on_a_hub_repo(hub_repo, tmp_path):
    """``data.mode=streaming`` with every split named ``hf:hub:REPO``: train streamed one shard per file, val and
    test (their default splits, ``validation`` and ``test``) loaded; every phase runs."""
    repo = hub_repo / "digits"
    out = tmp_path / "run"
    r = cli("run", f"data.train=hf:hub:{repo}", f"data.val=hf:hub:{repo}", f"data.test=hf:hub:{repo}",
            f"run.out_dir={out}", *TINY, "data.mode=streaming", "data.on_error=fail")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_train"] == 1200 and summary["search"]["trials"] == 3
    index = json.loads((out / "index.json").read_text())
    assert index["train"]["counts"] == [40, 360, 800] and index["val"]["total"] == 300
    assert index["test"]["total"] == 297
