"""Prediction writers for ``Trainer.predict``: one per output kind, each file written atomically.

``SemanticMaskWriter`` writes a class-index PNG (the dataset's palette) and an overlay per image;
``CocoResultsWriter`` one COCO results JSON for all images; ``CocoPanopticWriter`` COCO panoptic
output (a PNG per image and one JSON) and an overlay per image. Files are put in place only
when the whole prediction has succeeded (``PredictionWriter``). All take the batch as the task's
``predict_step`` received it, so names, image sizes and image ids come from the dataset's items.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from seglab.coco_results import detections_to_coco
from seglab.utils.io import stage_bytes

__all__ = ["CocoPanopticWriter", "CocoResultsWriter", "PredictionWriter", "SemanticMaskWriter",
           "class_overlay", "output_stem", "panoptic_overlay", "segment_ids_to_rgb"]  # fmt: skip

# "name[page 3]": a page or frame of a multi-image file (ISBI's TIFF stacks name slices so)
_QUALIFIED = re.compile(r"^(?P<path>.*?)(?P<qualifier>\[[^\[\]]*\])?$")


def output_stem(name: str) -> str:
    """The file stem of an item's predictions: the stem of the file ``name`` names, with a
    bracketed qualifier kept as a safe suffix (``/x/test-volume.tif[page 3]`` ->
    ``test-volume_page_3``), so that the pages of one file get distinct stems."""
    match = _QUALIFIED.match(name)
    stem = PurePath(match["path"]).stem or "prediction"
    qualifier = re.sub(r"[^0-9A-Za-z]+", "_", match["qualifier"] or "").strip("_")
    return f"{stem}_{qualifier}" if qualifier else stem


def _gather(items: list[Any]) -> list[Any]:
    """The ``items`` of every DDP rank, concatenated in rank order (``items`` alone without DDP)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return items
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [item for rank_items in gathered for item in rank_items]


def _output_folder(output: str | Path) -> Path:
    """``output`` as a Path, checked not to be an existing file (the folder is made if missing)."""
    folder = Path(output).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            f"output={str(folder)!r}: is an existing file; expected a folder (made if missing)"
        )
    return folder


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _rgb(pixels: np.ndarray) -> np.ndarray:
    """(H, W, C) pixels as (H, W, 3): a grey or other non-RGB image repeats its first channel."""
    return pixels if pixels.shape[-1] == 3 else np.repeat(pixels[..., :1], 3, axis=2)


def class_overlay(
    pixels: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float
) -> np.ndarray:
    """``pixels`` (H, W, C) on the 0..255 scale blended with the colour (``colours`` (K, 3)) of
    each pixel's class (``labels`` (H, W), clipped to 0..K-1), weighted ``alpha``: (H, W, 3)
    uint8."""
    classes = np.asarray(colours)[labels.clip(0, len(colours) - 1)]
    blend = (1 - alpha) * _rgb(pixels) + alpha * classes
    return blend.round().astype(np.uint8)


def panoptic_overlay(
    pixels: np.ndarray, panoptic: np.ndarray, colours: np.ndarray, alpha: float
) -> np.ndarray:
    """``pixels`` (H, W, C) on the 0..255 scale blended with each segment's class colour
    (``panoptic`` (H, W, 2) = (class, instance id); void, class 0, left as it is), things lighter
    or darker per instance: (H, W, 3) uint8."""
    classes, instances = panoptic[..., 0], panoptic[..., 1]
    colours = np.asarray(colours, np.float32)[classes.clip(0, len(colours) - 1)]
    # instances of one class: shades apart, so touching objects stay distinguishable
    shade = np.where(instances > 0, 0.7 + 0.6 * ((instances * 0.618) % 1.0), 1.0)
    colours = (colours * shade[..., None]).clip(0, 255)
    weight = np.where(classes > 0, alpha, 0.0)[..., None]
    blend = (1 - weight) * _rgb(pixels) + weight * colours
    return blend.round().astype(np.uint8)


