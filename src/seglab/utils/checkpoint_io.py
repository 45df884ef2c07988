"""Checkpoint files that are never half-written, and one copy on disk for the best and the last.

``AtomicCheckpointIO`` is the ``CheckpointIO`` plugin every trainer of seglab gets
(``seglab.utils.instantiate.build_trainer``), so every file Lightning writes through
``ModelCheckpoint`` or ``Trainer.save_checkpoint`` goes through it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

from seglab.utils.io import atomic_link, atomic_open

__all__ = ["AtomicCheckpointIO", "training_state"]

log = logging.getLogger(__name__)

# tensors up to this many bytes are compared by content; larger ones by storage and version
_HASHED_BYTES = 1 << 20


def _freeze(value: Any, keep: list[torch.Tensor]) -> Any:
    """A comparable stand-in of a checkpoint entry: containers as tuples, small tensors by their
    bytes, large tensors (weights, optimizer moments) by their address, layout and in-place
    version counter, which every optimizer step or in-place change bumps. The large tensors are
    appended to ``keep``: while the caller holds them, no other tensor can take their address."""
    if isinstance(value, torch.Tensor):
        head = (value.dtype, tuple(value.shape), str(value.device), value.layout)
        try:
            if value.numel() * value.element_size() <= _HASHED_BYTES:
                data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
                return ("tensor", *head, hashlib.blake2b(data.tobytes(), digest_size=16).digest())
            keep.append(value)
            return ("tensor@", *head, value.stride(), value.data_ptr(), value._version)
        except RuntimeError:  # sparse, quantized, ...: never equal, written in full
            return ("tensor?", id(value))
    if isinstance(value, Mapping):
        items = ((str(k), _freeze(v, keep)) for k, v in value.items())
        return tuple(sorted(items, key=lambda i: i[0]))
    if isinstance(value, list | tuple):
        return (type(value).__name__, *(_freeze(v, keep) for v in value))
    if isinstance(value, int | float | str | bytes | bool | type(None)):
        return value
    return (type(value).__qualname__, repr(value))


def training_state(checkpoint: Mapping[str, Any], keep: list[torch.Tensor]) -> Any:
    """What a checkpoint holds apart from the callbacks' own states, as a comparable value
    (``keep``: see ``_freeze``).

    Two ``ModelCheckpoint`` callbacks saving in one hook (the best and ``last.ckpt``) dump the
    same weights, optimizer, loops and random states; only the entries under ``callbacks``
    differ (each callback's record of its own files). Equal values: the same training state.
    """
    return _freeze({k: v for k, v in checkpoint.items() if k != "callbacks"}, keep)


@dataclass(frozen=True)
class _Written:
    path: Path
    state: Any
    stat: tuple[int, int, int, int]  # device, inode, size, mtime_ns right after writing
    tensors: list[torch.Tensor]  # the large tensors ``state`` names by address, kept alive


def _stat(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes a local checkpoint to ``.<name>.<random>.tmp`` beside
    it, flushes it to disk (fsync) and renames it over the target: a crash, a full disk or a
    kill mid-write leaves the previous file whole and no partial file under the real name.
    ``torch.save`` streams into the temporary file, so the checkpoint is never held twice in
    memory (Lightning's own save serialises into a buffer first, and its fsspec transaction
    stages the file in the system's temporary folder, then copies it across file systems).

    A checkpoint whose training state (``training_state``) equals the one this plugin wrote
    just before, to a file still as it left it, becomes a hard link of that file instead of a
    second copy: the best and ``last.ckpt`` of the same epoch take the disk space of one.
    A hard link, not a symbolic one: each name is a whole file. When ``last.ckpt`` is written
    again it is renamed over with a new file and the best keeps its content; when the best is
    deleted (a better epoch came), ``last.ckpt`` keeps its own. A symbolic ``last.ckpt`` would
    dangle once its target is deleted. The linked file keeps the first writer's callback
    states, which differ from the second's only in that callback's record of its own files.
    Where the file system has no hard links, the second file is written in full. The plugin
    holds the large tensors of the file it wrote last until the next save; in seglab's trainers
    they are the live weights and optimizer state, so this costs no memory.

    ``entries`` are added to every checkpoint that lacks them: the run's config
    (``seglab_config``), which eval and predict read. ``EmbedConfig`` adds it from a callback
    hook, and Lightning runs no callback hook for a weights-only checkpoint
    (``callbacks.model_checkpoint.save_weights_only=true``).

    Remote paths (``s3://``, ...) go to Lightning's own fsspec writer.
    """

    def __init__(self, entries: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.entries = dict(entries or {})
        self._last: _Written | None = None

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        for key, value in self.entries.items():
            checkpoint.setdefault(key, value)
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        tensors: list[torch.Tensor] = []
        state = training_state(checkpoint, tensors)
        if self._link_last(path, state):
            return
        self._last = None
        with atomic_open(path) as f:
            torch.save(checkpoint, f)
        self._last = _Written(path, state, _stat(path), tensors)

    def _link_last(self, path: Path, state: Any) -> bool:
        """Link ``path`` to the file written last if it holds ``state`` and is untouched."""
        last = self._last
        if last is None or last.path == path or last.state != state:
            return False
        try:
            if _stat(last.path) != last.stat:
                return False
            atomic_link(last.path, path)
        except OSError as err:
            log.debug("no hard link %s -> %s (%s): writing a copy", path, last.path, err)
            return False
        return True

    def remove_checkpoint(self, path: str | Path) -> None:
        super().remove_checkpoint(path)
        if self._last is not None and self._last.path == Path(path):
            self._last = None
