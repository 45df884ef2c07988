"""COCO results files: detections with RLE masks and the dataset's own category ids.

The format of https://cocodataset.org/#format-results, one entry per detection::

    {"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float,
     "segmentation": {"size": [H, W], "counts": str}}

``pycocotools.COCO.loadRes`` reads it. To score masks with ``COCOeval`` as the official
evaluation does, drop ``bbox`` from the entries first (with a box, pycocotools takes the box's
area as the object's area for the small / medium / large ranges; detectron2 does the same).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from pycocotools import mask as mask_utils
from rich.progress import track
from torch import nn
from torch.utils.data import DataLoader, Dataset

from seglab.data.base import list_collate
from seglab.utils.instantiate import build_datamodule, build_task
from seglab.utils.io import atomic_write_text

__all__ = ["coco_results", "detections_to_coco", "predict_instances"]

log = logging.getLogger(__name__)


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


@torch.inference_mode()
def coco_results(
    net: nn.Module,
    dataset: Dataset,
    label_to_category: Mapping[int, int] | None = None,
    *,
    mask_threshold: float = 0.5,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Detections of ``net`` (eval mode) on every image of an instance dataset, as COCO results.

    The images go to the net without the dataset's transforms: the detector resizes them itself,
    and the boxes and masks come back at each image's original size, as the results format needs.
    """
    dataset = copy.copy(dataset)
    if hasattr(dataset, "transform"):
        dataset.transform = None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=list_collate)
    was_training = net.training
    net.eval()
    results: list[dict[str, Any]] = []
    try:
        batches = track(loader, description="export") if progress else loader
        for images, targets in batches:
            outputs = net([image.to(device) for image in images])
            for output, target in zip(outputs, targets):
                results += detections_to_coco(
                    output,
                    int(target["image_id"]),
                    label_to_category,
                    mask_threshold=mask_threshold,
                )
    finally:
        net.train(was_training)
    return results


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def predict_instances(
    cfg: DictConfig, run_cfg: DictConfig, checkpoint: dict[str, Any]
) -> tuple[list[Path], dict[str, Any]]:
    """``predict`` for instance checkpoints: COCO results of every image of the split
    ``cfg.input`` of the checkpoint's dataset (or ``data=...`` chosen on the command line).

    Writes ``cfg.output`` when it ends in ``.json``, else ``<cfg.output>/<split>_results.json``.
    Category ids are the dataset's own (``datamodule.label_to_category``; the label itself for
    datasets without one). Returns the written path and the objects built.
    """
    datamodule = build_datamodule(run_cfg.data)
    splits: Sequence[str] = datamodule.splits
    split = str(cfg.input)
    if split not in splits:
        raise ValueError(
            f"input={split!r}: an instance checkpoint exports COCO results for a split of its "
            f"dataset; choose input= one of {list(splits)}"
        )
    model = build_task(run_cfg, datamodule)
    model.load_state_dict(checkpoint["state_dict"])
    device = _device(cfg.get("device", "auto"))
    net = model.net.to(device).eval()
    results = coco_results(
        net,
        datamodule.dataset(split),
        getattr(datamodule, "label_to_category", None),
        mask_threshold=float(getattr(model, "mask_threshold", 0.5)),
        batch_size=datamodule.eval_batch_size,
        device=device,
    )
    output = Path(cfg.output)
    target = output if output.suffix == ".json" else output / f"{split}_results.json"
    atomic_write_text(target, json.dumps(results))
    log.info("wrote %d detections of %s to %s", len(results), split, target)
    return [target], {"cfg": run_cfg, "model": model, "datamodule": datamodule}
