"""Tiny COCO-format trees written by the instance tests (images as PNG, so pixels are exact)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "blob"}]


def rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed RLE of a binary mask, JSON-ready."""
    out = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(out["size"]), "counts": out["counts"].decode()}


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE (column-major run lengths starting with a run of zeros)."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def annotation(ann_id: int, image_id: int, category: int, mask: np.ndarray, **extra) -> dict:
    """An annotation whose area and bbox are those of ``mask`` (as COCO's own files do)."""
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    entry = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category,
        "segmentation": rle(mask),
        "area": float(mask_utils.area(r)),
        "bbox": [float(v) for v in mask_utils.toBbox(r)],
        "iscrowd": 0,
    }
    entry.update(extra)
    return entry


def _save(folder: Path, name: str, image: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / name)


def write_edge_case_tree(root: Path) -> dict[str, Any]:
    """Four images: polygon + compressed RLE + crowd (48x64), uncompressed RLE + one-pixel +
    image-sized objects (odd size 37x53), no annotation (40x40), crowd only (32x48).

    Category ids 3 and 7 (labels 1 and 2), annotation ids from 1. Returns the JSON written to
    ``root/annotations.json`` (images in ``root/images``).
    """
    rng = np.random.default_rng(0)
    images, annotations = [], []

    def add_image(image_id: int, h: int, w: int) -> None:
        _save(root / "images", f"{image_id}.png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})

    add_image(1, 48, 64)
    annotations.append(
        {
            "id": 1,
            "image_id": 1,
            "category_id": 3,
            "segmentation": [[4.0, 4.0, 20.0, 4.0, 20.0, 20.0, 4.0, 20.0]],
            "area": 256.0,
            "bbox": [4.0, 4.0, 16.0, 16.0],
            "iscrowd": 0,
        }
    )
    blob = np.zeros((48, 64), np.uint8)
    blob[25:40, 30:60] = 1
    annotations.append(annotation(2, 1, 7, blob))
    crowd = np.zeros((48, 64), np.uint8)
    crowd[0:10, 40:64] = 1
    annotations.append(annotation(3, 1, 3, crowd, iscrowd=1))

    add_image(2, 37, 53)
    other = np.zeros((37, 53), np.uint8)
    other[5:30, 2:12] = 1
    entry = annotation(4, 2, 7, other)
    entry["segmentation"] = uncompressed_rle(other)
    annotations.append(entry)
    pixel = np.zeros((37, 53), np.uint8)
    pixel[36, 52] = 1
    annotations.append(annotation(5, 2, 3, pixel))
    annotations.append(
        {
            "id": 6,
            "image_id": 2,
            "category_id": 3,
            "segmentation": [[0.0, 0.0, 53.0, 0.0, 53.0, 37.0, 0.0, 37.0]],
            "area": float(37 * 53),
            "bbox": [0.0, 0.0, 53.0, 37.0],
            "iscrowd": 0,
        }
    )

    add_image(3, 40, 40)

    add_image(4, 32, 48)
    only = np.zeros((32, 48), np.uint8)
    only[8:24, 8:40] = 1
    annotations.append(annotation(7, 4, 7, only, iscrowd=1))

    data = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations.json").write_text(json.dumps(data))
    return data


def write_shapes_tree(root: Path, *, counts: dict[str, int], size: int = 64, seed: int = 0) -> None:
    """Splits of images with 1..2 large filled rectangles / disks (category 1 "thing") on noise:
    ``root/<split>/`` images and ``root/<split>.json``; area and bbox from the masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    next_ann = 1
    for split, n in counts.items():
        images, annotations = [], []
        for i in range(n):
            image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            image_id = 100 + i
            for _ in range(int(rng.integers(1, 3))):
                cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
                r = int(rng.integers(size // 6, size // 3))
                if rng.random() < 0.5:
                    mask = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
                else:
                    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                image[mask] = rng.integers(150, 255, 3)
                annotations.append(annotation(next_ann, image_id, 1, mask))
                next_ann += 1
            _save(root / split, f"{image_id}.png", image)
            images.append(
                {"id": image_id, "file_name": f"{image_id}.png", "height": size, "width": size}
            )
        data = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "thing"}],
        }
        (root / f"{split}.json").write_text(json.dumps(data))


def write_panoptic_tree(root: Path) -> dict[str, Any]:
    """COCO panoptic: two 24x32 images (``root/images``), each a sky stuff segment and a square
    thing segment with their bboxes, PNGs in ``root/panoptic``; returns the JSON written to
    ``root/panoptic.json``."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id in (1, 2):
        ids = np.full((24, 32), 5, np.int64)
        ids[4:12, 6:14] = 9
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        _save(root / "panoptic", f"{image_id}.png", rgb)
        _save(root / "images", f"{image_id}.png", rng.integers(0, 255, (24, 32, 3), np.uint8))
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 24, "width": 32})
        segments = [
            {"id": 5, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 32, 24], "area": 704},
            {"id": 9, "category_id": 2, "iscrowd": 0, "bbox": [6, 4, 8, 8], "area": 64},
        ]
        annotations.append(
            {"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": segments}
        )
    categories = [{"id": 1, "name": "sky", "isthing": 0}, {"id": 2, "name": "box", "isthing": 1}]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / "panoptic.json").write_text(json.dumps(data))
    return data
