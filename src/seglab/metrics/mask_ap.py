"""COCO box and mask AP / AR, exact under DDP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torchmetrics.detection import MeanAveragePrecision

__all__ = ["MaskAP"]


class MaskAP(MeanAveragePrecision):
    """COCO box and mask AP / AR: torchmetrics' ``MeanAveragePrecision(iou_type=("bbox", "segm"))``
    (pycocotools' COCOeval underneath), made exact under DDP.

    torchmetrics gathers its per-image lists element by element, which needs the same number of
    images on every rank and interleaves them by rank. Here the states of all ranks are gathered as
    objects (any number of images per rank) and ``compute`` evaluates the images in the order of
    their ``image_id``, so the numbers do not depend on how the images were spread over ranks (the
    order decides COCOeval's ties between equal scores). The IoU and recall thresholds are
    COCOeval's float64 ones (``np.linspace``), so the numbers equal COCOeval run directly.

    ``update(preds, target)``: torchmetrics' format (boxes xyxy, ``masks`` bool (N, H, W)), each
    target with an ``image_id`` int and optionally ``iscrowd`` and ``area``.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("iou_type", ("bbox", "segm"))
        kwargs.setdefault("backend", "pycocotools")
        # COCOeval's own thresholds: torchmetrics' defaults come from a float32 torch.linspace
        # (0.2 -> 0.20000000298...), which moves recall thresholds past recalls such as 1/5.
        kwargs.setdefault("iou_thresholds", np.linspace(0.5, 0.95, 10).tolist())
        kwargs.setdefault("rec_thresholds", np.linspace(0.0, 1.0, 101).tolist())
        super().__init__(**kwargs)
        self.add_state("image_ids", default=[], dist_reduce_fx=None)

    def update(self, preds: list[dict[str, Any]], target: list[dict[str, Any]]) -> None:
        super().update(preds, target)
        for item in target:
            self.image_ids.append(torch.tensor(int(item["image_id"]), dtype=torch.int64))

    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any = None) -> None:
        group = process_group or self.process_group
        local = {
            name: [v.cpu() if isinstance(v, torch.Tensor) else v for v in getattr(self, name)]
            for name in self._defaults
        }
        gathered: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, local, group=group)
        for name in self._defaults:
            setattr(self, name, [v for part in gathered for v in part[name]])

    def compute(self) -> dict[str, torch.Tensor]:
        order = sorted(range(len(self.image_ids)), key=lambda i: int(self.image_ids[i]))
        for name in self._defaults:
            values = getattr(self, name)
            if len(values) == len(order):
                setattr(self, name, [values[i] for i in order])
        return super().compute()