class PredictionWriter(BasePredictionWriter):
    """Base of seglab's writers: ``plan`` checks outputs before a run, ``written`` lists the
    files written.

    Every file is first written in full under a hidden temporary name beside its target; when
    the whole prediction has ended, each is renamed over its target. A run that fails or is
    interrupted on the way (Lightning's ``on_exception``) deletes its temporary files, so the
    output folder keeps an earlier run's predictions as they were, never a mix of the two.
    """

    def __init__(self, *, write_interval: str) -> None:
        super().__init__(write_interval=write_interval)
        self.written: list[Path] = []
        self._claimed: dict[Path, str] = {}
        self._staged: list[tuple[Path, Path]] = []  # (temporary file, target)

    def targets(self, name: str) -> list[Path]:
        """The files the predictions of the item ``name`` go to (none: the writer's outputs do
        not depend on the items and its constructor checked them)."""
        return []

    def plan(self, names: Sequence[str]) -> None:
        """Check the outputs of every item before anything is written.

        Raises:
            ValueError: an output would overwrite an input image or another item's output.
        """
        inputs = {Path(n).resolve(): n for n in names}
        for name in names:
            self.claim(name, inputs)

    def claim(self, name: str, inputs: Mapping[Path, str] | None = None) -> list[Path]:
        """``targets(name)``, checked to overwrite no input image (``inputs``, by default the
        item itself) and no other item's output."""
        inputs = {Path(name).resolve(): name} if inputs is None else inputs
        targets = self.targets(name)
        for target in targets:
            key = target.resolve()
            if key in inputs:
                raise ValueError(
                    f"output={str(target.parent)!r}: the prediction of {name} would overwrite "
                    f"the input image {inputs[key]}; expected an output folder apart from the "
                    "input images"
                )
            if self._claimed.get(key, name) != name:
                raise ValueError(
                    f"input={name!r} and {self._claimed[key]!r} would both write {target}; "
                    "expected input images with distinct names (stems)"
                )
            self._claimed[key] = name
        return targets

    def write_file(self, path: Path, data: bytes) -> None:
        """Write ``data`` for ``path``: to a temporary file now, renamed to ``path`` at the end."""
        self._staged.append((stage_bytes(path, data), path))

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        staged, self._staged = self._staged, []
        try:
            for tmp, path in staged:
                os.replace(tmp, path)
                self.written.append(path)
        finally:  # a rename that failed leaves no temporary file behind
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        staged, self._staged = self._staged, []
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


