"""Benchmark: MaskAP with the faster-coco-eval backend against the pycocotools one, one run.

Setup: 500 generated 256x256 images of 20 objects each (disks and ellipses, radii 3 to 60 px, so
COCO's small, medium and large areas all occur; 10 classes; 5% crowd), seed 0. Each prediction
is a copy of a ground-truth object, its centre moved by up to 4 px, its radii scaled by 0.8 to
1.2 and its class wrong one time in ten, for 90% of the objects, plus 3 false positives per image;
scores uniform in [0.05, 1). Boxes are the masks' tight boxes. Both metrics
(``MaskAP(backend=...)``, box and mask AP) see the same batches of 10 images, interleaved batch by
batch and taking turns at reading a fresh batch first; batches are generated outside the timing.
Prints the seconds of ``update`` (all batches) and ``compute`` of each backend, whether all 24
values (box and mask AP / AR) are identical, the ratio of update + compute times, and last the
ratio of pycocotools' to faster-coco-eval's ``compute`` time (the COCOeval run the issue's goal
of >= 3x is about) as ``map_compute_speedup_faster_coco_eval: <x>x``. ``update`` is mostly RLE
encoding of the masks, pycocotools' in both (the same bytes; faster-coco-eval's is slower), so it
costs the same with either backend.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time

import torch
import torchmetrics

from seglab.metrics import MaskAP

IMAGES = 500
OBJECTS = 20
SIZE = 256
CLASSES = 10
FALSE_POSITIVES = 3
BATCH = 10
SEED = 0
BACKENDS = ("pycocotools", "faster_coco_eval")


def ellipses(params: torch.Tensor) -> torch.Tensor:
    """Masks (N, SIZE, SIZE) bool of ellipses ``params`` (N, 4): centre y, x and radii y, x."""
    grid = torch.arange(SIZE, dtype=torch.float32)
    cy, cx, ry, rx = (params[:, i].view(-1, 1, 1) for i in range(4))
    dy = (grid.view(1, SIZE, 1) - cy) / ry
    dx = (grid.view(1, 1, SIZE) - cx) / rx
    return dy**2 + dx**2 <= 1


def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """xyxy boxes (N, 4) of non-empty masks (N, H, W)."""
    rows, cols = masks.any(2), masks.any(1)
    index = torch.arange(SIZE)
    big = SIZE + 1
    y0 = torch.where(rows, index, big).amin(1)
    y1 = torch.where(rows, index, -1).amax(1) + 1
    x0 = torch.where(cols, index, big).amin(1)
    x1 = torch.where(cols, index, -1).amax(1) + 1
    return torch.stack([x0, y0, x1, y1], 1).float()


def image_pair(gen: torch.Generator, image_id: int) -> tuple[dict, dict]:
    """Prediction and target of one generated image (see the module docstring)."""
    radii = 3 + 57 * torch.rand(OBJECTS, 1, generator=gen) ** 2  # more small objects than large
    aspect = 0.6 + 0.8 * torch.rand(OBJECTS, 1, generator=gen)
    centres = torch.rand(OBJECTS, 2, generator=gen) * SIZE
    params = torch.cat([centres, radii * aspect, radii / aspect], 1).clamp(min=1.5)
    masks = ellipses(params)
    keep = masks.flatten(1).any(1)
    params, masks = params[keep], masks[keep]
    n = len(masks)
    labels = torch.randint(1, CLASSES + 1, (n,), generator=gen)
    target = {
        "boxes": tight_boxes(masks),
        "labels": labels,
        "masks": masks,
        "iscrowd": (torch.rand(n, generator=gen) < 0.05).long(),
        "area": masks.flatten(1).sum(1).float(),
        "image_id": image_id,
    }

    found = torch.rand(n, generator=gen) < 0.9
    moved = params[found].clone()
    moved[:, :2] += (torch.rand(len(moved), 2, generator=gen) - 0.5) * 8
    moved[:, 2:] *= 0.8 + 0.4 * torch.rand(len(moved), 2, generator=gen)
    wrong = torch.rand(len(moved), generator=gen) < 0.1
    pred_labels = torch.where(
        wrong, torch.randint(1, CLASSES + 1, (len(moved),), generator=gen), labels[found]
    )
    extra = torch.cat(
        [
            torch.rand(FALSE_POSITIVES, 2, generator=gen) * SIZE,
            4 + 36 * torch.rand(FALSE_POSITIVES, 2, generator=gen),
        ],
        1,
    )
    pred_masks = ellipses(torch.cat([moved, extra]))
    pred_labels = torch.cat(
        [pred_labels, torch.randint(1, CLASSES + 1, (FALSE_POSITIVES,), generator=gen)]
    )
    nonempty = pred_masks.flatten(1).any(1)
    pred_masks, pred_labels = pred_masks[nonempty], pred_labels[nonempty]
    pred = {
        "boxes": tight_boxes(pred_masks),
        "scores": 0.05 + 0.95 * torch.rand(len(pred_masks), generator=gen),
        "labels": pred_labels,
        "masks": pred_masks,
    }
    return pred, target


def main() -> None:
    print(
        "MaskAP benchmark: faster-coco-eval vs pycocotools backend, update + compute, same inputs"
    )
    print(
        f"setup: {IMAGES} generated {SIZE}x{SIZE} images x {OBJECTS} objects (disks / ellipses, "
        f"radii 3-60 px), {CLASSES} classes, 5% crowd; predictions: 90% of the objects moved <= 4 "
        f"px and rescaled 0.8-1.2 (10% wrong class) + {FALSE_POSITIVES} false positives per "
        f"image; box and mask AP; batches of {BATCH}, interleaved; seed {SEED}"
    )
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average "
        f"{load}; python {platform.python_version()}, torch {torch.__version__}, torchmetrics "
        f"{torchmetrics.__version__}, pycocotools {importlib.metadata.version('pycocotools')}, "
        f"faster-coco-eval {importlib.metadata.version('faster-coco-eval')}"
    )

    metrics = {name: MaskAP(backend=name) for name in BACKENDS}
    update = dict.fromkeys(BACKENDS, 0.0)
    gen = torch.Generator().manual_seed(SEED)
    objects = detections = 0
    for start in range(0, IMAGES, BATCH):
        pairs = [image_pair(gen, start + i) for i in range(BATCH)]
        preds, targets = [p for p, _ in pairs], [t for _, t in pairs]
        objects += sum(len(t["labels"]) for t in targets)
        detections += sum(len(p["labels"]) for p in preds)
        # the first to read a fresh batch pays its cache misses: take turns
        for name in BACKENDS if start // BATCH % 2 else BACKENDS[::-1]:
            begin = time.perf_counter()
            metrics[name].update(preds, targets)
            update[name] += time.perf_counter() - begin
    print(f"data: {objects} objects, {detections} detections")

    compute, values = {}, {}
    for name in BACKENDS[::-1]:
        begin = time.perf_counter()
        values[name] = metrics[name].compute()
        compute[name] = time.perf_counter() - begin

    reference, fast = values["pycocotools"], values["faster_coco_eval"]
    keys = [k for k in reference if k.startswith(("bbox_ma", "segm_ma")) and "per_class" not in k]
    differ = [k for k in keys if not torch.equal(reference[k], fast[k])]
    print(f"{'backend':18s}{'update s':>10s}{'compute s':>11s}{'total s':>10s}{'segm mAP':>10s}")
    for name in BACKENDS:
        print(
            f"{name:18s}{update[name]:10.2f}{compute[name]:11.2f}"
            f"{update[name] + compute[name]:10.2f}{values[name]['segm_map'].item():10.4f}"
        )
    print(
        f"values: {len(keys) - len(differ)} of {len(keys)} identical"
        + (f"; differ: {differ}" if differ else " (box and mask AP / AR, float32)")
    )
    total = {name: update[name] + compute[name] for name in BACKENDS}
    print(f"update + compute: {total['pycocotools'] / total['faster_coco_eval']:.1f}x faster")
    print(
        "map_compute_speedup_faster_coco_eval: "
        f"{compute['pycocotools'] / compute['faster_coco_eval']:.1f}x"
    )


if __name__ == "__main__":
    main()
