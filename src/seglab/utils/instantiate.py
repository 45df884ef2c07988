"""Building the run's objects from a composed config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

__all__ = ["build_datamodule", "build_list", "build_task", "build_trainer", "saved_config"]


def build_list(cfg: DictConfig | None, group: str) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a mapping config group (callbacks, logger)."""
    if not cfg:
        return []
    if not isinstance(cfg, Mapping):
        raise ValueError(f"config group `{group}` must be a mapping of named entries, got {cfg!r}")
    return [hydra.utils.instantiate(node) for node in cfg.values() if node and "_target_" in node]


def build_datamodule(data_cfg: DictConfig) -> L.LightningDataModule:
    return hydra.utils.instantiate(data_cfg, _convert_="all")


def build_task(
    cfg: DictConfig, datamodule: L.LightningDataModule | None = None
) -> L.LightningModule:
    """Instantiate ``cfg.model`` with the optimizer and scheduler groups and the class names."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    for key in ("task", "monitor"):  # read by the data and callbacks configs, not the task
        model_cfg.pop(key, None)
    extra: dict[str, Any] = {}
    for key in ("optimizer", "scheduler"):
        node = cfg.get(key)
        extra[key] = hydra.utils.instantiate(node) if node else None
    if datamodule is not None and getattr(datamodule, "class_names", None):
        extra["class_names"] = list(datamodule.class_names)
    if datamodule is not None and getattr(datamodule, "extra_metrics", None):
        extra["extra_metrics"] = list(datamodule.extra_metrics)
    return hydra.utils.instantiate(model_cfg, **extra, _convert_="all")


def build_trainer(cfg: DictConfig, **kwargs: Any) -> L.Trainer:
    return hydra.utils.instantiate(cfg.trainer, **kwargs, _convert_="all")


def saved_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved groups a checkpoint needs to rebuild its model and data without the run."""
    keys = ("model", "data", "optimizer", "scheduler")
    return {k: OmegaConf.to_container(cfg[k], resolve=True) for k in keys if cfg.get(k) is not None}
