"""The semantic segmentation task: any pixel classifier, cross-entropy, pixel accuracy and IoU."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.optim import Optimizer
from torchmetrics import MeanMetric

from seglab.inference import predict_logits
from seglab.losses import pixel_cross_entropy
from seglab.metrics.rand_error import RandError
from seglab.metrics.semantic import SemanticMetrics
from seglab.models.unet import center_crop
from seglab.tasks.optim import configure_optimizers

__all__ = ["SemanticSegmentationTask"]

_LOSS_KEYS = {"reduction", "class_weights", "weight_map", "aux_weight"}


class SemanticSegmentationTask(L.LightningModule):
    """LightningModule wrapping a semantic net ``net: (N, C, H, W) -> logits (N, K, H', W')``.

    Nets with an auxiliary head return ``{"out", "aux"}`` in train mode; the auxiliary loss is
    weighted by ``loss.aux_weight``. Where the net's output is smaller than the input (the unpadded
    U-Net), the mask and weight map are centre-cropped to the output.

    Args:
        net: the network, exposed as ``self.net``.
        num_classes: K, background included.
        ignore_index: label ignored by the loss and metrics.
        loss: ``reduction`` ("mean" over labelled pixels or "sum"), ``class_weights`` (None, a
            list of K floats, or "median_frequency" computed by the data module), ``weight_map``
            (multiply each pixel's loss by ``batch["weight"]``), ``aux_weight``.
        optimizer: partial taking the parameters.
        scheduler: partial taking the optimizer; a ``total_iters`` / ``T_max`` left as None is set
            to the run's number of optimizer steps, and the scheduler steps every iteration.
        class_names: names used for the per-class IoU logs.
        inference: how validation, test and predict run the net: ``{"mode": "whole"}`` (default),
            ``{"mode": "slide", "crop_size": ..., "stride": ...}`` or ``{"mode": "overlap_tile",
            "tile_size": ...}`` (see ``seglab.inference.predict_logits``).
        extra_metrics: also log ``pixel_error`` (1 - pixel accuracy) and/or ``rand_error``
            (foreground-restricted Rand error of the 4-connected class-1 components, ISBI 2012).
    """

    def __init__(
        self,
        *,
        net: nn.Module,
        num_classes: int,
        ignore_index: int = 255,
        loss: Mapping[str, Any] | None = None,
        optimizer: Callable[..., Optimizer] | None = None,
        scheduler: Callable[[Optimizer], torch.optim.lr_scheduler.LRScheduler] | None = None,
        class_names: Sequence[str] | None = None,
        inference: Mapping[str, Any] | None = None,
        extra_metrics: Sequence[str] = (),
    ) -> None:
        super().__init__()
        # Plain values only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.optimizer_fn = optimizer
        self.scheduler_fn = scheduler
        loss = dict(loss or {})
        unknown = set(loss) - _LOSS_KEYS
        if unknown:
            raise ValueError(
                f"model.loss has unknown key(s) {sorted(unknown)}; valid: {sorted(_LOSS_KEYS)}"
            )
        self.reduction = loss.get("reduction", "mean")
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"model.loss.reduction={self.reduction!r}: expected 'mean' or 'sum'")
        self.weight_map = bool(loss.get("weight_map", False))
        self.aux_weight = float(loss.get("aux_weight", 0.0) or 0.0)
        self.class_weights_option = loss.get("class_weights")
        weights = self._parse_class_weights(self.class_weights_option, num_classes)
        self.register_buffer("class_weights", weights, persistent=True)
        self.net = net
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = (
            list(class_names) if class_names else [str(i) for i in range(num_classes)]
        )
        # One metric object per stage (ModuleDict keys may not shadow nn.Module.train).
        self.train_metrics = SemanticMetrics(num_classes, ignore_index)
        self.val_metrics = SemanticMetrics(num_classes, ignore_index)
        self.test_metrics = SemanticMetrics(num_classes, ignore_index)
        # float64 sums: the dataset mean does not depend on batch or DDP rank order
        self.val_loss = MeanMetric().set_dtype(torch.float64)
        self.test_loss = MeanMetric().set_dtype(torch.float64)
        unknown = set(extra_metrics) - {"pixel_error", "rand_error"}
        if unknown:
            raise ValueError(
                f"extra_metrics {sorted(unknown)} unknown; valid: ['pixel_error', 'rand_error']"
            )
        self.extra_metrics = tuple(extra_metrics)
        if "rand_error" in self.extra_metrics:
            self.val_rand_error = RandError()
            self.test_rand_error = RandError()
        self.inference = dict(inference or {"mode": "whole"})
        self.inference.setdefault("mode", "whole")

    @staticmethod
    def _parse_class_weights(option: Any, num_classes: int) -> torch.Tensor:
        if option is None or option == "median_frequency":
            return torch.ones(num_classes) if option else torch.empty(0)
        if isinstance(option, str):
            raise ValueError(
                f"model.loss.class_weights={option!r}: expected null, 'median_frequency' or a "
                f"list of {num_classes} floats"
            )
        weights = torch.as_tensor(list(option), dtype=torch.float32)
        if weights.shape != (num_classes,) or (weights < 0).any():
            raise ValueError(
                f"model.loss.class_weights has {weights.numel()} entries; expected "
                f"{num_classes} non-negative floats (data.num_classes)"
            )
        return weights

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if stage == "fit" and self.class_weights_option == "median_frequency":
            if datamodule is None or not hasattr(datamodule, "median_frequency_weights"):
                raise ValueError(
                    "model.loss.class_weights=median_frequency needs a data module that "
                    "computes class frequencies"
                )
            weights = torch.as_tensor(datamodule.median_frequency_weights(), dtype=torch.float32)
            self.class_weights = weights.to(self.class_weights.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K, H', W') in eval mode; the net's raw output in train mode."""
        return self.net(x)

    def _loss(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, ...]:
        mask, weight = batch["mask"], batch.get("weight") if self.weight_map else None
        if self.weight_map and weight is None:
            raise ValueError(
                "model.loss.weight_map=true but the batch has no 'weight': choose a data config "
                "that computes weight maps"
            )
        if logits.shape[-2:] != mask.shape[-2:]:
            h, w = logits.shape[-2:]
            if h > mask.shape[-2] or w > mask.shape[-1]:
                raise ValueError(
                    f"net output {tuple(logits.shape[-2:])} is larger than the mask "
                    f"{tuple(mask.shape[-2:])}"
                )
            mask = center_crop(mask, h, w)
            weight = None if weight is None else center_crop(weight, h, w)
        total, normaliser = pixel_cross_entropy(
            logits,
            mask,
            ignore_index=self.ignore_index,
            class_weights=self.class_weights if self.class_weights.numel() else None,
            pixel_weights=weight,
        )
        return total, normaliser, mask

    def _reduce(self, total: torch.Tensor, normaliser: torch.Tensor) -> torch.Tensor:
        return total if self.reduction == "sum" else total / normaliser.clamp(min=1e-12)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.net(batch["image"])
        logits, aux = (out["out"], out.get("aux")) if isinstance(out, dict) else (out, None)
        total, normaliser, mask = self._loss(logits, batch)
        loss = self._reduce(total, normaliser)
        if aux is not None and self.aux_weight:
            loss = loss + self.aux_weight * self._reduce(*self._loss(aux, batch)[:2])
        self.train_metrics.update(logits.detach(), mask)
        self.log("train/loss", loss, prog_bar=True, batch_size=mask.shape[0])
        return loss

    def infer(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, K, H', W') of the net in eval mode, by ``self.inference``.

        ``whole`` is one plain pass, so an unpadded net's smaller output is scored against the
        centre of the mask, as in training; ``slide`` and ``overlap_tile`` give the input size.
        """
        options = dict(self.inference)
        mode = options.pop("mode")
        if mode == "whole" and not options:
            out = self.net(images)
            return out["out"] if isinstance(out, dict) else out
        return predict_logits(self.net, images, mode=mode, **options)

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        logits = self.infer(batch["image"])
        total, normaliser, mask = self._loss(logits, batch)
        if self.reduction == "sum":
            getattr(self, f"{stage}_loss").update(total / mask.shape[0], weight=mask.shape[0])
        elif normaliser > 0:
            getattr(self, f"{stage}_loss").update(total / normaliser, weight=normaliser)
        getattr(self, f"{stage}_metrics").update(logits, mask)
        if "rand_error" in self.extra_metrics:
            getattr(self, f"{stage}_rand_error").update(logits.max(dim=1).indices, mask)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self.infer(batch["image"]).max(dim=1).indices

    def _log_epoch(self, stage: str) -> None:
        values = getattr(self, f"{stage}_metrics").compute()
        getattr(self, f"{stage}_metrics").reset()
        logs = {f"{stage}/pixel_acc": values["pixel_acc"]}
        if "pixel_error" in self.extra_metrics:
            logs[f"{stage}/pixel_error"] = 1 - values["pixel_acc"]
        rand = getattr(self, f"{stage}_rand_error", None)
        if rand is not None:
            logs[f"{stage}/rand_error"] = rand.compute()
            rand.reset()
        for name, iou in zip(self.class_names, values["iou"]):
            logs[f"{stage}/iou_{name}"] = iou
        mean_loss = getattr(self, f"{stage}_loss", None)
        if mean_loss is not None:
            logs[f"{stage}/loss"] = mean_loss.compute()
            mean_loss.reset()
        # Metrics were synced by torchmetrics already: identical on every rank.
        self.log_dict(logs, prog_bar=False, sync_dist=False, rank_zero_only=False)
        self.log(f"{stage}/miou", values["miou"], prog_bar=True)

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.optimizer_fn, self.scheduler_fn)
