"""What every task shares: the net, class names, optimizer wiring, per-stage metrics and their
epoch-end logging."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.optim import Optimizer
from torchmetrics import Metric

from seglab.tasks.optim import configure_optimizers

__all__ = ["SegmentationTask", "crop_to"]

STAGES = ("train", "val", "test")


def crop_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The centre ``size`` window of the last two dimensions of ``x``, the top-left corner at
    ``floor((H - h) / 2)``; torchvision's ``center_crop`` rounds half to even, one pixel off for
    differences of 3, 7, ... (every seglab net's differences are even, where both agree)."""
    height, width = size
    top, left = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


class SegmentationTask(L.LightningModule):
    """Base LightningModule of the semantic, instance and panoptic tasks.

    Holds the net (``self.net``), ``num_classes``, ``class_names``, the optimizer and scheduler
    partials, and the metrics of each stage in ``self.stage_metrics[stage][name]``. Each metric is
    registered as the submodule ``f"{stage}_{name}"`` (``val_metrics``, ``test_loss``, ...):
    ``nn.ModuleDict`` refuses the key ``"train"`` (it would shadow ``nn.Module.train``), and these
    names are the ones checkpoints were written with.

    At the end of each stage's epoch, ``epoch_metrics(stage)`` gives the values to log by name;
    they are logged as ``f"{stage}/{name}"`` (``main_metric`` last, on the progress bar), and the
    stage's metrics are reset. The metrics are synced across DDP ranks by torchmetrics, so every
    rank logs the same values. Tasks with a ``SemanticMetrics`` keep its last values of each stage
    in ``self.semantic_results[stage]`` (``confmat``, ``iou``, ...), for callbacks that draw
    them after the reset (``seglab.callbacks.Visuals``).

    Args:
        net: the network, exposed as ``self.net``.
        num_classes: K, background included.
        optimizer: partial taking the parameters.
        scheduler: partial taking the optimizer; a ``total_iters`` / ``T_max`` left as None is set
            to the run's number of optimizer steps, and the scheduler steps every iteration.
        class_names: K names (default ``"0"``, ``"1"``, ...).
    """

    main_metric: str

    def __init__(
        self,
        *,
        net: nn.Module,
        num_classes: int,
        optimizer: Callable[..., Optimizer] | None = None,
        scheduler: Callable[[Optimizer], torch.optim.lr_scheduler.LRScheduler] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        # Every subclass's constructor arguments (Lightning collects the __init__ frames), plain
        # values only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.net = net
        self.num_classes = num_classes
        self.optimizer_fn = optimizer
        self.scheduler_fn = scheduler
        self.class_names = (
            list(class_names) if class_names else [str(i) for i in range(num_classes)]
        )
        self.stage_metrics: dict[str, dict[str, nn.Module]] = {stage: {} for stage in STAGES}
        self.semantic_results: dict[str, dict[str, torch.Tensor]] = {}

    def add_stage_metric(
        self, name: str, stages: Iterable[str], build: Callable[[], nn.Module]
    ) -> None:
        """Register ``build()`` as ``self.stage_metrics[stage][name]`` for each of ``stages``."""
        for stage in stages:
            module = build()
            self.add_module(f"{stage}_{name}", module)
            self.stage_metrics[stage][name] = module

    def eval_step(self, batch: Any, stage: str) -> None:
        """Update the metrics of ``stage`` (``val`` or ``test``) with one batch."""
        raise NotImplementedError

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.eval_step(batch, "test")

    def epoch_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        """The values to log at the end of ``stage``'s epoch, by name (without the stage)."""
        raise NotImplementedError

    def log_epoch(self, stage: str) -> None:
        """Log ``epoch_metrics(stage)`` as ``stage/name`` and reset the stage's metrics."""
        values = self.epoch_metrics(stage)
        for module in self.stage_metrics[stage].values():
            for metric in module.modules():
                if isinstance(metric, Metric):
                    metric.reset()
        logs = {f"{stage}/{name}": value for name, value in values.items()}
        main = logs.pop(f"{stage}/{self.main_metric}")
        # Synced by torchmetrics already: identical on every rank.
        self.log_dict(logs, prog_bar=False, sync_dist=False, rank_zero_only=False)
        self.log(f"{stage}/{self.main_metric}", main, prog_bar=True)

    def on_train_epoch_end(self) -> None:
        if self.stage_metrics["train"]:
            self.log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self.log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch("test")

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.optimizer_fn, self.scheduler_fn)