class SemanticMaskWriter(PredictionWriter):
    """Writes ``<stem>.png``, the class indices as a palette PNG with the dataset's colours, and
    with ``overlay`` ``<stem>_overlay.png``, the input image blended with the coloured classes.

    Takes the task's ``predict_step`` output, int64 class maps (N, H, W) at the input's size,
    and the batch ``{"image": normalised (N, C, H, W), "name": [str]}``; the overlay
    un-normalises the image with ``mean`` / ``std``. No output may overwrite an input image or
    another item's output (``plan`` checks a whole list of inputs before anything is written;
    each item is checked again as it is written).

    Args:
        output: the folder written to (made if missing).
        palette: one RGB triple per class.
        mean, std: the data module's normalisation (0..1 scale), per channel.
        overlay: also write the overlays.
        alpha: weight of the class colours in the overlay.
    """

    def __init__(
        self,
        *,
        output: str | Path,
        palette: Sequence[Sequence[int]],
        mean: Sequence[float],
        std: Sequence[float],
        overlay: bool = True,
        alpha: float = 0.5,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output = _output_folder(output)
        if not 0 <= alpha <= 1:
            raise ValueError(f"overlay_alpha={alpha}: expected a weight in [0, 1]")
        self.colours = np.asarray(palette, np.uint8).reshape(-1, 3)
        flat = self.colours.ravel().tolist()
        self.png_palette = flat + [0] * (768 - len(flat)) if len(flat) <= 768 else None
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255
        self.overlay = overlay
        self.alpha = alpha

    def targets(self, name: str) -> list[Path]:
        """The files the predictions of the item ``name`` go to."""
        stem = output_stem(name)
        overlay = [self.output / f"{stem}_overlay.png"] if self.overlay else []
        return [self.output / f"{stem}.png", *overlay]

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.output.mkdir(parents=True, exist_ok=True)

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: torch.Tensor,
        batch_indices: Sequence[int] | None,
        batch: Mapping[str, Any],
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        labels = prediction.to(torch.int64).cpu().numpy()
        if self.overlay:
            pixels = batch["image"].detach().float().cpu() * self.std + self.mean
            pixels = pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for i, name in enumerate(batch["name"]):
            mask_path, *overlay_path = self.claim(name)
            self.write_file(mask_path, _png_bytes(self._mask_image(labels[i])))
            if overlay_path:
                blend = class_overlay(pixels[i], labels[i], self.colours, self.alpha)
                self.write_file(overlay_path[0], _png_bytes(Image.fromarray(blend)))

    def _mask_image(self, labels: np.ndarray) -> Image.Image:
        if self.png_palette is None:  # more than 256 classes: a 32-bit grey PNG
            return Image.fromarray(labels.astype(np.int32))
        mask = Image.fromarray(labels.astype(np.uint8), mode="P")
        mask.putpalette(self.png_palette)
        return mask


class CocoResultsWriter(PredictionWriter):
    """Writes the detections of every image into one COCO results JSON
    (https://cocodataset.org/#format-results, see ``seglab.coco_results.detections_to_coco``).

    Takes the task's ``predict_step`` output, one dict per image (``boxes``, ``labels``,
    ``scores``, ``masks`` (n, 1, H, W) probabilities, thresholded at the task's
    ``mask_threshold``), and the batch ``(images, targets)`` whose targets carry ``image_id`` and
    ``name``. Under DDP every rank's detections are gathered and rank 0 writes the file.

    Args:
        path: the results file.
        label_to_category: contiguous label -> the dataset's category id (None: the label).
        images_path: also write a COCO annotation file without annotations, the images
            (``id``, ``file_name``, ``height``, ``width``) and the categories, for inputs that
            have no annotation file of their own; ``pycocotools.COCO(images_path).loadRes(path)``
            then reads the results.
        class_names: one name per label (0 = background), for ``images_path``'s categories.
    """

    def __init__(
        self,
        *,
        path: str | Path,
        label_to_category: Mapping[int, int] | None = None,
        images_path: str | Path | None = None,
        class_names: Sequence[str] = (),
    ) -> None:
        super().__init__(write_interval="batch_and_epoch")
        self.path = Path(path).expanduser()
        self.images_path = None if images_path is None else Path(images_path).expanduser()
        for target in (self.path, self.images_path):
            if target is not None and target.is_dir():
                raise IsADirectoryError(
                    f"output={str(target)!r}: is a folder; expected the results file's path"
                )
        for target in (self.path, self.images_path):
            if target is not None and target.parent.exists() and not target.parent.is_dir():
                raise NotADirectoryError(
                    f"output={str(target.parent)!r}: is an existing file; expected a folder "
                    "(made if missing) or a .json file path"
                )
        self.label_to_category = dict(label_to_category) if label_to_category else None
        self.categories = [
            {"id": self.label_to_category[label] if self.label_to_category else label, "name": n}
            for label, n in enumerate(class_names)
            if label > 0
        ]
        self._results: list[dict[str, Any]] = []
        self._images: list[dict[str, Any]] = []

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._results, self._images = [], []

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Sequence[Mapping[str, torch.Tensor]],
        batch_indices: Sequence[int] | None,
        batch: tuple[Sequence[torch.Tensor], Sequence[Mapping[str, Any]]],
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        threshold = float(getattr(pl_module, "mask_threshold", 0.5))
        for image, target, detections in zip(*batch, prediction):
            image_id = int(target["image_id"])
            self._results += detections_to_coco(
                detections, image_id, self.label_to_category, mask_threshold=threshold
            )
            self._images.append(
                {
                    "id": image_id,
                    "file_name": str(target.get("name", image_id)),
                    "height": int(image.shape[-2]),
                    "width": int(image.shape[-1]),
                }
            )

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        results, images = _gather(self._results), _gather(self._images)
        if not trainer.is_global_zero:
            return
        results = sorted(results, key=lambda r: r["image_id"])  # stable: scores keep their order
        self.write_file(self.path, json.dumps(results).encode())
        if self.images_path is not None:
            entries = sorted(images, key=lambda i: i["id"])
            coco = {"images": entries, "annotations": [], "categories": self.categories}
            self.write_file(self.images_path, json.dumps(coco).encode())


def segment_ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG colours (H, W, 3) uint8 of segment ids (H, W): id = R + 256 G + 256^2 B."""
    ids = np.asarray(ids, np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


class CocoPanopticWriter(PredictionWriter):
    """Writes COCO panoptic predictions (https://cocodataset.org/#format-results, panoptic):
    ``<output>/<stem>/<image stem>.png`` per image, the segment ids as RGB
    (``segment_ids_to_rgb``), and ``<output>/<stem>.json`` with one annotation per image
    (``image_id``, ``file_name``, ``segments_info``: ``id``, ``category_id`` the dataset's own,
    ``iscrowd`` 0, ``isthing``, ``area``, ``bbox`` xywh), the ``images`` and the
    ``categories``; ``python -m seglab.metrics.panoptic_quality --gt-json GT --pred-json
    <output>/<stem>.json`` scores them. With ``overlay``, ``<output>/<stem>_overlay/<image
    stem>.png``: the image blended with each segment's class colour (things lighter or darker
    per instance).

    Takes the task's ``predict_step`` output (one dict per image with ``panoptic`` (H, W, 2) =
    (class, instance id) and ``segments_info``), and the batch ``(images in [0, 1], targets
    with name and image_id, or file_image_id: the dataset's own, which the JSON keeps)``. Under DDP every rank writes its images' PNGs and rank 0 the JSON.

    Args:
        output: the folder written to (made if missing).
        stem: name of the JSON file and the PNG folder (the split, or the input's stem).
        category_ids: the dataset's category id of each class 1..T+S (``category_ids[c - 1]``).
        class_names: one name per class (0 = void).
        num_things: T: classes 1..T are things.
        palette: one RGB triple per class.
        overlay, alpha: write overlays, and the weight of the colours in them.
    """

    def __init__(
        self,
        *,
        output: str | Path,
        stem: str,
        category_ids: Sequence[int],
        class_names: Sequence[str],
        num_things: int,
        palette: Sequence[Sequence[int]],
        overlay: bool = True,
        alpha: float = 0.5,
    ) -> None:
        super().__init__(write_interval="batch_and_epoch")
        self.output = _output_folder(output)
        if not 0 <= alpha <= 1:
            raise ValueError(f"overlay_alpha={alpha}: expected a weight in [0, 1]")
        if len(category_ids) != len(class_names) - 1:
            raise ValueError(
                f"{len(category_ids)} category ids for {len(class_names) - 1} classes 1..T+S"
            )
        self.json_path = self.output / f"{stem}.json"
        self.png_dir = self.output / stem
        self.overlay_dir = self.output / f"{stem}_overlay" if overlay else None
        self.category_ids = [int(c) for c in category_ids]
        self.num_things = num_things
        self.colours = np.asarray(palette, np.float32).reshape(-1, 3)
        self.alpha = alpha
        self.categories = [
            {"id": cid, "name": str(name), "isthing": int(c <= num_things), "color": colour}
            for c, (cid, name) in enumerate(zip(self.category_ids, class_names[1:]), start=1)
            for colour in [[int(v) for v in self.colours[c % len(self.colours)]]]
        ]
        self._annotations: list[dict[str, Any]] = []
        self._images: list[dict[str, Any]] = []

    def targets(self, name: str) -> list[Path]:
        stem = output_stem(name)
        overlay = [] if self.overlay_dir is None else [self.overlay_dir / f"{stem}.png"]
        return [self.png_dir / f"{stem}.png", *overlay]

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._annotations, self._images = [], []
        for folder in (self.png_dir, self.overlay_dir):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Sequence[Mapping[str, Any]],
        batch_indices: Sequence[int] | None,
        batch: tuple[Sequence[torch.Tensor], Sequence[Mapping[str, Any]]],
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        for image, target, output in zip(*batch, prediction):
            name = str(target.get("name", target["image_id"]))
            png_path, *overlay_path = self.claim(name)
            panoptic = output["panoptic"].detach().cpu().numpy()
            segment_ids = np.zeros(panoptic.shape[:2], np.int64)
            segments = []
            for segment in output["segments_info"]:
                mask = self._segment_mask(panoptic, segment)
                if not mask.any():
                    continue
                segment_ids[mask] = int(segment["id"])
                rows, cols = np.nonzero(mask)
                x, y = int(cols.min()), int(rows.min())
                segments.append(
                    {
                        "id": int(segment["id"]),
                        "category_id": self.category_ids[int(segment["category_id"]) - 1],
                        "iscrowd": 0,
                        "isthing": int(bool(segment["isthing"])),
                        "area": int(mask.sum()),
                        "bbox": [x, y, int(cols.max()) - x + 1, int(rows.max()) - y + 1],
                    }
                )
            self.write_file(png_path, _png_bytes(Image.fromarray(segment_ids_to_rgb(segment_ids))))
            if overlay_path:
                self.write_file(overlay_path[0], _png_bytes(self._overlay(image, panoptic)))
            image_id = target.get("file_image_id", target["image_id"])
            self._annotations.append(
                {"image_id": image_id, "file_name": png_path.name, "segments_info": segments}
            )
            height, width = panoptic.shape[:2]
            self._images.append(
                {"id": image_id, "file_name": name, "height": height, "width": width}
            )

    def _segment_mask(self, panoptic: np.ndarray, segment: Mapping[str, Any]) -> np.ndarray:
        """The pixels of ``segment``: its class and, for things, its instance id."""
        mask = panoptic[..., 0] == int(segment["category_id"])
        if segment["isthing"]:
            mask &= panoptic[..., 1] == int(segment["id"])
        return mask

    def _overlay(self, image: torch.Tensor, panoptic: np.ndarray) -> Image.Image:
        pixels = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255
        return Image.fromarray(panoptic_overlay(pixels, panoptic, self.colours, self.alpha))

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        annotations, images = _gather(self._annotations), _gather(self._images)
        if not trainer.is_global_zero:
            return
        coco = {  # image ids are ints (COCO) or strings (Cityscapes)
            "images": sorted(images, key=lambda i: (str(type(i["id"])), i["id"])),
            "annotations": sorted(
                annotations, key=lambda a: (str(type(a["image_id"])), a["image_id"])
            ),
            "categories": self.categories,
        }
        self.write_file(self.json_path, json.dumps(coco).encode())
