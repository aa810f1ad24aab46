"""One sample decoder and one bad-sample policy for every reader (WebDataset tars, HF rows, the stream).

A *raw sample* is a mapping with the image and label fields (``bytes`` as WebDataset stores them, or the values
of a Hugging Face row: an ``Image`` dict, a PIL image, an array, an int) plus ``__url__``/``__key__`` naming where
it came from. :func:`decode_sample` turns it into (uint8 [C, H, W], label) or raises :class:`BadSample` with the
reason; :class:`BadSamplePolicy` decides what a bad sample does (``skip``: recorded, its id never sampled;
``fail``: a one-line :class:`DataError`); :func:`decode_split` decodes a whole split into memory with the
expected image shape taken from ``model.image_size`` or, failing that, the majority of the split — never from
whichever sample happens to come first.
"""

from __future__ import annotations

import functools
import io
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = ["DataError", "BadSample", "BadSamplePolicy", "LoadedSplit", "decode_sample", "decode_split",
           "to_chw", "images_to_input", "missing_field", "read_npy"]


class DataError(ValueError):
    """A user-fixable data problem (missing/corrupt shard, empty split); one line naming the file."""


class BadSample(ValueError):
    """This sample cannot be used; the message is the reason (without the sample's location)."""


@functools.lru_cache(maxsize=256)
def _npy_header(head: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    f = io.BytesIO(head)
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed")
    return dtype, shape, fortran


def read_npy(data: bytes) -> np.ndarray:
    """A ``.npy`` payload as a read-only array, as ``np.load(io.BytesIO(data), allow_pickle=False)`` gives it,
    with each distinct header parsed once (per-sample ``np.load`` spends most of its time re-parsing the same
    header). ValueError if ``data`` is not a whole ``.npy`` of a non-object dtype."""
    if data[:6] != b"\x93NUMPY" or len(data) < 12:
        raise ValueError("not a .npy payload")
    size = 10 + int.from_bytes(data[8:10], "little") if data[6] == 1 else 12 + int.from_bytes(data[8:12], "little")
    dtype, shape, fortran = _npy_header(bytes(data[:size]))
    count = math.prod(shape)
    if len(data) - size != count * dtype.itemsize:
        raise ValueError(f"{len(data) - size} data bytes for {count} items of {dtype}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=size).reshape(shape, order="F" if fortran else "C")


def missing_field(sample: Mapping, image_key: str, label_key: str) -> str | None:
    """Why ``sample`` cannot be used because a field is missing (naming the config keys), or None."""
    missing = [k for k in (image_key, label_key) if k not in sample]
    if not missing:
        return None
    have = sorted(k for k in sample if not str(k).startswith("__"))
    return f"lacks field {missing[0]!r} (has {have}); set data.image_key / data.label_key"


def to_chw(img, in_chans: int, image_size: int) -> np.ndarray:
    """Encoded image bytes, a PIL image, an HF ``Image`` dict ({"bytes", "path"}) or an array [H, W] / [H, W, C]
    → uint8 [C, H, W] (grayscale for ``in_chans`` 1, else RGB; resized to ``image_size`` when it is > 0)."""
    from PIL import Image

    if isinstance(img, (bytes, bytearray, memoryview)):
        img = Image.open(io.BytesIO(bytes(img)))
    elif isinstance(img, dict):
        img = Image.open(io.BytesIO(img["bytes"]) if img.get("bytes") else img["path"])
    elif not isinstance(img, Image.Image):
        arr = np.asarray(img)
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255 if arr.max() <= 1 else 1), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
    img = img.convert("L" if in_chans == 1 else "RGB")
    if image_size and img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def images_to_input(images, device):
    """Stored uint8 images (a torch tensor [B, C, H, W]) → the model's float input in [−1, 1] on ``device``."""
    return images.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)


def _label(value) -> int:
    if isinstance(value, (bytes, bytearray)):
        value = value.decode().strip()
    if isinstance(value, str):
        return int(value)
    if isinstance(value, (bool, float)) and value != int(value):
        raise ValueError(f"non-integer label {value!r}")
    return int(value)


