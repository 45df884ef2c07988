"""COCO results files: detections with RLE masks and the dataset's own category ids.

The format of https://cocodataset.org/#format-results, one entry per detection::

    {"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float,
     "segmentation": {"size": [H, W], "counts": str}}

``pycocotools.COCO.loadRes`` reads it. To score masks with ``COCOeval`` as the official
evaluation does, drop ``bbox`` from the entries first (with a box, pycocotools takes the box's
area as the object's area for the small / medium / large ranges; detectron2 does the same).
``seglab.callbacks.writers.CocoResultsWriter`` writes a file of them from ``Trainer.predict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

__all__ = ["detections_to_coco"]


def detections_to_coco(
    detections: Mapping[str, torch.Tensor],
    image_id: int,
    label_to_category: Mapping[int, int] | None = None,
    *,
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """COCO result entries of one image's detections.

    Args:
        detections: ``boxes`` (N, 4) xyxy, ``scores`` (N,), ``labels`` (N,) and ``masks``
            (N, 1, H, W) or (N, H, W), probabilities or booleans.
        image_id: the image's id in the annotation file.
        label_to_category: contiguous label -> category id (None: the label itself).
        mask_threshold: probabilities at or above it are in the mask.
    """
    boxes = detections["boxes"].detach().cpu().double()
    scores = detections["scores"].detach().cpu().tolist()
    labels = detections["labels"].detach().cpu().tolist()
    masks = detections["masks"].detach().cpu()
    if masks.ndim == 4:
        masks = masks[:, 0]
    binary = (masks >= mask_threshold) if masks.is_floating_point() else masks.bool()
    binary = np.asfortranarray(binary.numpy().astype(np.uint8).transpose(1, 2, 0))
    rles = mask_utils.encode(binary) if len(labels) else []
    entries = []
    for k, (label, score) in enumerate(zip(labels, scores)):
        x0, y0, x1, y1 = boxes[k].tolist()
        category = int(label_to_category[label]) if label_to_category else int(label)
        rle = rles[k]
        entries.append(
            {
                "image_id": int(image_id),
                "category_id": category,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": float(score),
                "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()},
            }
        )
    return entries
