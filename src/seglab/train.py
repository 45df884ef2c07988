"""Training entry: ``train(cfg)`` is what ``src/train.py`` calls, and what tests call in-process."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig

from seglab.callbacks import EmbedConfig
from seglab.utils.instantiate import (
    build_datamodule,
    build_list,
    build_task,
    build_trainer,
    saved_config,
)
from seglab.utils.io import write_json

__all__ = ["train"]

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit ``cfg.model`` on ``cfg.data``, then validate (and test) the best checkpoint.

    Returns:
        ``(metrics, objects)``: the final metrics (also written to ``metrics.json`` in the run
        folder) and the objects built (``cfg``, ``datamodule``, ``model``, ``trainer``).
    """
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)

    datamodule = build_datamodule(cfg.data)
    model = build_task(cfg, datamodule)
    callbacks = [*build_list(cfg.get("callbacks"), "callbacks"), EmbedConfig(saved_config(cfg))]
    loggers = build_list(cfg.get("logger"), "logger")
    if not loggers:  # Lightning refuses a learning-rate monitor without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = build_trainer(cfg, callbacks=callbacks, logger=loggers or False)
    objects = {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer}

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics: dict[str, Any] = {"fit": _scalars(trainer.callback_metrics)}

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt = best if best else None
    if cfg.get("validate", True):
        metrics["val"] = trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt)[0]
    if cfg.get("test", False):
        metrics["test"] = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt)[0]
    metrics["best_checkpoint"] = best or None

    if trainer.is_global_zero:
        write_json(output_dir / "metrics.json", metrics)
        log.info("metrics written to %s", output_dir / "metrics.json")
    return metrics, objects


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
