"""The semantic segmentation task: any pixel classifier, cross-entropy, pixel accuracy and IoU."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torchmetrics import MeanMetric

from seglab.inference import mirror_pad, parse_tta, predict_logits, tta_logits
from seglab.losses import pixel_cross_entropy
from seglab.metrics.rand_error import RandError
from seglab.metrics.semantic import SemanticMetrics
from seglab.tasks.base import SegmentationTask
from seglab.utils.tensors import crop_to

__all__ = ["SemanticSegmentationTask"]

_LOSS_KEYS = {"reduction", "class_weights", "aux_weight"}
# Accepted and ignored: checkpoints written before the weight map became a data option carry it.
_LEGACY_LOSS_KEYS = {"weight_map"}


class SemanticSegmentationTask(SegmentationTask):
    """LightningModule wrapping a semantic net ``net: (N, C, H, W) -> logits (N, K, H', W')``.

    Nets with an auxiliary head return ``{"out", "aux"}`` in train mode; the auxiliary loss is
    weighted by ``loss.aux_weight``. A batch's ``"weight"`` (N, H, W) (the U-Net weight map, built
    by the data module when ``data.weight_map`` is set) multiplies each pixel's loss whenever the
    batch has one. Where the net's output is smaller than the input (the unpadded U-Net), the mask
    and weight map are centre-cropped to the output.

    Logs ``train/loss`` at every step; at the end of each epoch ``{stage}/pixel_acc``,
    ``{stage}/class_acc``, ``{stage}/iou_<class>`` and ``{stage}/miou``, and for validation and
    test the mean loss ``{stage}/loss`` and the ``extra_metrics``.

    Args:
        net: the network, exposed as ``self.net``.
        num_classes: K, background included.
        ignore_index: label ignored by the loss and metrics.
        loss: ``reduction`` ("mean" over labelled pixels or "sum"), ``class_weights`` (None, a
            list of K floats, or "median_frequency" computed by the data module), ``aux_weight``.
        optimizer: partial taking the parameters.
        scheduler: partial taking the optimizer; a ``total_iters`` / ``T_max`` left as None is set
            to the run's number of optimizer steps, and the scheduler steps every iteration.
        class_names: names used for the per-class IoU logs.
        inference: how validation, test and predict run the net: ``{"mode": "whole"}`` (default),
            ``{"mode": "slide", "crop_size": ..., "stride": ...}`` or ``{"mode": "overlap_tile",
            "tile_size": ...}`` (see ``seglab.inference.predict_logits``); any of them with
            ``"tta": {"flips": [...], "scales": [...]}`` (test-time augmentation,
            ``seglab.inference.tta_logits``; none when null or false).
        extra_metrics: also log ``pixel_error`` (1 - pixel accuracy) and/or ``rand_error``
            (foreground-restricted Rand error of the 4-connected class-1 components, ISBI 2012).
        rand_error_watershed: score ``rand_error`` on the seeded-watershed cells of the class-1
            probability instead (``{seed_threshold, mask_threshold, sigma}``, see
            ``seglab.metrics.rand_error.seeded_watershed``); None: the argmax components.
    """

    main_metric = "miou"

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
        rand_error_watershed: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(
            net=net,
            num_classes=num_classes,
            optimizer=optimizer,
            scheduler=scheduler,
            class_names=class_names,
        )
        options = dict(loss or {})
        unknown = set(options) - _LOSS_KEYS - _LEGACY_LOSS_KEYS
        if unknown:
            raise ValueError(
                f"model.loss has unknown key(s) {sorted(unknown)}; valid: {sorted(_LOSS_KEYS)}"
            )
        self.reduction = options.get("reduction", "mean")
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"model.loss.reduction={self.reduction!r}: expected 'mean' or 'sum'")
        self.aux_weight = float(options.get("aux_weight", 0.0) or 0.0)
        self.class_weights_option = options.get("class_weights")
        weights = self._parse_class_weights(self.class_weights_option, num_classes)
        self.register_buffer("class_weights", weights, persistent=True)
        self.ignore_index = ignore_index
        unknown = set(extra_metrics) - {"pixel_error", "rand_error"}
        if unknown:
            raise ValueError(
                f"extra_metrics {sorted(unknown)} unknown; valid: ['pixel_error', 'rand_error']"
            )
        self.extra_metrics = tuple(extra_metrics)
        self.add_stage_metric(
            "metrics", ("train", "val", "test"), lambda: SemanticMetrics(num_classes, ignore_index)
        )
        # float64 sums: the dataset mean does not depend on batch or DDP rank order
        self.add_stage_metric(
            "loss", ("val", "test"), lambda: MeanMetric().set_dtype(torch.float64)
        )
        if "rand_error" in self.extra_metrics:
            watershed = None if rand_error_watershed is None else dict(rand_error_watershed)
            self.add_stage_metric(
                "rand_error", ("val", "test"), lambda: RandError(watershed=watershed)
            )
        self.inference = dict(inference or {"mode": "whole"})
        self.inference.setdefault("mode", "whole")
        tta = parse_tta(self.inference.pop("tta", None), "model.inference.tta")
        if tta is not None:
            self.inference["tta"] = tta

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

    def _run_net(self, images: torch.Tensor) -> Any:
        """The net on ``images``. An unpadded net (the paper U-Net) given a side it cannot take
        (64-px scenes, say) gets the images mirror-extended to the smallest input whose output
        covers them, and its output cropped back to the image: the paper's extrapolation of the
        missing context by mirroring (Ronneberger et al., Fig. 2), one tile for the whole image.
        A side it can take is left as it is, its smaller output scored on the mask's centre."""
        cover = getattr(self.net, "covering_input", None)
        if cover is None or getattr(self.net, "padding", True):
            return self.net(images)
        h, w = images.shape[-2:]
        try:
            self.net.output_size(h)
            self.net.output_size(w)
            return self.net(images)
        except ValueError:
            pass
        size_h, size_w = cover(h), cover(w)
        top, left = (size_h - h) // 2, (size_w - w) // 2
        out = self.net(mirror_pad(images, top, size_h - h - top, left, size_w - w - left))
        # output pixel i sits over input pixel i + (input - output) / 2 of the extended image
        y0 = top - (size_h - out.shape[-2]) // 2
        x0 = left - (size_w - out.shape[-1]) // 2
        return out[..., y0 : y0 + h, x0 : x0 + w]

    def _loss(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, ...]:
        mask, weight = batch["mask"], batch.get("weight")
        if logits.shape[-2:] != mask.shape[-2:]:
            h, w = logits.shape[-2:]
            if h > mask.shape[-2] or w > mask.shape[-1]:
                raise ValueError(
                    f"net output {tuple(logits.shape[-2:])} is larger than the mask "
                    f"{tuple(mask.shape[-2:])}"
                )
            mask = crop_to(mask, (h, w))
            weight = None if weight is None else crop_to(weight, (h, w))
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
        out = self._run_net(self.memory_format(batch["image"]))
        logits, aux = (out["out"], out.get("aux")) if isinstance(out, dict) else (out, None)
        total, normaliser, mask = self._loss(logits, batch)
        loss = self._reduce(total, normaliser)
        if aux is not None and self.aux_weight:
            loss = loss + self.aux_weight * self._reduce(*self._loss(aux, batch)[:2])
        self.stage_metrics["train"]["metrics"].update(logits.detach(), mask)
        self.log_train({"loss": loss}, batch_size=mask.shape[0])
        return loss

    def infer(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, K, H', W') of the net in eval mode, by ``self.inference``.

        ``whole`` is one plain pass, so an unpadded net's smaller output is scored against the
        centre of the mask, as in training; ``slide`` and ``overlap_tile`` give the input size.
        With ``tta`` the mode runs on every augmented view, which needs the input size.
        """
        options = dict(self.inference)
        mode, tta = options.pop("mode"), options.pop("tta", None)
        if tta is None:
            return self._infer_mode(images, mode, options)
        return tta_logits(lambda view: self._infer_mode(view, mode, options), images, **tta)

    def _infer_mode(
        self, images: torch.Tensor, mode: str, options: Mapping[str, Any]
    ) -> torch.Tensor:
        if mode == "whole" and not options:
            out = self._run_net(images)
            return out["out"] if isinstance(out, dict) else out
        return predict_logits(self.net, images, mode=mode, **options)

    def eval_step(self, batch: dict[str, Any], stage: str) -> None:
        metrics = self.stage_metrics[stage]
        logits = self.infer(self.memory_format(batch["image"]))
        total, normaliser, mask = self._loss(logits, batch)
        if self.reduction == "sum":
            metrics["loss"].update(total / mask.shape[0], weight=mask.shape[0])
        elif normaliser > 0:
            metrics["loss"].update(total / normaliser, weight=normaliser)
        metrics["metrics"].update(logits, mask)
        if "rand_error" in metrics:
            metrics["rand_error"].update(logits, mask)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Class indices int64 (N, H, W) of ``batch["image"]`` (N, C, H, W), by ``self.infer``.

        Raises ValueError where the output is smaller than the input (the unpadded U-Net with
        ``inference.mode=whole``): a prediction covers the whole image.
        """
        images = self.memory_format(batch["image"])
        logits = self.infer(images)
        if logits.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                f"model.inference.mode={self.inference['mode']!r} gives {tuple(logits.shape[-2:])} "
                f"outputs for {tuple(images.shape[-2:])} inputs (an unpadded net): predict with "
                "inference.mode=overlap_tile (and inference.tile_size) for output at the input size"
            )
        return logits.max(dim=1).indices

    def epoch_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        metrics = self.stage_metrics[stage]
        values = metrics["metrics"].compute()
        self.semantic_results[stage] = values
        logs = {"pixel_acc": values["pixel_acc"], "class_acc": values["class_acc"]}
        if "pixel_error" in self.extra_metrics:
            logs["pixel_error"] = 1 - values["pixel_acc"]
        if "rand_error" in metrics:
            logs["rand_error"] = metrics["rand_error"].compute()
        for name, iou in zip(self.class_names, values["iou"]):
            logs[f"iou_{name}"] = iou
        if "loss" in metrics:
            logs["loss"] = metrics["loss"].compute()
        logs["miou"] = values["miou"]
        return logs
