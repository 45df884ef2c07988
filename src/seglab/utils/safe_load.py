"""Checkpoints and weights files read as data, never run as code.

A ``.ckpt`` or ``.pth`` file is a pickle, and unpickling one in full calls whatever functions it
names: a file received from elsewhere could run any command. ``read_torch_file`` loads with
``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, tuples, dicts only) and
refuses anything else with one line naming the file, what it holds and where, and the opt-in
``trust_checkpoint=true``. With the opt-in (``trust=True`` or inside ``trust_checkpoints``) such a
file loads in full, with a warning naming it.

A checkpoint's saved config is read as data too: ``check_config_targets`` refuses a ``_target_``
that none of the project's own configs (``conf/``) names, since instantiating it would call any
function the file chose (Hydra's own target policy blocks a list of known-dangerous targets, but
not, say, ``torch.load`` of another pickle with ``weights_only=False``).
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "TRUST_KEY",
    "UntrustedFileError",
    "check_config_targets",
    "read_torch_file",
    "trust_checkpoints",
]

log = logging.getLogger(__name__)

# the top-level config key of the opt-in (conf/train.yaml, eval.yaml, predict.yaml)
TRUST_KEY = "trust_checkpoint"
_TRUSTED: ContextVar[bool] = ContextVar(TRUST_KEY, default=False)
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_TARGET = re.compile(r"_target_:\s*[\"']?([A-Za-z_][\w.]*)")
_MAX_NAMED = 3


class UntrustedFileError(ValueError):
    """A file or config holds code or objects that are not plain data, and is not trusted."""


@contextmanager
def trust_checkpoints(trust: bool) -> Iterator[None]:
    """Within the block, ``read_torch_file`` calls that do not say ``trust`` take this one: how
    the networks' weights files (``model.net.*weights``) follow ``trust_checkpoint``."""
    token = _TRUSTED.set(bool(trust))
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def read_torch_file(
    path: str | Path, where: str, *, trust: bool | None = None, mmap: bool = False
) -> Any:
    """``torch.load`` of ``path`` on the CPU with ``weights_only=True``.

    ``where`` names the file in messages (``ckpt_path='run/last.ckpt'``). A file that holds
    objects ``weights_only`` refuses raises ``UntrustedFileError`` before any of its code runs,
    unless ``trust`` (default: the enclosing ``trust_checkpoints``, else False): then it loads in
    full, with a warning. Other failures (truncated, not a torch file) raise torch's own error.
    """
    trust = _TRUSTED.get() if trust is None else trust
    try:
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as err:
        names = _unsafe_globals(path, str(err))
        if not names:
            raise
        found = _describe(names, _entries_holding(path, names))
    if not trust:
        raise UntrustedFileError(
            f"{where}: holds code or objects that are not plain data ({found}); refused, as "
            f"loading it could run that code. If you trust this file and where it came from, "
            f"add {TRUST_KEY}=true"
        )
    log.warning(
        "%s=true: loading %s in full although it holds objects that are not plain data (%s); "
        "any code they name runs now",
        TRUST_KEY,
        where,
        found,
    )
    return torch.load(path, map_location="cpu", mmap=mmap, weights_only=False)


def check_config_targets(config: Any, where: str, *, trust: bool = False) -> None:
    """Refuse a checkpoint's saved ``config`` (plain dicts and lists) when one of its
    ``_target_`` values is not a target of the project's own configs (``conf/`` and the Hydra
    job's other config folders).

    Instantiating a config calls its targets with its arguments; a crafted file could name
    ``os.system``. With ``trust`` the targets are only logged in a warning.

    Raises:
        UntrustedFileError: naming ``where``, the target and its key, and ``trust_checkpoint``.
    """
    allowed = _conf_targets()
    strange = [
        f"{target!r} at {key}"
        for key, target in _targets(config, "")
        if not isinstance(target, str) or target not in allowed
    ]
    if not strange:
        return
    found = ", ".join(strange[:_MAX_NAMED]) + (" ..." if len(strange) > _MAX_NAMED else "")
    if not trust:
        raise UntrustedFileError(
            f"{where}: its saved config builds {found}, a target no config in conf/ uses; "
            f"refused, as building it could run any code. If you trust this file and where it "
            f"came from, add {TRUST_KEY}=true"
        )
    log.warning("%s=true: building %s's saved config with %s", TRUST_KEY, where, found)


