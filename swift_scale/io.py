"""Atomic file publication: a crash leaves the old version or the new one, never a truncated file."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "atomic_write_jsonl", "atomic_save_npy",
           "append_jsonl", "read_jsonl", "fsync_dir", "FileError", "read_json", "load_state_dict", "save_state_dict"]


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], mode: str = "wb") -> None:
    """``write(f)`` into a temp file beside ``path``, fsync it, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, mode) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Publish ``src`` at ``dst`` atomically: a hard link where the filesystem allows (no copy of a large
    checkpoint), else a copy."""
    import shutil

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    fsync_dir(dst.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), "w")


def atomic_save_npy(path: str | os.PathLike, array) -> None:
    """``np.save`` published atomically."""
    import numpy as np

    atomic_write(path, lambda f: np.save(f, array))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def atomic_write_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """Replace a JSON-lines file with ``records``, atomically."""
    atomic_write_text(path, _jsonl(records))


def append_jsonl(path: str | os.PathLike, obj: dict | list[dict]) -> None:
    """Append one JSON line (or several, in one write) and fsync.

    A torn last line (a crash mid-write leaves bytes after the last newline) is ignored by :func:`read_jsonl`
    and cut off here before the new line is written, so it can never turn into a corrupt middle line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = _jsonl(obj if isinstance(obj, list) else [obj]).encode()
    with open(path, "a+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(max(0, size - 1))
            if f.read(1) != b"\n":
                f.truncate(_complete_length(f, size))
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _complete_length(f, size: int, block: int = 1 << 16) -> int:
    """Length of the file's prefix that ends with its last newline (0 when it has none)."""
    end = size
    while end > 0:
        start = max(0, end - block)
        f.seek(start)
        chunk = f.read(end - start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read complete JSON lines; a final line without its newline (torn write) is dropped, not trusted.

    ValueError naming the file and the line for a complete line that is not a JSON object.
    """
    path = Path(path)
    if not path.exists():
        return []
    if not path.is_file():
        raise ValueError(f"{path}: not a file; move it away to start over")
    lines = path.read_bytes().split(b"\n")
    complete = lines[:-1]  # the part after the last "\n" is either empty or a torn write
    out = []
    for i, line in enumerate(complete):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: line {i + 1} is not valid JSON ({e}); delete that line to continue") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: line {i + 1} is not a JSON object; delete that line to continue")
        out.append(rec)
    return out


class FileError(ValueError):
    """A file the user can fix (missing, unreadable, corrupt, of the wrong kind); one line naming it."""


def read_json(path: str | os.PathLike, fix: str) -> Any:
    """Parse a JSON file; :class:`FileError` naming the file and ``fix`` when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileError(f"{path}: {'is a directory, not a file' if path.is_dir() else 'does not exist'}; {fix}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileError(f"{path}: not valid JSON ({type(e).__name__}); {fix}") from None


def load_state_dict(path: str | os.PathLike, *, name: str, fix: str) -> dict:
    """A ``state_dict`` of tensors saved with ``torch.save``, loaded safely (``weights_only=True``: a pickle
    that would run code is refused). A ``{"state_dict": ...}`` wrapper is unwrapped. :class:`FileError`
    ``"{name}: {path} ...; {fix}"`` for a missing file, a folder, garbage, or anything but a tensor mapping."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileError(f"{name}: {path} {'is a directory' if path.is_dir() else 'does not exist'}; {fix}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says what matters
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for garbage, truncation and refused pickles
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise FileError(f"{name}: {path} is not a readable weights file ({type(e).__name__}: {reason}); {fix}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise FileError(f"{name}: {path} holds a {type(obj).__name__}, not a state_dict of tensors; {fix}")
    return obj


def save_state_dict(path: str | os.PathLike, state: dict) -> None:
    """``torch.save`` to a temp file beside ``path``, fsynced, then ``os.replace``d into place."""
    import torch

    atomic_write(path, lambda f: torch.save(state, f))