def decode_sample(sample: Mapping, image_key: str, label_key: str, in_chans: int = 1,
                  image_size: int = 0) -> tuple[np.ndarray, int]:
    """(image uint8 [C, H, W], label ≥ 0) of a raw sample; :class:`BadSample` with the reason otherwise."""
    if (why := missing_field(sample, image_key, label_key)) is not None:
        raise BadSample(why)
    try:
        label = _label(sample[label_key])
    except Exception as e:
        raise BadSample(f"has an unreadable label ({type(e).__name__}: {str(e).split(' <')[0]})") from None
    if label < 0:
        raise BadSample(f"has a negative label {label}")
    try:
        img = to_chw(sample[image_key], in_chans, image_size)
    except Exception as e:
        raise BadSample(f"cannot be decoded ({type(e).__name__}: {str(e).split(' <')[0]})") from None
    return img, label


def check_shape(img: np.ndarray, shape: tuple[int, ...] | None, reference: str) -> None:
    """BadSample when ``img`` does not have the expected ``shape`` (None: anything goes)."""
    if shape is not None and img.shape != tuple(shape):
        raise BadSample(f"has shape {img.shape}, {reference} {tuple(shape)}; set model.image_size to resize")


@dataclass
class BadSamplePolicy:
    """What a bad sample does: ``skip`` records (url, key, reason[, id]) in :attr:`errors`; ``fail`` raises a
    one-line :class:`DataError` naming the shard and key. The same policy for every reader and mode."""

    on_error: Literal["skip", "fail"] = "fail"
    errors: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if self.on_error not in ("skip", "fail"):
            raise ValueError(f"on_error must be 'skip' or 'fail', got {self.on_error!r}")

    def __call__(self, url, key, reason: str, gid: int | None = None) -> None:
        if self.on_error == "fail":
            raise DataError(f"{url}: sample {key!r} {reason}; set data.on_error=skip to leave it out")
        entry = {"url": str(url), "key": str(key), "reason": reason}
        self.errors.append(entry if gid is None else {"id": int(gid), **entry})

    def take(self) -> list[dict]:
        """The errors recorded so far, cleared."""
        out, self.errors = self.errors, []
        return out


@dataclass
class LoadedSplit:
    """A decoded split: images uint8 [N, C, H, W], labels int64 [N] (row = global id), ``valid`` bool [N]
    (False where a sample was skipped; its row holds zeros) and the skipped samples as (url, key, reason)."""

    images: np.ndarray
    labels: np.ndarray
    valid: np.ndarray
    errors: list[dict]

    @property
    def shape(self) -> tuple[int, ...]:
        """The [C, H, W] of every valid image."""
        return tuple(self.images.shape[1:])


def decode_split(samples: Iterable[Mapping], num_samples: int, *, image_key: str, label_key: str,
                 in_chans: int = 1, image_size: int = 0, on_error: str = "fail", field: str = "data",
                 source: str = "") -> LoadedSplit:
    """Decode ``num_samples`` raw samples (in global-id order) into memory under one :class:`BadSamplePolicy`.

    The expected image shape is ``(in_chans, image_size, image_size)`` when ``image_size`` is set, otherwise the
    most common shape of the split; the other shapes are bad samples, reported after the decodable ones.
    DataError naming ``field`` when nothing could be decoded.
    """
    policy = BadSamplePolicy(on_error)  # type: ignore[arg-type]
    images: list[np.ndarray | None] = []
    labels = np.zeros(num_samples, dtype=np.int64)
    where: list[tuple[str, str]] = []
    bad: dict[int, str] = {}
    for i, sample in enumerate(samples):
        where.append((str(sample.get("__url__", source)), str(sample.get("__key__", i))))
        try:
            img, labels[i] = decode_sample(sample, image_key, label_key, in_chans, image_size)
        except BadSample as e:
            if on_error == "fail":
                policy(*where[i], str(e))
            bad[i], img = str(e), None
        images.append(img)
    shapes = Counter(im.shape for im in images if im is not None)
    if not shapes:
        first = next(iter(bad.values()), "no samples")
        raise DataError(f"{field}: no sample could be decoded ({len(bad)} bad; first: {first})")
    shape = (in_chans, image_size, image_size) if image_size else shapes.most_common(1)[0][0]
    for i, im in enumerate(images):
        if im is not None and im.shape != shape:
            reason = f"has shape {im.shape}, most of the split {shape}; set model.image_size to resize"
            if on_error == "fail":
                policy(*where[i], reason)
            bad[i], images[i] = reason, None
    for i in sorted(bad):
        policy(*where[i], bad[i])
    zeros = np.zeros(shape, dtype=np.uint8)
    valid = np.array([im is not None for im in images], dtype=bool)
    return LoadedSplit(np.stack([im if im is not None else zeros for im in images]), labels, valid, policy.errors)
