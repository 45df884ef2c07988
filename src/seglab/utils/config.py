"""OmegaConf resolvers and small config helpers shared by the entry points."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

__all__ = ["project_root", "register_resolvers"]


def project_root() -> Path:
    """The folder holding ``conf/`` for a source checkout; the working directory otherwise.

    ``$SEGLAB_ROOT`` wins when set, so DDP children and tests see the same root.
    """
    if env := os.environ.get("SEGLAB_ROOT"):
        return Path(env).resolve()
    candidate = Path(__file__).resolve().parents[3]
    if (candidate / "conf" / "train.yaml").is_file():
        return candidate
    return Path.cwd().resolve()


def _no_env(name: str) -> bool:
    return not os.environ.get(name)


def _concat(*lists: list) -> list:
    return [item for items in lists for item in items]


def _by_task(task: str, semantic: object, instance: object, panoptic: object) -> object:
    """Pick the value of a data config key that differs between task views."""
    choices = {"semantic": semantic, "instance": instance, "panoptic": panoptic}
    if task not in choices:
        raise ValueError(f"task={task!r}: expected one of {list(choices)}")
    return choices[task]


def register_resolvers() -> None:
    """Register the resolvers the configs use, once per process.

    ``${seglab_root:}`` project root, ``${no_env:NAME}`` true when $NAME is unset or empty,
    ``${len:LIST}``, ``${concat:LIST,LIST,...}`` and ``${by_task:TASK,SEMANTIC,INSTANCE,PANOPTIC}``.
    """
    resolvers = {
        "seglab_root": lambda: str(project_root()),
        "no_env": _no_env,
        "len": len,
        "concat": _concat,
        "by_task": _by_task,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
