"""Optimizer and LR-scheduler wiring shared by every task."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import lightning as L
from torch.optim import Optimizer

__all__ = ["configure_optimizers"]

_LENGTH_KEYS = ("total_iters", "T_max")


def configure_optimizers(
    module: L.LightningModule,
    optimizer_fn: Callable[..., Optimizer] | None,
    scheduler_fn: Callable[[Optimizer], Any] | None,
) -> Any:
    """``LightningModule.configure_optimizers`` for Hydra partials.

    The optimizer gets the trainable parameters; a scheduler whose ``total_iters`` / ``T_max`` is
    left as None gets the run's number of optimizer steps, and steps every iteration.
    """
    if optimizer_fn is None:
        raise ValueError("no optimizer configured: set the `optimizer` config group")
    optimizer = optimizer_fn(params=[p for p in module.parameters() if p.requires_grad])
    if scheduler_fn is None:
        return optimizer
    if isinstance(scheduler_fn, functools.partial):
        for key in _LENGTH_KEYS:
            if key in scheduler_fn.keywords and scheduler_fn.keywords[key] is None:
                steps = max(int(module.trainer.estimated_stepping_batches), 1)
                scheduler_fn = functools.partial(scheduler_fn, **{key: steps})
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler_fn(optimizer), "interval": "step"},
    }
