"""The instance segmentation task: torchvision-style detectors, their losses, COCO box and mask AP."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torchmetrics import MeanMetric

from seglab.metrics.mask_ap import MaskAP
from seglab.tasks.base import SegmentationTask

__all__ = ["LOSS_KEYS", "InstanceSegmentationTask", "loss_mode"]

LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
# torchmetrics' result keys -> logged names (``{stage}/{name}_{bbox|segm}``)
_AP_KEYS = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)
_NORM_AND_DROPOUT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
_NET_TARGET_KEYS = ("boxes", "labels", "masks")


@contextlib.contextmanager
def loss_mode(net: nn.Module) -> Iterator[nn.Module]:
    """Put ``net`` in train mode except its batch-norm and dropout modules; restore every
    module's mode on exit.

    torchvision's detectors return losses only when ``net.training`` is set. Inside this context
    they do, while every ``_BatchNorm`` normalises with (and does not update) its running
    statistics and every dropout module is the identity, exactly as in eval mode. Run it under
    ``torch.no_grad()`` so that no gradient is kept either.
    """
    modes = {module: module.training for module in net.modules()}
    try:
        net.train()
        for module in net.modules():
            if isinstance(module, _NORM_AND_DROPOUT):
                module.eval()
        yield net
    finally:
        for module, mode in modes.items():
            module.training = mode


class InstanceSegmentationTask(SegmentationTask):
    """LightningModule of an instance segmentation net with torchvision's detection contract.

    Batches are ``(list[image (C, H, W) float in [0, 1]], list[target])`` with targets holding
    ``boxes``, ``labels``, ``masks`` (n, H, W), ``iscrowd``, ``area`` and ``image_id``.
    Crowd objects (``iscrowd == 1``) never reach the net's losses; they stay in the targets of the
    AP metrics, where COCOeval ignores the detections that fall on them.

    Logs ``train/<loss>`` for each of the net's losses and their sum ``train/loss`` at every step;
    at the end of validation and test, the mean of the same losses (``val/loss_mask``, ...,
    ``val/loss``) over the images, and COCO AP / AR for boxes and masks (``val/map_segm``,
    ``val/map_50_segm``, ``val/map_75_segm``, ``val/map_small_segm``, ..., ``val/mar_100_segm``,
    and the same with ``_bbox``), synced across DDP ranks.

    Validation losses: torchvision's detectors compute losses only in train mode, which would
    also update the batch-norm running statistics and switch dropout on. The loss pass therefore
    runs inside ``loss_mode``: the net in train mode but every batch-norm and dropout module in
    eval mode, under ``torch.no_grad()``, restoring all modes afterwards; the random sampling of
    anchors and RoIs for these losses draws from a generator seeded with the batch's image ids
    (forked, so the training random stream is untouched and a model's validation losses are
    reproducible). Detections for the metrics come from a separate pass in eval mode.

    Args:
        net: the detector (``seglab.models.MaskRCNN``), exposed as ``self.net``.
        num_classes: K, background included (labels 1..K-1).
        mask_threshold: predicted mask probabilities at or above it form the mask the metrics see.
        optimizer: partial taking the parameters.
        scheduler: partial taking the optimizer; a ``total_iters`` / ``T_max`` left as None is set
            to the run's number of optimizer steps, and the scheduler steps every iteration.
        class_names: one name per class (index 0 the background).
        val_losses: compute the validation / test losses (one more forward pass per batch).
        map_backend: ``MaskAP``'s COCOeval: ``auto`` (faster-coco-eval when installed, else
            pycocotools), ``pycocotools`` or ``faster_coco_eval``; the same numbers either way.
    """

    main_metric = "map_segm"
    loss_keys = LOSS_KEYS  # the net's losses, each logged
    target_keys = _NET_TARGET_KEYS  # what the net learns from, of each target

    def __init__(
        self,
        *,
        net: nn.Module,
        num_classes: int,
        mask_threshold: float = 0.5,
        optimizer: Callable[..., Optimizer] | None = None,
        scheduler: Callable[[Optimizer], torch.optim.lr_scheduler.LRScheduler] | None = None,
        class_names: Sequence[str] | None = None,
        val_losses: bool = True,
        map_backend: str = "auto",
    ) -> None:
        super().__init__(
            net=net,
            num_classes=num_classes,
            optimizer=optimizer,
            scheduler=scheduler,
            class_names=class_names,
        )
        net_classes = getattr(net, "num_classes", num_classes)
        if net_classes != num_classes:
            raise ValueError(
                f"model.num_classes={num_classes} but model.net.num_classes={net_classes}"
            )
        if not 0 < mask_threshold <= 1:
            raise ValueError(f"model.mask_threshold={mask_threshold}: expected 0 < t <= 1")
        self.mask_threshold = mask_threshold
        self.val_losses = val_losses
        self.add_stage_metric("ap", ("val", "test"), lambda: MaskAP(backend=map_backend))
        names = (*self.loss_keys, "loss")
        self.add_stage_metric(
            "loss", ("val", "test"), lambda: nn.ModuleDict({k: MeanMetric() for k in names})
        )

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detections of the net in eval mode (its losses in train mode need targets)."""
        return self.net(images)

    def net_targets(self, targets: Sequence[dict[str, Any]]) -> list[dict[str, torch.Tensor]]:
        """The targets the net learns from: boxes, labels and masks of the non-crowd objects
        (and the other ``target_keys`` as they are)."""
        out = []
        for target in targets:
            crowd = target.get("iscrowd")
            keep = None if crowd is None or not bool(crowd.any()) else crowd == 0
            out.append(
                {
                    k: target[k] if keep is None or k not in _NET_TARGET_KEYS else target[k][keep]
                    for k in self.target_keys
                }
            )
        return out

    def total_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss optimised: the sum of the net's losses."""
        return sum(losses.values())  # type: ignore[return-value]

    def training_step(self, batch: tuple[list, list], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.net(list(images), self.net_targets(targets))
        loss = self.total_loss(losses)
        self.log_train({**losses, "loss": loss}, batch_size=len(images))
        return loss

    def eval_losses(
        self, images: list[torch.Tensor], targets: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        """The net's training losses on a batch without touching batch-norm statistics, dropout,
        gradients or the global random state (see the class docstring)."""
        seed = sum(int(t.get("image_id", 0)) * 1_000_003 for t in targets) % (2**31)
        devices = [images[0].device] if images and images[0].device.type == "cuda" else []
        with (
            torch.no_grad(),
            torch.random.fork_rng(devices=devices),
            loss_mode(self.net),
        ):
            torch.manual_seed(seed)
            return self.net(list(images), self.net_targets(targets))

    def metric_inputs(
        self, detections: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, Any]]
    ) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, Any]]]:
        """Detections and targets in ``MaskAP``'s format (boolean masks, (N, H, W))."""
        preds = []
        for det in detections:
            masks = det["masks"]
            if masks.ndim == 4:
                masks = masks[:, 0]
            preds.append(
                {
                    "boxes": det["boxes"],
                    "scores": det["scores"],
                    "labels": det["labels"],
                    "masks": masks >= self.mask_threshold,
                }
            )
        gts = []
        for t in targets:
            gts.append(
                {
                    "boxes": t["boxes"],
                    "labels": t["labels"],
                    "masks": t["masks"].bool(),
                    "iscrowd": t.get("iscrowd", torch.zeros_like(t["labels"])),
                    "area": t.get("area", t["masks"].flatten(1).sum(1).float()),
                    "image_id": int(t.get("image_id", 0)),
                }
            )
        return preds, gts

    def update_metrics(
        self, stage: str, detections: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]]
    ) -> None:
        """Update the metrics of ``stage`` with the net's eval-mode outputs on a batch."""
        self.stage_metrics[stage]["ap"].update(*self.metric_inputs(detections, targets))

    def eval_step(self, batch: tuple[list, list], stage: str) -> None:
        images, targets = list(batch[0]), list(batch[1])
        self.update_metrics(stage, self.net(images), targets)
        if self.val_losses:
            losses = self.eval_losses(images, targets)
            meters = self.stage_metrics[stage]["loss"]
            for key, value in losses.items():
                if key in meters:
                    meters[key].update(value, weight=len(images))
            meters["loss"].update(self.total_loss(losses), weight=len(images))

    def predict_step(self, batch: tuple[list, Any], batch_idx: int) -> list[dict[str, Any]]:
        """The net's detections of ``batch[0]`` (a list of images (C, H, W)), one dict per image
        in torchvision's format: ``boxes`` (n, 4) xyxy, ``labels`` (n,), ``scores`` (n,) and
        ``masks`` (n, 1, H, W) float probabilities (``mask_threshold`` makes them masks)."""
        return self.net(list(batch[0]))

    def epoch_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        values = self.stage_metrics[stage]["ap"].compute()
        logs = {}
        for iou_type in ("bbox", "segm"):
            for key in _AP_KEYS:
                logs[f"{key}_{iou_type}"] = values[f"{iou_type}_{key}"].float()
        if self.val_losses:
            # Computed on every rank (each compute is a collective), even one that saw no image.
            for key, meter in self.stage_metrics[stage]["loss"].items():
                logs[key] = meter.compute()
        return logs