def _targets(node: Any, key: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for name, value in node.items():
            child = f"{key}.{name}" if key else str(name)
            if name == "_target_":
                yield child, value
            else:
                yield from _targets(value, child)
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _targets(value, f"{key}[{i}]")


def _conf_targets() -> frozenset[str]:
    """Every ``_target_`` written in the YAML files of the project's ``conf/`` and of the running
    Hydra job's other config folders (``hydra.searchpath``): a user's own configs count too."""
    from hydra.core.hydra_config import HydraConfig

    from seglab.utils.config import project_root

    folders = [project_root() / "conf"]
    if HydraConfig.initialized():
        sources = HydraConfig.get().runtime.config_sources
        folders += [Path(s.path) for s in sources if s.schema == "file"]
    return _targets_in(tuple(dict.fromkeys(f.resolve() for f in folders if f.is_dir())))


@cache
def _targets_in(folders: tuple[Path, ...]) -> frozenset[str]:
    return frozenset(
        t for f in folders for p in f.rglob("*.yaml") for t in _TARGET.findall(p.read_text())
    )


def _unsafe_globals(path: str | Path, message: str) -> list[str]:
    """The globals ``weights_only`` refuses in ``path``: torch's list for zip checkpoints, else
    the one its message names; empty when the failure is of another kind."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        names = []
    return list(names) or _GLOBAL.findall(message)


def _describe(names: list[str], entries: list[str]) -> str:
    text = ", ".join(names[:_MAX_NAMED]) + (" ..." if len(names) > _MAX_NAMED else "")
    if entries:
        more = " ..." if len(entries) > _MAX_NAMED else ""
        text += f" in {', '.join(repr(e) for e in entries[:_MAX_NAMED])}{more}"
    return text


class _Stub:
    """What ``_Scanner`` puts in place of every object a pickle builds: records its arguments
    and state, runs nothing."""

    name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stub:
        obj = super().__new__(cls)
        obj.parts = [args, kwargs]
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Stub:
        stub = _Stub(args, kwargs)
        stub.name = self.name
        return stub

    def __setstate__(self, state: Any) -> None:
        self.parts.append(state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.parts.append({key: value})

    def append(self, value: Any) -> None:
        self.parts.append(value)

    def extend(self, values: Any) -> None:
        self.parts.extend(values)

    add = append


class _Scanner(pickle.Unpickler):
    """Unpickles a checkpoint's object tree with every global a ``_Stub`` class named after it,
    to find where the refused ones sit; never imports or calls anything the file names."""

    def find_class(self, module: str, name: str) -> type[_Stub]:
        return type("Stub", (_Stub,), {"name": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> None:
        return None


def _entries_holding(path: str | Path, names: list[str]) -> list[str]:
    """Keys (``hyper_parameters.loss``) of the entries of a zip checkpoint that hold one of the
    globals ``names``; empty when the file cannot be scanned."""
    wanted = set(names) | {f"builtins.{n}" for n in names if "." not in n}
    try:
        with zipfile.ZipFile(path) as archive:
            pkl = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            tree = _Scanner(io.BytesIO(archive.read(pkl))).load()
    except Exception:
        return []
    found: list[str] = []
    _walk(tree, "", wanted, found, set())
    return found


def _walk(node: Any, key: str, wanted: set[str], found: list[str], seen: set[int]) -> None:
    if isinstance(node, _Stub | type) and getattr(node, "name", "") in wanted:
        if (key or "the whole file") not in found:
            found.append(key or "the whole file")
        return
    if id(node) in seen:  # pickles share objects (and may hold cycles)
        return
    seen.add(id(node))
    if isinstance(node, dict):
        for name, value in node.items():
            _walk(value, f"{key}.{name}" if key else str(name), wanted, found, seen)
    elif isinstance(node, list | tuple):
        for value in node:
            _walk(value, key, wanted, found, seen)
    elif isinstance(node, _Stub):
        for part in node.parts:
            _walk(part, key, wanted, found, seen)
