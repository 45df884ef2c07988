"""A NaN or infinite training loss stops the run, or skips its optimizer step; a model holding NaN
or infinite weights is never saved."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from seglab.utils.failure import mark_quiet

__all__ = ["NON_FINITE_ACTIONS", "NanGuard", "NonFiniteLossError", "NonFiniteWeightsError"]

log = logging.getLogger(__name__)

NON_FINITE_ACTIONS = ("stop", "skip")


class NonFiniteLossError(RuntimeError):
    """The training loss was NaN or infinite and ``on_nan_loss=stop``."""


class NonFiniteWeightsError(RuntimeError):
    """A checkpoint was about to save NaN or infinite weights."""


class NanGuard(L.Callback):
    """Watch the training loss of every step and the weights of every checkpoint.

    A NaN or infinite loss (any rank's, under DDP) either stops the run with
    ``NonFiniteLossError`` (``on_nan_loss="stop"``) naming the global step, epoch and batch and
    the last good checkpoint, or (``"skip"``) drops that step's gradients so that the optimizer
    leaves the weights and its own state alone, and restores the buffers (BatchNorm statistics)
    of before the step; the run goes on, each skip is logged and the count is
    ``train/skipped_steps``. Every rank skips the same steps, so DDP replicas stay equal.

    Whatever the setting, a checkpoint whose weights hold NaN or infinity is refused with
    ``NonFiniteWeightsError`` before Lightning writes it, so ``last.ckpt`` and the best checkpoint
    stay the last good ones. seglab's ``train`` adds this callback to every run.

    Args:
        on_nan_loss: ``"stop"`` or ``"skip"``.
    """

    def __init__(self, on_nan_loss: str = "stop") -> None:
        if on_nan_loss not in NON_FINITE_ACTIONS:
            raise ValueError(
                f"on_nan_loss={on_nan_loss!r}: expected one of {', '.join(NON_FINITE_ACTIONS)}"
            )
        self.on_nan_loss = on_nan_loss
        self.skipped = 0
        self._batch_idx = 0
        self._bad_loss: float | None = None
        self._buffers: list[torch.Tensor] = []
        self._buffers_step = -1

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_idx = batch_idx
        if self.on_nan_loss == "skip" and self._buffers_step != trainer.global_step:
            # a NaN batch also updates the buffers (BatchNorm's running statistics) in forward
            self._buffers = [b.detach().clone() for b in pl_module.buffers()]
            self._buffers_step = trainer.global_step

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        if self._bad_loss is None and not bool(torch.isfinite(loss.detach()).all()):
            self._bad_loss = float(loss.detach().float().sum())

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        bad_here = self._bad_loss is not None
        bad = trainer.strategy.reduce_boolean_decision(bad_here, all=False)
        value = self._bad_loss if bad_here else math.nan
        self._bad_loss = None
        if not bad:
            return
        where = (
            f"global step {trainer.global_step} (epoch {trainer.current_epoch}, batch "
            f"{self._batch_idx})"
        )
        what = (
            f"the training loss is {value}"
            if bad_here
            else "the training loss of another rank is NaN or infinite"
        )
        if self.on_nan_loss == "stop":
            err = NonFiniteLossError(
                f"{what} at {where}: stopped (on_nan_loss=stop). Last good checkpoint: "
                f"{last_good_checkpoint(trainer) or 'none saved yet'}. Lower optimizer.lr or "
                "check the data, or set on_nan_loss=skip to skip such steps"
            )
            if trainer.world_size > 1 and trainer.global_rank != 0:
                mark_quiet(err)  # every rank stops at this step; rank 0 says so
            raise err
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None  # torch's optimizers pass over parameters without a gradient
        with torch.no_grad():
            for buffer, saved in zip(pl_module.buffers(), self._buffers, strict=True):
                buffer.copy_(saved)
        self.skipped += 1
        if trainer.is_global_zero:
            log.warning(
                "%s non-finite at %s: optimizer step skipped (on_nan_loss=skip; %d skipped so far)",
                "training loss" if bad_here else "another rank's training loss",
                where,
                self.skipped,
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.on_nan_loss == "skip":
            pl_module.log("train/skipped_steps", float(self.skipped))

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        bad = next(
            (
                name
                for name, value in checkpoint.get("state_dict", {}).items()
                if torch.is_tensor(value)
                and value.is_floating_point()
                and not bool(torch.isfinite(value).all())
            ),
            None,
        )
        if bad is None:
            return
        err = NonFiniteWeightsError(
            f"the weights hold NaN or infinity ({bad}) at global step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}): checkpoint not saved. Last good checkpoint: "
            f"{last_good_checkpoint(trainer) or 'none saved yet'}. Lower optimizer.lr or check "
            "the data"
        )
        if trainer.world_size > 1 and trainer.global_rank != 0:
            mark_quiet(err)
        raise err

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


def last_good_checkpoint(trainer: L.Trainer) -> str | None:
    """The newest checkpoint file the trainer's ``ModelCheckpoint`` callbacks have written."""
    paths = {
        Path(path)
        for callback in trainer.checkpoint_callbacks
        if isinstance(callback, ModelCheckpoint)
        for path in (callback.best_model_path, callback.last_model_path)
        if path
    }
    found = [p for p in paths if p.is_file()]
    return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None
