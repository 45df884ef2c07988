"""Evaluation entry: ``evaluate(cfg)`` scores a checkpoint on a split of its (or another) dataset."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from seglab.inference import configure_inference
from seglab.models.backbones import skip_pretrained_files
from seglab.utils.checkpoint import config_from_checkpoint, load_weights
from seglab.utils.instantiate import build_datamodule, build_list, build_task, build_trainer
from seglab.utils.io import move_aside, write_json
from seglab.utils.memory import tune_malloc

__all__ = ["evaluate"]

log = logging.getLogger(__name__)

_SPLITS = ("val", "test")


def evaluate(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score ``cfg.ckpt_path`` on ``cfg.split`` (``val`` or ``test``).

    The weights are loaded here, not through Lightning's ``ckpt_path``: an evaluation needs no
    training callbacks, and the file is read once. The inference is the checkpoint model's, with
    ``inference.*`` over it (``seglab.inference.configure_inference``, as in predict). Returns ``(metrics, objects)``; metrics are
    also written to ``metrics.json`` in the run folder (an earlier run's file there is moved
    aside first, so a failed evaluation leaves none that looks like its own).
    """
    if cfg.get("malloc_tuning"):
        tune_malloc()
    if cfg.get("split") not in _SPLITS:
        raise ValueError(f"split={cfg.get('split')!r}: expected one of {list(_SPLITS)}")
    run_cfg, checkpoint = config_from_checkpoint(cfg)
    configure_inference(run_cfg, cfg.get("inference"))
    datamodule = build_datamodule(run_cfg.data)
    with skip_pretrained_files():  # the checkpoint's weights replace them
        model = build_task(run_cfg, datamodule)
    load_weights(model, checkpoint, f"ckpt_path={str(cfg.ckpt_path)!r}")
    del checkpoint
    metrics_path = Path(cfg.paths.output_dir) / "metrics.json"
    if rank_zero_only.rank == 0:
        move_aside(metrics_path)
    trainer = build_trainer(
        run_cfg, logger=build_list(cfg.get("logger"), "logger") or False, callbacks=[]
    )
    run = trainer.validate if cfg.split == "val" else trainer.test
    results = run(model, datamodule=datamodule)[0]
    metrics = {cfg.split: results, "ckpt_path": str(cfg.ckpt_path)}
    if trainer.is_global_zero:
        write_json(metrics_path, metrics)
        log.info("metrics written to %s", metrics_path)
    return metrics, {"cfg": run_cfg, "datamodule": datamodule, "model": model, "trainer": trainer}
