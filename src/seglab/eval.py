"""Evaluation entry: ``evaluate(cfg)`` scores a checkpoint on a split of its (or another) dataset."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seglab.utils.checkpoint import config_from_checkpoint
from seglab.utils.instantiate import build_datamodule, build_list, build_task, build_trainer
from seglab.utils.io import write_json

__all__ = ["evaluate"]

log = logging.getLogger(__name__)

_SPLITS = ("val", "test")


def evaluate(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score ``cfg.ckpt_path`` on ``cfg.split`` (``val`` or ``test``).

    Returns ``(metrics, objects)``; metrics are also written to ``metrics.json`` in the run folder.
    """
    if cfg.get("split") not in _SPLITS:
        raise ValueError(f"split={cfg.get('split')!r}: expected one of {list(_SPLITS)}")
    run_cfg, _ = config_from_checkpoint(cfg)
    if cfg.get("inference"):
        OmegaConf.update(run_cfg, "model.inference", cfg.inference, force_add=True)
    datamodule = build_datamodule(run_cfg.data)
    model = build_task(run_cfg, datamodule)
    trainer = build_trainer(
        run_cfg, logger=build_list(cfg.get("logger"), "logger") or False, callbacks=[]
    )
    run = trainer.validate if cfg.split == "val" else trainer.test
    results = run(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)[0]
    metrics = {cfg.split: results, "ckpt_path": str(cfg.ckpt_path)}
    if trainer.is_global_zero:
        write_json(Path(cfg.paths.output_dir) / "metrics.json", metrics)
    return metrics, {"cfg": run_cfg, "datamodule": datamodule, "model": model, "trainer": trainer}
