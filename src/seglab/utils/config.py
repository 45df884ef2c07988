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


def register_resolvers() -> None:
    """Register ``${seglab_root:}``, ``${no_env:NAME}`` and ``${len:LIST}`` once per process."""
    resolvers = {
        "seglab_root": lambda: str(project_root()),
        "no_env": _no_env,
        "len": len,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
