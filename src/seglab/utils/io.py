"""Run-folder outputs written so that a failure never leaves a half-written file behind."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch

from seglab.utils.safe_load import UntrustedFileError, read_torch_file

__all__ = [
    "atomic_link",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_checkpoint",
    "move_aside",
    "stage_bytes",
    "to_builtin",
    "write_json",
]

log = logging.getLogger(__name__)


def _file_mode(path: Path) -> int:
    """The mode a plain ``open(path, "w")`` would give: the old file's, else 0o666 less umask."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temporary_beside(path: Path) -> Path:
    """A fresh, unused name ``.<name>.<random>.tmp`` in ``path``'s folder (same file system, so
    that the rename over ``path`` is atomic; hidden, so that globs of ``*.ckpt`` skip it)."""
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; expected a file path to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into: a temporary file beside ``path``,
    flushed to disk and renamed over ``path`` when the block ends without an exception, and
    removed when it raises. Readers see the old file or the new one, never a part of either."""
    path = Path(path)
    tmp = _temporary_beside(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), _file_mode(path))  # mkstemp makes it 0o600
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def stage_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a new hidden file beside ``path`` (flushed to disk, with the mode
    ``path`` would get) and return its name; ``os.replace(staged, path)`` later puts it in place
    in one step. A set of files is so written in full before any of them replaces an earlier
    one; the caller deletes the staged files if it gives up."""
    path = Path(path)
    tmp = _temporary_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), _file_mode(path))
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``atomic_open``: the old file or the new one, never a
    part of either."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_link(source: str | Path, path: str | Path) -> None:
    """Make ``path`` a hard link of the file ``source`` (one copy on disk, two names), replacing
    ``path`` atomically if it exists.

    Replacing either name later with ``atomic_open`` gives that name a new file and leaves the
    other's content as it was; deleting one name keeps the other. Raises ``OSError`` where the
    file system has no hard links (or ``source`` is on another one): callers then write a copy.
    """
    source, path = Path(source), Path(path)
    if path.exists() and os.path.samefile(source, path):
        return  # rename(2) of a name onto another name of the same file does nothing
    tmp = _temporary_beside(path)
    tmp.unlink()
    try:
        os.link(source, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """``atomic_write_bytes`` for UTF-8 text."""
    atomic_write_bytes(path, text.encode())


def to_builtin(value: Any) -> Any:
    """Tensors and numpy scalars to floats / lists; NaN and infinities to None (JSON has none)."""
    if isinstance(value, torch.Tensor):
        value = value.tolist() if value.numel() > 1 else value.item()
    if isinstance(value, dict):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_builtin(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as strict JSON, atomically; nothing is touched if it does not serialise."""
    text = json.dumps(to_builtin(data), indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_text(path, text)


def move_aside(path: str | Path) -> Path | None:
    """Rename an existing ``path`` to ``<stem>.before-<its mtime><suffix>`` beside it.

    A run reusing a folder calls this on its result files before it starts, so that a failure
    cannot leave an earlier run's file looking like this run's, and nothing is deleted.
    Returns the new path, or None when ``path`` did not exist.
    """
    path = Path(path)
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
    target = path.with_name(f"{path.stem}.before-{stamp}{path.suffix}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.stem}.before-{stamp}-{n}{path.suffix}")
        n += 1
    os.replace(path, target)
    log.warning("%s is from an earlier run in this folder: moved to %s", path, target.name)
    return target


def load_checkpoint(
    path: str | Path | None, key: str = "ckpt_path", *, trust: bool = False
) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU as data only, with an error naming ``key`` and the
    file when it is missing, a folder, empty, truncated, not a checkpoint or without a
    ``state_dict``.

    A checkpoint holding anything but plain data (tensors, numbers, strings, lists, dicts) is
    refused before any of its code runs (``seglab.utils.safe_load.UntrustedFileError``), unless
    ``trust`` (the config's ``trust_checkpoint=true``): then it loads in full, with a warning.
    """
    expected = "expected a .ckpt file written by seglab's train (checkpoints/last.ckpt or the best)"
    if path is None or str(path) == "":
        raise ValueError(f"{key} is not set; {expected}")
    path = Path(path).expanduser()
    where = f"{key}={str(path)!r}"
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.ckpt"))[:5]
        hint = f" (it holds {', '.join(found)})" if found else ""
        raise IsADirectoryError(f"{where}: is a folder{hint}; {expected}")
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such checkpoint file; {expected}")
    if path.stat().st_size == 0:
        raise ValueError(f"{where}: the file is empty (0 bytes); {expected}")
    try:
        checkpoint = read_torch_file(path, where, trust=trust)
    except UntrustedFileError:
        raise
    except Exception as err:
        reason = str(err).split(". ")[0]  # torch's zip-reader errors run on for several lines
        raise ValueError(
            f"{where}: not a readable checkpoint, truncated or corrupt ({type(err).__name__}: "
            f"{reason}); {expected}"
        ) from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        what = (
            f"a dict with the keys {sorted(map(str, checkpoint))[:8]}"
            if isinstance(checkpoint, dict)
            else f"a {type(checkpoint).__name__}"
        )
        raise ValueError(f"{where}: holds {what}, no 'state_dict' of weights; {expected}")
    return checkpoint
