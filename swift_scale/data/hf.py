"""Hugging Face ``datasets`` as a source (indexed mode): the global id of a row is its row index.

A split is named in the config as

- ``hf:PATH`` or ``hf:PATH#SPLIT`` — a dataset saved with ``save_to_disk`` (``load_from_disk``; ``#SPLIT`` picks
  one split of a saved ``DatasetDict``);
- ``hf:BUILDER:FILES`` — local files through a packaged builder, e.g. ``hf:parquet:/data/train-*.parquet``,
  ``hf:imagefolder:/data/train`` (``load_dataset(BUILDER, data_files=FILES or data_dir=DIR, split="train")``);
- ``hf:hub:NAME[@REVISION][:CONFIG][#SPLIT]`` — a dataset on the Hugging Face Hub (or a local folder laid out
  like a Hub repo), e.g. ``hf:hub:HuggingFaceFW/fineweb-edu:sample-10BT#train``. The split defaults to the
  field's (``train``, ``validation``, ``test``). Indexed mode loads it (``load_dataset``, downloaded into the HF
  cache); streaming mode resolves its data files once (``load_dataset_builder``: ``hf://`` URLs pinned to the
  commit) and streams them like ``hf:BUILDER:FILES``, one shard per file, never downloading a whole file.

Rows are grouped into virtual shards of ``rows_per_shard`` consecutive rows, so the features pass splits the
work over ranks exactly as for WebDataset shards (ordinal mod world size), with per-shard completion markers.

Streaming mode (``data.mode=streaming`` over ``hf:BUILDER:FILES``) reads the files as a
``datasets.IterableDataset`` with one shard per file: :func:`hf_stream_files`, :func:`hf_stream_open`,
:func:`hf_shard_rows` and :class:`HFStreamCounter` are the adapters :class:`~swift_scale.data.stream.StreamingSplit`
reads through.
"""

from __future__ import annotations

import os

from swift_scale.config import HF_STREAM_BUILDERS
from swift_scale.data.decode import DataError, LoadedSplit, decode_split
from swift_scale.data.shards import ShardIndex

__all__ = ["is_hf", "parse_hub", "hub_files", "open_hf", "hf_index", "load_hf_split", "pick_column", "hf_stream_files", "hf_stream_open",
           "hf_stream_columns", "hf_shard_rows", "HFStreamCounter", "hf_stream_index"]

BUILDERS = ("parquet", "arrow", "csv", "json", "imagefolder", "webdataset")


def is_hf(ref: str) -> bool:
    return isinstance(ref, str) and ref.startswith("hf:")


def parse_hub(ref: str, field: str = "data") -> tuple[str, str | None, str | None, str]:
    """(name, revision, config, split) of ``hf:hub:NAME[@REVISION][:CONFIG][#SPLIT]``; the split defaults to the
    field's (``data.val`` → ``validation``)."""
    body, _, split = ref[len("hf:hub:"):].partition("#")
    name, _, config = body.partition(":")
    name, _, revision = name.partition("@")
    if not name:
        raise DataError(f"{field}: {ref} names no dataset; give hf:hub:ORG/NAME[@REVISION][:CONFIG][#SPLIT]")
    default = {"val": "validation", "test": "test"}.get(field.rpartition(".")[2], "train")
    return name, revision or None, config or None, split or default


def hub_files(ref: str, field: str = "data.train") -> tuple[str, list[str]]:
    """(packaged builder, data files of the split) of a Hub dataset: what ``load_dataset(NAME, CONFIG,
    streaming=True)`` would stream, resolved once (``hf://`` URLs pinned to the revision's commit)."""
    import datasets

    name, revision, config, split = parse_hub(ref, field)
    try:
        builder = datasets.load_dataset_builder(name, config, revision=revision)
    except Exception as e:  # offline, unknown name or config, gated repo: name the source and the reason
        raise DataError(f"{field}: cannot resolve {ref} ({type(e).__name__}: {str(e).splitlines()[0]}); check the "
                        "name and config, the network, or HF_HUB_OFFLINE with a cached copy") from None
    files = (builder.config.data_files or {}).get(split)
    if not files:
        raise DataError(f"{field}: {ref} has no split {split!r} (splits: {list(builder.config.data_files or {})}); "
                        f"name one as hf:hub:{name}#SPLIT")
    if builder.name not in HF_STREAM_BUILDERS:
        raise DataError(f"{field}: {ref} is stored as {builder.name} files; streaming reads "
                        f"{', '.join(HF_STREAM_BUILDERS)}: use data.mode=indexed")
    return builder.name, [str(f) for f in files]


