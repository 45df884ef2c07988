"""The panoptic segmentation task: a detector with a semantic branch (Panoptic FPN), its weighted
losses, PQ / SQ / RQ, the things' mask AP and the semantic head's mIoU."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from seglab.metrics.panoptic_quality import PanopticQuality
from seglab.metrics.semantic import SemanticMetrics
from seglab.tasks.instance import LOSS_KEYS, InstanceSegmentationTask

__all__ = ["PanopticSegmentationTask"]

_LOSS_OPTIONS = {"instance_weight": 1.0, "semantic_weight": 0.5}


class PanopticSegmentationTask(InstanceSegmentationTask):
    """LightningModule of a panoptic net with the contract of ``seglab.models.PanopticFPN``.

    Label spaces (T things, S stuff): instance labels 1..T; semantic-head classes 0 = things,
    1..S = stuff, ``ignore_index`` void; panoptic classes 0 = void, 1..T things, T+1..T+S stuff.
    Batches are the instance task's ``(list[image], list[target])`` whose targets also hold
    ``semantic`` (H, W), ``panoptic`` (H, W, 2) = (class, instance id) and ``crowd`` (H, W) bool.

    Loss (Kirillov et al., "Panoptic Feature Pyramid Networks", CVPR 2019, section 3.3):
    ``L = lambda_i (L_cls + L_bbox + L_mask + L_rpn) + lambda_s L_s`` with ``lambda_i =
    loss.instance_weight`` and ``lambda_s = loss.semantic_weight`` (1.0 and 0.5, the paper's COCO
    setting). The net's losses are logged unweighted (``train/loss_sem_seg``, ``val/loss_mask``,
    ...), ``train/loss`` / ``val/loss`` is the weighted sum; validation losses leave batch-norm
    statistics alone (``InstanceSegmentationTask.eval_losses``).

    At the end of validation and test, synced across DDP ranks: ``pq``, ``sq``, ``rq`` and the
    same for ``_things`` and ``_stuff`` (``PanopticQuality``, COCO rules, crowd regions from the
    ground truth); the instance task's box and mask AP of the things (``map_segm``, ...); and
    ``miou`` / ``pixel_acc`` of the semantic head (S + 1 classes, things as one).

    Args:
        net: the panoptic net (``seglab.models.PanopticFPN``), exposed as ``self.net``.
        num_classes: 1 + T + S (``data.num_classes`` of the panoptic view).
        num_things: T.
        loss: ``instance_weight`` and ``semantic_weight``.
        mask_threshold: predicted mask probabilities at or above it form the masks of mask AP.
        ignore_index: the void label of the semantic targets.
        optimizer, scheduler, class_names, val_losses, map_backend: as ``InstanceSegmentationTask``.
    """

    main_metric = "pq"
    loss_keys = (*LOSS_KEYS, "loss_sem_seg")
    target_keys = ("boxes", "labels", "masks", "semantic")

    def __init__(
        self,
        *,
        net: nn.Module,
        num_classes: int,
        num_things: int,
        loss: Mapping[str, float] | None = None,
        mask_threshold: float = 0.5,
        ignore_index: int = 255,
        optimizer: Callable[..., Optimizer] | None = None,
        scheduler: Callable[[Optimizer], torch.optim.lr_scheduler.LRScheduler] | None = None,
        class_names: Sequence[str] | None = None,
        val_losses: bool = True,
        map_backend: str = "auto",
    ) -> None:
        super().__init__(
            net=net,
            num_classes=num_classes,
            mask_threshold=mask_threshold,
            optimizer=optimizer,
            scheduler=scheduler,
            class_names=class_names,
            val_losses=val_losses,
            map_backend=map_backend,
        )
        if not 0 < num_things < num_classes - 1:
            raise ValueError(
                f"model.num_things={num_things}: expected 1..{num_classes - 2} (num_classes="
                f"{num_classes} counts void, the things and at least one stuff class)"
            )
        net_things = getattr(net, "num_things", num_things)
        if net_things != num_things:
            raise ValueError(f"model.num_things={num_things} but model.net.num_things={net_things}")
        options = dict(loss or {})
        unknown = set(options) - set(_LOSS_OPTIONS)
        if unknown:
            raise ValueError(
                f"model.loss has unknown key(s) {sorted(unknown)}; valid: {sorted(_LOSS_OPTIONS)}"
            )
        options = {**_LOSS_OPTIONS, **options}
        for key, value in options.items():
            if value < 0:
                raise ValueError(f"model.loss.{key}={value}: expected a weight >= 0")
        self.instance_weight = float(options["instance_weight"])
        self.semantic_weight = float(options["semantic_weight"])
        self.num_things = num_things
        self.num_stuff = num_classes - 1 - num_things
        self.ignore_index = ignore_index
        things = range(1, num_things + 1)
        stuff = range(num_things + 1, num_classes)
        self.add_stage_metric(
            "pq", ("val", "test"), lambda: PanopticQuality(things=things, stuffs=stuff)
        )
        self.add_stage_metric(
            "semantic",
            ("val", "test"),
            lambda: SemanticMetrics(self.num_stuff + 1, ignore_index=ignore_index),
        )

    def total_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """``lambda_i`` x the detector's losses + ``lambda_s`` x ``loss_sem_seg``."""
        semantic = losses["loss_sem_seg"]
        instance = sum(v for k, v in losses.items() if k != "loss_sem_seg")
        return self.instance_weight * instance + self.semantic_weight * semantic

    def update_metrics(
        self, stage: str, detections: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]]
    ) -> None:
        super().update_metrics(stage, detections, targets)
        pq = self.stage_metrics[stage]["pq"]
        semantic = self.stage_metrics[stage]["semantic"]
        for output, target in zip(detections, targets):
            # one image at a time: images of a batch may differ in size
            pq.update(output["panoptic"][None], target["panoptic"][None], target["crowd"][None])
            semantic.update(output["sem_seg"][None], target["semantic"][None])

    def predict_step(self, batch: tuple[list, Any], batch_idx: int) -> list[dict[str, Any]]:
        """The net's outputs for ``batch[0]``: the instance task's detections plus ``sem_seg``
        logits (S + 1, H, W), ``panoptic`` (H, W, 2) and ``segments_info`` per image."""
        return self.net(list(batch[0]))

    def epoch_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        logs = super().epoch_metrics(stage)
        values = self.stage_metrics[stage]["pq"].compute()
        for group in ("", "_things", "_stuff"):
            for key in ("pq", "sq", "rq"):
                logs[f"{key}{group}"] = values[f"{key}{group}"].float()
        semantic = self.stage_metrics[stage]["semantic"].compute()
        self.semantic_results[stage] = semantic
        logs["miou"], logs["pixel_acc"] = semantic["miou"], semantic["pixel_acc"]
        return logs
