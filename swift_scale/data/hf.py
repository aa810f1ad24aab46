"""Hugging Face ``datasets`` as a source (indexed mode): the global id of a row is its row index.

A split is named in the config as

- ``hf:PATH`` or ``hf:PATH#SPLIT`` — a dataset saved with ``save_to_disk`` (``load_from_disk``; ``#SPLIT`` picks
  one split of a saved ``DatasetDict``);
- ``hf:BUILDER:FILES`` — local files through a packaged builder, e.g. ``hf:parquet:/data/train-*.parquet``,
  ``hf:imagefolder:/data/train`` (``load_dataset(BUILDER, data_files=FILES or data_dir=DIR, split="train")``).

Rows are grouped into virtual shards of ``rows_per_shard`` consecutive rows, so the features pass splits the
work over ranks exactly as for WebDataset shards (ordinal mod world size), with per-shard completion markers.
"""

from __future__ import annotations

import os

from swift_scale.data.decode import DataError, LoadedSplit, decode_split
from swift_scale.data.shards import ShardIndex

__all__ = ["is_hf", "open_hf", "hf_index", "load_hf_split"]

BUILDERS = ("parquet", "arrow", "csv", "json", "imagefolder", "webdataset")


def is_hf(ref: str) -> bool:
    return isinstance(ref, str) and ref.startswith("hf:")


def open_hf(ref: str, field: str = "data"):
    """The ``datasets.Dataset`` a ``hf:`` reference names (DataError naming ``field`` when it cannot)."""
    import datasets

    body = ref[len("hf:"):]
    builder, _, files = body.partition(":")
    try:
        if builder in BUILDERS and files:
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
