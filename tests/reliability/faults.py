"""Faults the reliability tests inject through the config (``+callbacks.fault._target_=faults.X``):
a rank that raises, a loss that turns NaN. Test-only: never imported by seglab."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch


class RaiseAt(L.Callback):
    """Raise ``RuntimeError(message)`` on global rank ``rank`` at the start of training batch
    ``step`` (the global step, 0-based)."""

    def __init__(self, rank: int = 0, step: int = 0, message: str = "injected failure") -> None:
        self.rank = rank
        self.step = step
        self.message = message

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            raise RuntimeError(self.message)


class NanAt(L.Callback):
    """Make training batch ``step`` (the global step) give a NaN loss: ``where="input"`` fills
    its images with NaN (the weights stay good), ``where="weights"`` sets the first parameter
    to NaN (the model itself goes bad)."""

    def __init__(self, step: int = 0, where: str = "input") -> None:
        self.step = step
        self.where = where

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step != self.step:
            return
        if self.where == "input":
            batch["image"].fill_(math.nan)
        else:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(math.nan)
