"""Training entry: ``train(cfg)`` is what ``src/train.py`` calls, and what tests call in-process."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from seglab.callbacks import EmbedConfig, wandb_callbacks, wandb_resume
from seglab.utils.checkpoint import load_weights
from seglab.utils.instantiate import (
    build_datamodule,
    build_list,
    build_task,
    build_trainer,
    saved_config,
)
from seglab.utils.io import load_checkpoint, move_aside, write_json
from seglab.utils.memory import tune_malloc

__all__ = ["train"]

log = logging.getLogger(__name__)

# ckpt_path values Lightning resolves itself rather than reading a file
_LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")
# what Lightning needs, besides the weights, to resume fitting
_TRAINING_STATE = ("pytorch-lightning_version", "epoch", "global_step", "loops", "optimizer_states")


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit ``cfg.model`` on ``cfg.data``, then validate (and test) the best checkpoint.

    With ``cfg.ckpt_path`` set, fitting resumes from that checkpoint, which is checked (readable,
    weights of this model, training state present) before anything is written. A
    ``metrics.json`` already in the run folder (a reused folder) is moved aside first, so that a
    failed run never leaves an earlier run's metrics looking like its own.

    Returns:
        ``(metrics, objects)``: the final metrics (also written to ``metrics.json`` in the run
        folder) and the objects built (``cfg``, ``datamodule``, ``model``, ``trainer``).
    """
    if cfg.get("malloc_tuning"):
        tune_malloc()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)

    datamodule = build_datamodule(cfg.data)
    model = build_task(cfg, datamodule)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None and str(ckpt_path) not in _LIGHTNING_CKPT_NAMES:
        _check_resume(model, str(ckpt_path))
    callbacks = [*build_list(cfg.get("callbacks"), "callbacks"), EmbedConfig(saved_config(cfg))]
    # W&B: a resumed run continues the checkpoint's W&B run; the summary keeps the best value
    wandb_resume(cfg.get("logger"), ckpt_path)
    loggers = build_list(cfg.get("logger"), "logger")
    callbacks += wandb_callbacks(loggers)
    if not loggers:  # Lightning refuses a learning-rate monitor without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = build_trainer(cfg, callbacks=callbacks, logger=loggers or False)
    objects = {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer}
    if rank_zero_only.rank == 0:
        move_aside(output_dir / "metrics.json")

    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
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


def _check_resume(model: L.LightningModule, ckpt_path: str) -> None:
    """Fail with the file named, before fitting writes anything, when ``ckpt_path`` cannot
    resume this run: unreadable, weights of another model, or no training state."""
    checkpoint = load_checkpoint(ckpt_path)
    load_weights(
        model,
        checkpoint,
        f"ckpt_path={ckpt_path!r}",
        "a checkpoint of this run's model: resume with the model=... and data=... it was "
        "trained with",
    )
    absent = [k for k in _TRAINING_STATE if k not in checkpoint]
    if absent:
        raise ValueError(
            f"ckpt_path={ckpt_path!r}: holds weights but no training state {absent}; expected a "
            "checkpoint saved while training (checkpoints/last.ckpt of a seglab train run)"
        )


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