def open_hf(ref: str, field: str = "data"):
    """The ``datasets.Dataset`` a ``hf:`` reference names (DataError naming ``field`` when it cannot)."""
    import datasets

    body = ref[len("hf:"):]
    builder, _, files = body.partition(":")
    try:
        if builder == "hub":
            name, revision, config, split = parse_hub(ref, field)
            ds = datasets.load_dataset(name, config, split=split, revision=revision)
        elif builder in BUILDERS and files:
            kw = {"data_dir": files} if os.path.isdir(files) else {"data_files": files}
            ds = datasets.load_dataset(builder, split="train", **kw)
        else:
            path, _, split = body.partition("#")
            if not os.path.exists(path):
                raise DataError(f"{field}: {path} does not exist; give hf:DIR saved with save_to_disk, "
                                f"or hf:BUILDER:FILES with BUILDER one of {', '.join(BUILDERS)}")
            ds = datasets.load_from_disk(path)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{field}: {path} holds splits {list(ds)}; name one as hf:{path}#SPLIT")
                ds = ds[split]
    except DataError:
        raise
    except Exception as e:  # datasets raises many types; the user needs the reference and the reason
        raise DataError(f"{field}: cannot open {ref} ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if isinstance(ds, datasets.IterableDataset):
        raise DataError(f"{field}: {ref} is a streaming dataset; the indexed mode needs a map-style Dataset")
    return ds


def is_local(path: str) -> bool:
    """A plain path (not a URL such as ``hf://datasets/...`` or ``s3://...``)."""
    return "://" not in path


def hf_index(ref: str, num_rows: int, rows_per_shard: int = 10_000) -> ShardIndex:
    """A shard table of virtual shards ``REF@START`` of ``rows_per_shard`` consecutive rows."""
    starts = range(0, num_rows, rows_per_shard)
    return ShardIndex([f"{ref}@{s}" for s in starts], [min(rows_per_shard, num_rows - s) for s in starts])


def pick_column(columns: list[str], wanted: str, fallbacks: tuple[str, ...], field: str, key: str) -> str:
    """``wanted`` if present, else the first present fallback; DataError naming the config key otherwise."""
    if wanted in columns:
        return wanted
    for name in fallbacks:
        if name in columns:
            return name
    raise DataError(f"{field}: no column {wanted!r} (columns: {columns}); set data.{key}")


def load_hf_split(ref: str, *, image_key: str = "image", label_key: str = "label", in_chans: int = 1,
                  image_size: int = 0, field: str = "data", on_error: str = "fail") -> LoadedSplit:
    """Decode a whole HF split into memory like :func:`~swift_scale.data.shards.load_split`; row = global id."""
    ds = open_hf(ref, field)
    if len(ds) == 0:
        raise DataError(f"{field}: {ref} has no rows")
    img_col = pick_column(ds.column_names, image_key, ("image", "img", "pixel_values"), field, "image_key")
    lab_col = pick_column(ds.column_names, label_key, ("label", "labels", "cls"), field, "label_key")
    rows = ({**row, "__url__": ref, "__key__": str(i)} for i, row in enumerate(ds.select_columns([img_col, lab_col])))
    return decode_split(rows, len(ds), image_key=img_col, label_key=lab_col, in_chans=in_chans,
                        image_size=image_size, on_error=on_error, field=field, source=ref)


# -- streaming: one HF shard per data file ------------------------------------------------------------------
def hf_stream_files(ref: str, field: str = "data.train") -> list[str]:
    """The shard urls ``hf:BUILDER:FILE`` of a streaming HF source, one per data file, sorted."""
    import glob

    _, builder, pattern = ref.split(":", 2)
    if builder == "hub":
        builder, files = hub_files(ref, field)
        return [f"hf:{builder}:{f}" for f in files]
    if builder not in HF_STREAM_BUILDERS:
        raise DataError(f"{field}: streaming reads hf:BUILDER:FILES with BUILDER one of "
                        f"{', '.join(HF_STREAM_BUILDERS)}, got {builder!r}")
    if os.path.isdir(pattern):  # e.g. a save_to_disk folder: its data files, not state.json
        suffixes = {"parquet": (".parquet",), "arrow": (".arrow",), "json": (".json", ".jsonl"), "csv": (".csv",)}
        files = sorted(os.path.join(pattern, f) for f in os.listdir(pattern) if f.endswith(suffixes[builder]))
    elif any(c in pattern for c in "*?["):
        files = sorted(glob.glob(pattern))
    else:
        files = [pattern]
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        raise DataError(f"{field}: {pattern} names no {builder} files")
    return [f"hf:{builder}:{f}" for f in files]


def hf_stream_open(urls: list[str], field: str = "data.train"):
    """The ``datasets.IterableDataset`` (``load_dataset(BUILDER, data_files=..., streaming=True)``) over a split's
    files, one HF shard per file; ``Image`` columns are cast to ``decode=False`` so rows stay raw until kept."""
    import datasets

    builder = urls[0].split(":")[1]
    files = [u.split(":", 2)[2] for u in urls]
    try:
        ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=True)
    except Exception as e:  # datasets raises many types; name the source and the reason
        raise DataError(f"{field}: cannot stream {builder} files {files[0]}… "
                        f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if ds.num_shards != len(files):
        raise DataError(f"{field}: datasets made {ds.num_shards} shards of {len(files)} {builder} files; "
                        f"streaming needs one per file")
    for name, feature in (ds.features or {}).items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    return ds


def hf_stream_columns(ds) -> list[str]:
    """Column names of a streaming dataset (from its features, else from its first row)."""
    return list(ds.features) if ds.features else list(next(iter(ds)).keys())


def hf_shard_rows(ds, shard: int, columns: list[str], url: str):
    """The rows of HF shard ``shard`` (= one data file) in stored order: ``split_dataset_by_node`` with one "node"
    per shard, iterated with ``IterableDataset.iter`` — which, unlike ``iter(ds)``, does not re-shard itself over
    DataLoader workers, so the rank/worker ranges computed by :class:`StreamingSplit` hold."""
    from datasets.distributed import split_dataset_by_node

    part = split_dataset_by_node(ds.select_columns(columns), rank=shard, world_size=ds.num_shards)
    pos = 0
    for table in part.with_format("arrow").iter(batch_size=256):
        for row in table.to_pylist():
            row["__url__"], row["__key__"] = url, str(pos)
            pos += 1
            yield row


class HFStreamCounter:
    """Rows per file of a streaming HF source: parquet from the footers (no data read), other builders by
    reading one column of the shard. Callable on a shard ordinal, for the parallel index pass."""

    def __init__(self, urls: list[str], field: str = "data.train"):
        self.urls, self.field, self._ds = urls, field, None

    def __call__(self, i: int) -> int:
        url = self.urls[i]
        path = url.split(":", 2)[2]
        try:
            if url.startswith("hf:parquet:"):
                import pyarrow.parquet as pq

                if is_local(path):
                    return pq.ParquetFile(path).metadata.num_rows
                import fsspec

                with fsspec.open(path, "rb") as f:  # the footer only (a few ranged reads), not the file
                    return pq.ParquetFile(f).metadata.num_rows
            if self._ds is None:
                self._ds = hf_stream_open(self.urls, self.field)
            return sum(1 for _ in hf_shard_rows(self._ds, i, hf_stream_columns(self._ds)[:1], url))
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{path}: not a readable {url.split(':')[1]} file ({type(e).__name__}: {e})") from None


def hf_stream_index(ref: str, field: str = "data.train") -> ShardIndex:
    """The shard table of ``hf:BUILDER:FILES`` for streaming (one process; the pipeline counts in parallel)."""
    urls = hf_stream_files(ref, field)
    count = HFStreamCounter(urls, field)
    return ShardIndex(urls, [count(i) for i in range(len(urls))])
