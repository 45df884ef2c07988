"""W&B runs that follow the training: the best monitored value in the run summary, and the run id
in every checkpoint, so that resuming from one continues the same W&B run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, open_dict

from seglab.utils.safe_load import read_torch_file

__all__ = ["WANDB_RUN_KEY", "WandbRun", "wandb_callbacks", "wandb_resume"]

WANDB_RUN_KEY = "seglab_wandb_run_id"
# ids of the W&B runs a WandbRun of this process followed
_FOLLOWED: set[str] = set()
# ckpt_path values Lightning resolves itself rather than reading a file
_LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")


class WandbRun(L.Callback):
    """With a ``WandbLogger``: ``define_metric`` makes the run summary hold the best value of
    the checkpoint callback's monitored metric (its ``mode``: max or min), and each checkpoint
    stores the run id under ``checkpoint["seglab_wandb_run_id"]`` (``wandb_resume`` reads it).
    """

    def __init__(self, logger: WandbLogger) -> None:
        self.logger = logger

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        run = self.logger.experiment
        _FOLLOWED.add(run.id)
        checkpoint = trainer.checkpoint_callback
        monitor = getattr(checkpoint, "monitor", None)
        if monitor is not None:
            mode = getattr(checkpoint, "mode", "max")
            run.define_metric(
                monitor, summary=mode, step_metric="trainer/global_step", step_sync=True
            )

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.is_global_zero:
            checkpoint[WANDB_RUN_KEY] = self.logger.version


def wandb_callbacks(loggers: Sequence[Logger]) -> list[L.Callback]:
    """A ``WandbRun`` for the first ``WandbLogger`` of ``loggers`` (none without one).

    A W&B run that an earlier ``WandbRun`` of this process followed (the previous job of a
    multirun, an earlier ``train`` call) is finished first: Lightning's ``WandbLogger`` would
    otherwise log this run into it.
    """
    found = [logger for logger in loggers if isinstance(logger, WandbLogger)]
    if not found:
        return []
    for logger in found:
        # Lightning passes anonymous=None to wandb.init whatever the user set; wandb >= 0.19
        # warns that the setting has no effect whenever it is passed at all
        if logger._wandb_init.get("anonymous", "allow") is None:
            del logger._wandb_init["anonymous"]
    import wandb

    if wandb.run is not None and wandb.run.id in _FOLLOWED:
        wandb.finish()
    return [WandbRun(found[0])]


def wandb_resume(
    logger_cfg: DictConfig | None, ckpt_path: str | Path | None, *, trust: bool = False
) -> str | None:
    """Set each ``WandbLogger`` entry of ``logger_cfg`` (in place) to continue the W&B run whose
    id ``ckpt_path`` stores (``id``, ``resume: allow``), unless the entry sets its own ``id``.
    The file is read as data only unless ``trust`` (``seglab.utils.safe_load``).

    Returns the run id continued (None: no checkpoint, no W&B logger or no stored id).
    """
    if logger_cfg is None or ckpt_path is None or str(ckpt_path) in _LIGHTNING_CKPT_NAMES:
        return None
    entries = [
        entry
        for entry in logger_cfg.values()
        if isinstance(entry, DictConfig)
        and str(entry.get("_target_", "")).endswith("WandbLogger")
        and entry.get("id") is None
    ]
    if not entries:
        return None
    # mmap: the weights stay on disk; only the small entries are read
    checkpoint = read_torch_file(ckpt_path, f"ckpt_path={str(ckpt_path)!r}", trust=trust, mmap=True)
    run_id = checkpoint.get(WANDB_RUN_KEY) if isinstance(checkpoint, dict) else None
    if not run_id:
        return None
    for entry in entries:
        with open_dict(entry):
            entry.id, entry.resume = str(run_id), "allow"
    return str(run_id)
