"""WebDataset shards: expansion, the shard table (global ids), and loading a split into memory.

Global id of a sample = offset[shard] + its position in the shard, where shards keep the order of the
pattern and offset is the cumulative sample count (DESIGN §2). The table is O(#shards) and is cached in the
run folder as ``index.json``.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass

import numpy as np
import webdataset as wds
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

__all__ = ["DataError", "ShardIndex", "LoadedSplit", "expand_shards", "build_index", "load_split"]


class DataError(ValueError):
    """A user-fixable data problem (missing/corrupt shard, empty split); one line naming the file."""


def expand_shards(pattern: str, *, allow_pipe: bool = False, field: str = "data") -> list[str]:
    """Expand a brace pattern (``train-{000000..000009}.tar``; several patterns separated by ``::``)."""
    urls = expand_urls(pattern)
    if not urls:
        raise DataError(f"{field}: pattern {pattern!r} names no shards")
    for url in urls:
        if url.startswith("pipe:") and not allow_pipe:
            raise DataError(f"{field}: {url!r} is a pipe: URL, which runs a shell command; "
                            "set data.allow_pipe=true only if you trust this config")
        local = url[len("file:"):] if url.startswith("file:") else url
        if "://" not in url and not url.startswith("pipe:") and not os.path.exists(local):
            raise DataError(f"{field}: shard {local} does not exist; check the pattern or write the shards first")
    return urls


@dataclass
class ShardIndex:
    """The shard table of one split: ordered urls, per-shard sample counts and id offsets."""

    urls: list[str]
    counts: list[int]

    @property
    def offsets(self) -> list[int]:
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(int).tolist() if self.counts else []

    @property
    def total(self) -> int:
        return int(sum(self.counts))

    def to_dict(self) -> dict:
        return {"urls": self.urls, "counts": self.counts, "offsets": self.offsets, "total": self.total}

    @classmethod
    def from_dict(cls, d: dict) -> ShardIndex:
        return cls(list(d["urls"]), [int(c) for c in d["counts"]])


def _count_local_tar(path: str) -> int:
    """Number of samples (distinct consecutive keys) in a tar, reading headers only."""
    keys, last = 0, None
    try:
        with tarfile.open(path, "r|*") as tf:  # streaming mode: headers, skipping payloads
            for member in tf:
                if not member.isfile():
                    continue
                prefix, _ = base_plus_ext(member.name)
                if prefix is None or os.path.basename(member.name).startswith("__"):
                    continue
                if prefix != last:
                    keys, last = keys + 1, prefix
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: corrupt or truncated tar ({e}); rewrite this shard") from None
    return keys


def build_index(urls: list[str]) -> ShardIndex:
    """Count samples in every shard (local files by their tar headers, others by a raw WebDataset pass)."""
    counts = []
    for url in urls:
        local = url[len("file:"):] if url.startswith("file:") else url
        if "://" not in url and not url.startswith("pipe:"):
            counts.append(_count_local_tar(local))
        else:
            counts.append(sum(1 for _ in wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples())))
    return ShardIndex(urls, counts)


def _decode_image(data: bytes, in_chans: int, image_size: int) -> np.ndarray:
    from PIL import Image

    return to_chw(Image.open(io.BytesIO(data)), in_chans, image_size)


def images_to_input(images, device):
    """Stored uint8 images (a torch tensor [B, C, H, W]) → the model's float input in [−1, 1] on ``device``."""
    return images.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)


def to_chw(img, in_chans: int, image_size: int) -> np.ndarray:
    """A PIL image, an HF ``Image`` dict ({"bytes", "path"}) or an array [H, W] / [H, W, C] → uint8 [C, H, W]."""
    from PIL import Image

    if isinstance(img, dict):
        img = Image.open(io.BytesIO(img["bytes"]) if img.get("bytes") else img["path"])
    elif not isinstance(img, Image.Image):
        arr = np.asarray(img)
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255 if arr.max() <= 1 else 1), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
    img = img.convert("L" if in_chans == 1 else "RGB")
    if image_size and img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


@dataclass
class LoadedSplit:
    """A decoded split: images uint8 [N, C, H, W], labels int64 [N] (row = global id), ``valid`` bool [N]
    (False where a sample was skipped; its row holds zeros) and the skipped samples as (url, key, reason)."""

    images: np.ndarray
    labels: np.ndarray
    valid: np.ndarray
    errors: list[dict]


def load_split(index: ShardIndex, *, image_key: str = "png", label_key: str = "cls", in_chans: int = 1,
               image_size: int = 0, field: str = "data", on_error: str = "fail") -> LoadedSplit:
    """Decode a whole split into memory, keeping global ids as row numbers.

    ``on_error="fail"`` stops at the first bad sample (undecodable image, missing field or label, wrong shape)
    with a one-line :class:`DataError` naming the shard and key; ``"skip"`` records it and goes on (the row
    stays, marked invalid, so global ids never shift). A shard that cannot be read at all always fails.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    if index.total == 0:
        raise DataError(f"{field}: the split has no samples ({len(index.urls)} shard(s), all empty)")
    images: list[np.ndarray | None] = []
    labels = np.zeros(index.total, dtype=np.int64)
    errors: list[dict] = []
    shape = None

    def bad(url, key, reason):
        if on_error == "fail":
            raise DataError(f"{url}: sample {key!r} {reason}")
        errors.append({"url": url, "key": key, "reason": reason})
        images.append(None)

    for url, offset, count in zip(index.urls, index.offsets, index.counts):
        pipe = wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples())
        n = 0
        try:
            for sample in pipe:
                if n >= count:
                    raise DataError(f"{url}: more samples than indexed; delete the run's index.json")
                key = sample.get("__key__")
                n += 1
                missing = [k for k in (image_key, label_key) if k not in sample]
                if missing:
                    have = sorted(k for k in sample if not k.startswith("__"))
                    bad(url, key, f"lacks field {missing[0]!r} (has {have}); set data.image_key / data.label_key")
                    continue
                try:
                    img = _decode_image(sample[image_key], in_chans, image_size)
                    label = int(sample[label_key].decode().strip())
                except Exception as e:
                    bad(url, key, f"cannot be decoded ({type(e).__name__}: {str(e).split(' <')[0]})")
                    continue
                if label < 0:
                    bad(url, key, f"has a negative label {label}")
                    continue
                if shape is not None and img.shape != shape:
                    bad(url, key, f"has shape {img.shape}, others {shape}; set model.image_size to resize")
                    continue
                shape = img.shape
                images.append(img)
                labels[offset + n - 1] = label
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{url}: unreadable shard ({type(e).__name__}: {e})") from None
        if n != count:
            raise DataError(f"{url}: {n} samples read but {count} indexed; the shard changed — delete index.json")
    if shape is None:
        raise DataError(f"{field}: no sample could be decoded ({len(errors)} skipped; first: {errors[0]})")
    valid = np.array([im is not None for im in images])
    zeros = np.zeros(shape, dtype=np.uint8)
    return LoadedSplit(np.stack([im if im is not None else zeros for im in images]), labels, valid, errors)
