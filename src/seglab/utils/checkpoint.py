"""Rebuilding a run's config from what a checkpoint carries."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from seglab.callbacks.config import CONFIG_KEY
from seglab.utils.io import load_checkpoint

__all__ = ["config_from_checkpoint"]


def config_from_checkpoint(cfg: DictConfig) -> tuple[DictConfig, dict[str, Any]]:
    """Merge the config saved in ``cfg.ckpt_path`` with the groups chosen on the command line.

    ``model`` and ``data`` come from the checkpoint unless ``cfg`` sets them (``data=camvid`` on
    the command line evaluates on another dataset, for example); everything else comes from
    ``cfg``. Returns the merged config and the loaded checkpoint.
    """
    if not cfg.get("ckpt_path"):
        raise ValueError("ckpt_path is required: python src/eval.py ckpt_path=PATH/TO/FILE.ckpt")
    checkpoint = load_checkpoint(cfg.ckpt_path)
    saved = checkpoint.get(CONFIG_KEY)
    if saved is None and (cfg.get("model") is None or cfg.get("data") is None):
        raise ValueError(
            f"ckpt_path={cfg.ckpt_path!r} carries no seglab config (not written by "
            "seglab's train): choose model=... and data=... on the command line"
        )
    base = OmegaConf.create(saved or {})
    chosen = {k: cfg[k] for k in ("model", "data") if cfg.get(k) is not None}
    merged = OmegaConf.merge(base, OmegaConf.masked_copy(cfg, [k for k in cfg if k not in chosen]))
    for key, node in chosen.items():
        merged[key] = node
    return merged, checkpoint
