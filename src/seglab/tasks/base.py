"""What every task shares: the net, class names, optimizer wiring, per-stage metrics and their
epoch-end logging."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.optim import Optimizer
from torchmetrics import MeanMetric, Metric

from seglab.tasks.optim import configure_optimizers

__all__ = ["SegmentationTask", "compile_target", "to_channels_last"]

STAGES = ("train", "val", "test")
# self.log flags of values torchmetrics synced already, so identical on every rank: a max over the
# ranks says so to Lightning (which otherwise warns, per name, that an epoch value is not synced)
# and leaves each value bit for bit as it is, NaN included; one all-reduce per name and epoch.
_SYNCED = {"sync_dist": True, "reduce_fx": "max"}


def to_channels_last(batch: Any) -> Any:
    """``batch`` with every 4-D floating tensor in channels-last memory format (the images of a
    semantic batch; masks, weight maps and the detector's per-image 3-D images are left as they
    are: a convolution whose weight is channels-last computes channels-last anyway)."""
    if isinstance(batch, torch.Tensor):
        if batch.ndim == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, Mapping):
        return {key: to_channels_last(value) for key, value in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_channels_last(value) for value in batch)
    return batch


def compile_target(net: nn.Module) -> nn.Module:
    """What ``model.compile`` compiles of ``net``: a detector's backbone (its ``backbone``, body
    and FPN, where the time goes), since its region proposal and RoI stages are Python over
    data-dependent shapes that would break the graph at every step; any other net whole."""
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    return net.backbone if isinstance(net, GeneralizedRCNN) else net


_COMPILE_KEYS = tuple(p for p in inspect.signature(torch.compile).parameters if p != "model")


class SegmentationTask(L.LightningModule):
    """Base LightningModule of the semantic, instance and panoptic tasks.

    Holds the net (``self.net``), ``num_classes``, ``class_names``, the optimizer and scheduler
    partials, and the metrics of each stage in ``self.stage_metrics[stage][name]``. Each metric is
    registered as the submodule ``f"{stage}_{name}"`` (``val_metrics``, ``test_loss``, ...):
    ``nn.ModuleDict`` refuses the key ``"train"`` (it would shadow ``nn.Module.train``), and these
    names are the ones checkpoints were written with.

    At the end of each stage's epoch, ``epoch_metrics(stage)`` gives the values to log by name;
    they are logged as ``f"{log_prefix}{stage}/{name}"`` (``main_metric`` last, on the progress
    bar), and the stage's metrics are reset. The metrics are synced across DDP ranks by
    torchmetrics, so every rank logs the same values. ``log_prefix`` is ``""`` except while
    ``seglab.train.train`` validates or tests the best checkpoint after fitting (``"best/"``), so
    that those scores do not read as one more epoch of ``val/...``.
    Tasks with a ``SemanticMetrics`` keep its last values of each stage in
    ``self.semantic_results[stage]`` (``confmat``, ``iou``, ...), for callbacks that draw them
    after the reset (``seglab.callbacks.Visuals``).

    Args:
        net: the network, exposed as ``self.net``.
        num_classes: K, background included.
        optimizer: partial taking the parameters.
        scheduler: partial taking the optimizer; a ``total_iters`` / ``T_max`` left as None is set
            to the run's number of optimizer steps, and the scheduler steps every iteration.
        class_names: K names (default ``"0"``, ``"1"``, ...).
    """

    main_metric: str
    # prepended to every epoch-end metric name (see the class docstring)
    log_prefix: str = ""

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
        # epoch means of the training losses by name (log_train); a plain dict, not submodules:
        # nothing of a checkpoint, and created on the losses' device
        self.train_means: dict[str, MeanMetric] = {}
        self.semantic_results: dict[str, dict[str, torch.Tensor]] = {}

    def configure_speed(
        self, *, channels_last: bool = False, compile: bool | Mapping[str, Any] | None = False
    ) -> None:
        """``model.channels_last``: the net's 4-D weights, and every batch's images, in
        channels-last memory format (faster convolutions with tensor cores and bf16 / fp16).
        ``model.compile``: true, or a mapping of ``torch.compile`` arguments (``mode``,
        ``backend``, ``dynamic``, ``fullgraph``, ``options``), compiles ``compile_target(net)`` in
        place with ``nn.Module.compile``: its parameters keep their names, so checkpoints load
        with or without it. Both off by default."""
        if not isinstance(channels_last, bool):
            raise ValueError(f"model.channels_last={channels_last!r}: expected true or false")
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        if compile is None or compile is False:
            return
        if compile is True:
            options: dict[str, Any] = {}
        elif isinstance(compile, Mapping):
            options = dict(compile)
            unknown = sorted(set(options) - set(_COMPILE_KEYS))
            if unknown:
                raise ValueError(
                    f"model.compile has unknown key(s) {unknown}; expected true, false or a "
                    f"mapping of torch.compile arguments {list(_COMPILE_KEYS)}"
                )
        else:
            raise ValueError(
                f"model.compile={compile!r}: expected true, false or a mapping of torch.compile "
                f"arguments {list(_COMPILE_KEYS)}"
            )
        compile_target(self.net).compile(**options)

    def memory_format(self, batch: Any) -> Any:
        """``batch`` in channels-last memory format with ``model.channels_last``, else as it is.
        The steps call it (not ``on_after_batch_transfer``, which Lightning lets a data module's
        hook override)."""
        return to_channels_last(batch) if getattr(self, "channels_last", False) else batch

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

    def log_train(self, losses: dict[str, torch.Tensor], batch_size: int) -> None:
        """Log each training loss by name as ``train/name`` every ``log_every_n_steps`` steps, and
        add it to its epoch mean, logged as ``train/name_epoch`` at the end of every epoch (so an
        epoch with fewer batches than ``log_every_n_steps`` still has train rows); ``loss`` (the
        loss optimised) goes on the progress bar.

        The step values are this rank's; the epoch means are over every rank's batches (a
        torchmetrics ``MeanMetric`` per name, weighted by the batch size). Not Lightning's
        ``on_epoch=True, sync_dist=True``: its progress bar computes epoch values at the end of
        the training epoch on rank 0 alone, so the ranks' collectives would not match.
        """
        for name, value in losses.items():
            value = value.detach()
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=batch_size)
            if name not in self.train_means:
                self.train_means[name] = MeanMetric().to(value.device)
            self.train_means[name].update(value, weight=batch_size)

    def log_epoch(self, stage: str) -> None:
        """Log ``epoch_metrics(stage)`` as ``{log_prefix}{stage}/name`` and reset the stage's
        metrics."""
        values = self.epoch_metrics(stage)
        for module in self.stage_metrics[stage].values():
            for metric in module.modules():
                if isinstance(metric, Metric):
                    metric.reset()
        logs = {f"{self.log_prefix}{stage}/{name}": value for name, value in values.items()}
        main = logs.pop(f"{self.log_prefix}{stage}/{self.main_metric}")
        self.log_dict(logs, prog_bar=False, **_SYNCED)
        self.log(f"{self.log_prefix}{stage}/{self.main_metric}", main, prog_bar=True, **_SYNCED)

    def on_train_epoch_start(self) -> None:
        for mean in self.train_means.values():  # an interrupted epoch's batches stay out
            mean.reset()

    def on_train_epoch_end(self) -> None:
        # every rank runs this hook (unlike the progress bar's), so torchmetrics syncs here
        means = {f"train/{name}_epoch": mean.compute() for name, mean in self.train_means.items()}
        self.log_dict(means, **_SYNCED)
        if self.stage_metrics["train"]:
            self.log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self.log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch("test")

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.optimizer_fn, self.scheduler_fn)
