"""Optimizer and LR-scheduler wiring shared by every task."""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any

import lightning as L
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ChainedScheduler, LinearLR

__all__ = ["configure_optimizers"]

_LENGTH_KEYS = ("total_iters", "T_max")


def _warmup_settings(keywords: dict[str, Any]) -> tuple[int, float]:
    """Pops and checks ``warmup_iters`` / ``warmup_factor`` from a scheduler partial's keywords."""
    iters = keywords.pop("warmup_iters", 0)
    factor = keywords.pop("warmup_factor", 0.001)
    if iters is None:
        iters = 0
    if isinstance(iters, bool) or not isinstance(iters, numbers.Integral) or iters < 0:
        raise ValueError(
            f"scheduler.warmup_iters={iters!r}: expected a whole number of optimizer steps >= 0"
        )
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not 0 < factor <= 1:
        raise ValueError(f"scheduler.warmup_factor={factor!r}: expected a number in (0, 1]")
    return int(iters), float(factor)


def configure_optimizers(
    module: L.LightningModule,
    optimizer_fn: Callable[..., Optimizer] | None,
    scheduler_fn: Callable[[Optimizer], Any] | None,
) -> Any:
    """``LightningModule.configure_optimizers`` for Hydra partials.

    The optimizer gets the trainable parameters; a scheduler whose ``total_iters`` / ``T_max`` is
    left as None gets the run's number of optimizer steps, and steps every iteration.

    A scheduler partial may carry ``warmup_iters`` (default 0: none) and ``warmup_factor``
    (default 0.001): the learning rate is then multiplied by a factor rising linearly from
    ``warmup_factor`` to 1 over the first ``warmup_iters`` steps, on top of the schedule, which
    still spans the whole run (Detectron's linear warm-up, ``SOLVER.WARMUP_ITERS`` /
    ``WARMUP_FACTOR``; Goyal et al. 2017, "Accurate, Large Minibatch SGD", section 2.2).
    """
    if optimizer_fn is None:
        raise ValueError("no optimizer configured: set the `optimizer` config group")
    optimizer = optimizer_fn(params=[p for p in module.parameters() if p.requires_grad])
    if scheduler_fn is None:
        return optimizer
    warmup_iters, warmup_factor = 0, 1.0
    if isinstance(scheduler_fn, functools.partial):
        keywords = dict(scheduler_fn.keywords)
        warmup_iters, warmup_factor = _warmup_settings(keywords)
        for key in _LENGTH_KEYS:
            if key in keywords and keywords[key] is None:
                keywords[key] = max(int(module.trainer.estimated_stepping_batches), 1)
        scheduler_fn = functools.partial(scheduler_fn.func, *scheduler_fn.args, **keywords)
    # the schedule first: the warm-up's first step then scales the learning rate it has set
    scheduler = scheduler_fn(optimizer)
    if warmup_iters:
        warmup = LinearLR(optimizer, start_factor=warmup_factor, total_iters=warmup_iters)
        scheduler = ChainedScheduler([scheduler, warmup])
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
    }
