"""WebDataset shards: expansion, the shard table (global ids), and loading a split into memory.

Global id of a sample = offset[shard] + its position in the shard, where shards keep the order of the
pattern and offset is the cumulative sample count (docs/design.md §2). The table is O(#shards) and is cached in the
run folder as ``index.json``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import webdataset as wds
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from swift_scale.data.decode import DataError, LoadedSplit, decode_split

__all__ = ["DataError", "ShardIndex", "LoadedSplit", "expand_shards", "build_index", "load_split", "tar_members",
           "tar_samples"]


def expand_shards(pattern: str, *, allow_pipe: bool = False, field: str = "data") -> list[str]:
    """Expand a brace pattern (``train-{000000..000009}.tar``; several patterns separated by ``::``) and check
    the shards: local ones must be readable files, ``pipe:`` needs ``allow_pipe``, and the first ``http(s)://``
    shard must answer within seconds (instead of webdataset's minute of curl retries when offline)."""
    urls = expand_urls(pattern)
    if not urls:
        raise DataError(f"{field}: pattern {pattern!r} names no shards")
    for url in urls:
        if url.startswith("pipe:") and not allow_pipe:
            raise DataError(f"{field}: {url!r} is a pipe: URL, which runs a shell command; "
                            "set data.allow_pipe=true only if you trust this config")
        local = local_path(url)
        if local is None:
            continue
        if not os.path.exists(local):
            raise DataError(f"{field}: shard {local} does not exist; check the pattern or write the shards first")
        if not os.path.isfile(local):
            raise DataError(f"{field}: shard {local} is a directory, not a tar file; check the pattern")
        if not os.access(local, os.R_OK):
            raise DataError(f"{field}: shard {local} is not readable (permission denied)")
    remote = next((u for u in urls if u.startswith(("http://", "https://"))), None)
    if remote is not None:
        check_reachable(remote, field)
    return urls


def check_reachable(url: str, field: str, timeout: float = 10.0) -> None:
    """DataError naming ``url`` unless an HTTP HEAD request to it is answered within ``timeout`` seconds."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError as e:
        if e.code in (403, 404, 410):
            raise DataError(f"{field}: {url} answered HTTP {e.code}; check the address") from None
        # other statuses (405: HEAD not allowed, …): the server is there; the reader will tell
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(f"{field}: cannot reach {url} ({reason}); check the address and the network") from None


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


_EMPTY_BLOCK = bytes(512)
_META = re.compile(r"__[^/]*__($|/)")  # webdataset.tariterators.tar_file_iterator's skip_meta


def tar_members(path: str):
    """(name, data offset, size) of every regular file of a local tar, in stored order, from the 512-byte
    headers alone (payloads are seeked over, never read). Checksums are verified; ustar prefixes, GNU long
    names and pax ``path`` records are honoured. About 15× faster than :mod:`tarfile` per member, which is what
    lets a sampled streaming pass skip rejected samples nearly for free. DataError naming ``path`` if the tar is
    corrupt or truncated."""
    def corrupt(why: str):
        return DataError(f"{path}: corrupt or truncated tar ({why}); rewrite this shard")

    with open(path, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        pos, long_name = 0, None
        while True:
            f.seek(pos)
            h = f.read(512)
            if len(h) < 512 or h == _EMPTY_BLOCK:  # end-of-archive: a zero block
                if 0 < len(h) < 512:
                    raise corrupt(f"partial header at byte {pos}")
                if not h and pos > 0:  # members but no end-of-archive block: cut at a member boundary
                    raise corrupt(f"no end-of-archive block after byte {pos}")
                return
            try:
                size = int(h[124:136].strip(b"\0 ") or b"0", 8)
                checksum = int(h[148:156].strip(b"\0 "), 8)
            except ValueError:
                raise corrupt(f"bad header at byte {pos}") from None
            if checksum != sum(h[:148]) + 256 + sum(h[156:]):
                raise corrupt(f"header checksum mismatch at byte {pos}")
            data, kind = pos + 512, h[156:157]
            pos = data + (size + 511) // 512 * 512
            if data + size > end:
                raise corrupt(f"member at byte {data - 512} runs past the end of the file")
            if kind in (b"L", b"x"):  # the next member's name: GNU long name / pax extended header
                f.seek(data)
                payload = f.read(size).decode("utf-8", "replace")
                if kind == b"L":
                    long_name = payload.rstrip("\0")
                else:
                    long_name = next((r.split(" path=", 1)[1] for r in payload.split("\n") if " path=" in r),
                                     long_name)
                continue
            name, long_name = long_name, None
            if kind not in (b"0", b"\0", b"7"):
                continue
            if name is None:
                name = h[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
                prefix = h[345:500].split(b"\0", 1)[0]
                if h[257:262] == b"ustar" and prefix:
                    name = prefix.decode("utf-8", "replace") + "/" + name
            yield name, data, size


def tar_samples(path: str, want=None):
    """The samples of a local tar as webdataset groups them (consecutive members sharing a key; suffixes
    lower-cased; webdataset's ``__meta__`` members and names without an extension skipped): yields (position,
    sample dict with ``__key__``/``__url__``). ``want(position)`` is asked once per sample before any of its payload is read:
    True reads and yields it, False seeks past it, None stops."""
    with open(path, "rb") as f:
        pos, key, take = -1, None, False
        sample: dict[str, Any] | None = None
        for name, offset, size in tar_members(path):
            if _META.match(name) or ("/" not in name and name.startswith("__") and name.endswith("__")):
                continue  # webdataset's metadata members
            prefix, suffix = base_plus_ext(name)
            if prefix is None:
                continue
            if prefix != key:
                if sample is not None:
                    yield pos, sample
                pos, key, sample = pos + 1, prefix, None
                take = True if want is None else want(pos)
                if take is None:
                    return
                if take:
                    sample = {"__key__": prefix, "__url__": path}
            if take:
                suffix = suffix.lower()
                assert sample is not None
                if suffix in sample:
                    raise DataError(f"{path}: sample {prefix!r} has two {suffix!r} files")
                f.seek(offset)
                sample[suffix] = f.read(size)
        if sample is not None:
            yield pos, sample


def local_path(url: str) -> str | None:
    """The file a shard url names (a path, ``file:PATH`` or ``file://PATH``), or None for remote
    (``scheme://``) and ``pipe:`` urls."""
    if url.startswith("file://"):
        return url[len("file://"):]
    if url.startswith("file:"):
        return url[len("file:"):]
    if "://" in url or url.startswith("pipe:"):
        return None
    return url


def raw_samples(url: str):
    """Raw samples of one shard in stored order: local tars through :func:`tar_samples`, others through
    webdataset's reader (the same grouping)."""
    local = local_path(url)
    if local is None:
        return wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples())
    return (sample for _, sample in tar_samples(local))


def _count_local_tar(path: str) -> int:
    """Number of samples (distinct consecutive keys) in a tar, reading headers only."""
    count = 0

    def skip(_pos: int) -> bool:
        nonlocal count
        count += 1
        return False

    for _ in tar_samples(path, skip):
        pass
    return count


def build_index(urls: list[str]) -> ShardIndex:
    """Count samples in every shard (local files by their tar headers, others by a raw WebDataset pass)."""
    counts = []
    for url in urls:
        if (local := local_path(url)) is not None:
            counts.append(_count_local_tar(local))
        else:
            counts.append(sum(1 for _ in raw_samples(url)))
    return ShardIndex(urls, counts)


def load_split(index: ShardIndex, *, image_key: str = "png", label_key: str = "cls", in_chans: int = 1,
               image_size: int = 0, field: str = "data", on_error: str = "fail") -> LoadedSplit:
    """Decode a whole split of WebDataset shards into memory, keeping global ids as row numbers.

    Bad samples follow :func:`~swift_scale.data.decode.decode_split` (``on_error="fail"``: a one-line
    :class:`DataError` naming the shard and key; ``"skip"``: recorded, the row stays, marked invalid, so global
    ids never shift). A shard that cannot be read at all always fails.
    """
    if index.total == 0:
        raise DataError(f"{field}: the split has no samples ({len(index.urls)} shard(s), all empty)")
    return decode_split(_indexed_samples(index), index.total, image_key=image_key, label_key=label_key,
                        in_chans=in_chans, image_size=image_size, on_error=on_error, field=field)


def _indexed_samples(index: ShardIndex):
    """Every raw sample of the split in global-id order, checked against the shard table's counts."""
    for url, count in zip(index.urls, index.counts):
        n = 0
        try:
            for sample in raw_samples(url):
                if n >= count:
                    raise DataError(f"{url}: more samples than indexed; delete the run's index.json")
                n += 1
                yield sample
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{url}: unreadable shard ({type(e).__name__}: {e})") from None
        if n != count:
            raise DataError(f"{url}: {n} samples read but {count} indexed; the shard changed — delete index.json")
