"""Pictures of a run as it trains: prediction overlays of fixed validation images, the confusion
matrix and the per-class IoU, as PNG files in the run folder and in every logger present.

The core (``Visuals.render``) draws them without any logger; ``Visuals.on_validation_end``
writes them under ``<dirpath>/epoch_{epoch:03d}/`` and sends the same to W&B (``wandb.Image``
with class-labelled masks and boxes, a ``wandb.Table``) and TensorBoard (images, a Markdown
table).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torchvision.ops import masks_to_boxes
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from seglab.callbacks.writers import class_overlay, output_stem, panoptic_overlay
from seglab.data.base import default_palette
from seglab.tasks.instance import InstanceSegmentationTask
from seglab.tasks.panoptic import PanopticSegmentationTask
from seglab.tasks.semantic import SemanticSegmentationTask
from seglab.utils.io import atomic_write_bytes, atomic_write_text
from seglab.utils.tensors import crop_to

__all__ = ["Drawn", "Picture", "Visuals", "confusion_figure"]

log = logging.getLogger(__name__)

# overlays narrower than this are enlarged (nearest neighbour, an integer factor) for the eye
_MIN_SIDE = 128
_GAP = 4  # white pixels between the panels of an overlay


@dataclass
class Picture:
    """One validation image drawn three ways, and what W&B needs to draw it itself.

    Attributes:
        stem: the image's file stem (``output_stem`` of its name).
        panels: image | ground truth | prediction, side by side, (H, W', 3) uint8.
        image: the image alone (H, W, 3) uint8, at its own size.
        masks: ``wandb.Image`` masks (``prediction`` / ``ground_truth``: ``mask_data`` (H, W),
            ``class_labels``).
        boxes: ``wandb.Image`` boxes (``predictions`` / ``ground_truth``), instance and panoptic.
    """

    stem: str
    panels: np.ndarray
    image: np.ndarray
    masks: dict[str, Any]
    boxes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Drawn:
    """What ``Visuals.render`` drew for an epoch: the overlays, the confusion matrix as PNG
    bytes and as an RGB array (None: the task has none) and the per-class IoU (semantic)."""

    pictures: list[Picture]
    matrix_png: bytes | None
    matrix: np.ndarray | None
    iou: list[tuple[str, float]] | None


def confusion_figure(confmat: torch.Tensor, class_names: Sequence[str]) -> Figure:
    """The confusion matrix (K, K) of counts normalised per row (the true class) as a figure; a
    class absent from the targets has an empty row."""
    counts = confmat.double().cpu()
    rows = counts.sum(dim=1, keepdim=True)
    share = torch.where(rows > 0, counts / rows.clamp(min=1), torch.zeros_like(counts)).numpy()
    k = len(share)
    names = [str(n) for n in class_names] if k <= 40 else []
    # fixed margins from the longest name: a layout engine would double the drawing time
    margin = 0.3 + 0.065 * max((len(n) for n in names), default=2)
    side = min(10.0, 1.5 + 0.4 * k)
    figure = Figure(figsize=(side + margin + 1.2, side + margin + 0.5), dpi=80)
    width, height = figure.get_size_inches()
    figure.subplots_adjust(
        left=(margin + 0.35) / width,
        bottom=(margin + 0.35) / height,
        right=1 - 1.1 / width,
        top=1 - 0.4 / height,
    )
    axes = figure.add_subplot()
    shown = axes.imshow(share, vmin=0.0, vmax=1.0, cmap="Blues", interpolation="nearest")
    figure.colorbar(shown, ax=axes, fraction=0.05, pad=0.03)
    if names:
        axes.set_xticks(range(k), names, rotation=90, fontsize=8)
        axes.set_yticks(range(k), names, fontsize=8)
    if k <= 15:
        for i in range(k):
            for j in range(k):
                colour = "white" if share[i, j] > 0.5 else "black"
                axes.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=7,
                          color=colour)  # fmt: skip
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title("confusion matrix (each row sums to 1)", fontsize=10)
    return figure


def _figure_png(figure: Figure) -> tuple[bytes, np.ndarray]:
    """The figure as PNG bytes and as an RGB array (H, W, 3)."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return _png(rgb), rgb


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _side_by_side(panels: Sequence[np.ndarray]) -> np.ndarray:
    gap = np.full((panels[0].shape[0], _GAP, 3), 255, np.uint8)
    parts = [p for panel in panels for p in (panel, gap)][:-1]
    return np.concatenate(parts, axis=1)


def _enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    return image if factor == 1 else image.repeat(factor, axis=0).repeat(factor, axis=1)


class Visuals(L.Callback):
    """Draws a fixed set of validation images with the model's predictions, the normalised
    confusion matrix and the per-class IoU every ``every_n_epochs`` validation epochs of
    ``fit``, on rank 0.

    The images are the first ``num_images`` of the validation dataset, read once and kept for
    the whole run. Their predictions come from one extra forward pass in eval mode, without
    gradients and with torch's, NumPy's and Python's random states restored, so the validation
    metrics and the training's random stream are untouched. The confusion matrix and IoU are those the task computed for
    the epoch (``task.semantic_results["val"]``: semantic tasks, and the semantic branch of the
    panoptic task).

    Files, under ``<dirpath>/epoch_{epoch:03d}/``: ``{k:02d}_{stem}.png`` (image | ground truth |
    prediction), ``confusion_matrix.png`` (semantic and panoptic), ``per_class_iou.csv``
    (``class,iou``; semantic). Each logger present gets the same: W&B the images with
    class-labelled ``masks`` (and ``boxes`` for instance and panoptic models) under
    ``val/predictions``, ``val/per_class_iou`` as a ``wandb.Table``, ``val/confusion_matrix`` as
    an image; TensorBoard ``add_image`` per overlay and for the matrix (the figure drawn once),
    the IoU as a Markdown table (``add_text``).

    Args:
        dirpath: folder of the epoch folders (the run folder's ``visuals/``).
        num_images: validation images drawn (0: the matrix and the IoU only).
        every_n_epochs: draw at the first validation epoch and every n-th after it.
        score_threshold: detections scored below it are left out of instance overlays.
        alpha: weight of the class colours in the overlays.
    """

    def __init__(
        self,
        *,
        dirpath: str | Path,
        num_images: int = 4,
        every_n_epochs: int = 1,
        score_threshold: float = 0.5,
        alpha: float = 0.5,
    ) -> None:
        if num_images < 0:
            raise ValueError(f"callbacks.visuals.num_images={num_images}: expected 0 or more")
        if every_n_epochs < 1:
            raise ValueError(
                f"callbacks.visuals.every_n_epochs={every_n_epochs}: expected 1 or more"
            )
        if not 0 <= score_threshold <= 1:
            raise ValueError(
                f"callbacks.visuals.score_threshold={score_threshold}: expected a score in [0, 1]"
            )
        if not 0 <= alpha <= 1:
            raise ValueError(f"callbacks.visuals.alpha={alpha}: expected a weight in [0, 1]")
        self.dirpath = Path(dirpath).expanduser()
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.score_threshold = score_threshold
        self.alpha = alpha
        self.seconds: list[float] = []  # time each drawing took, for the record
        self._validations = 0
        self._items: list[Any] | None = None
        self._told_no_val = False
        self._names: list[str] = []  # class names of the task being drawn

    # -- Lightning hooks ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self._validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._validations = int(state_dict.get("validations", 0))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not self._told_no_val and not _has_validation(trainer):
            self._told_no_val = True
            log.info(
                "Visuals: this run has no validation set; no overlays, confusion matrix or IoU"
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self._validations += 1
        if (self._validations - 1) % self.every_n_epochs or not trainer.is_global_zero:
            return
        start = time.perf_counter()
        epoch = trainer.current_epoch
        drawn = self.render(trainer, pl_module)
        self.write(self.dirpath / f"epoch_{epoch:03d}", drawn)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._to_wandb(logger, trainer.global_step, drawn)
            elif isinstance(logger, TensorBoardLogger):
                self._to_tensorboard(logger, trainer.global_step, drawn)
        self.seconds.append(time.perf_counter() - start)
        log.debug("Visuals: epoch %d drawn in %.2f s", epoch, self.seconds[-1])

    # -- the logger-independent core ----------------------------------------------------------

    def render(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Drawn:
        """Everything drawn for the current epoch, without writing or logging it."""
        matrix = self.confusion(pl_module)
        png, rgb = (None, None) if matrix is None else _figure_png(confusion_figure(*matrix))
        return Drawn(
            pictures=self.pictures(trainer, pl_module),
            matrix_png=png,
            matrix=rgb,
            iou=self.per_class_iou(pl_module),
        )

    def write(self, folder: Path, drawn: Drawn) -> None:
        """``drawn`` as files in ``folder`` (made if missing), each written atomically."""
        folder.mkdir(parents=True, exist_ok=True)
        for k, picture in enumerate(drawn.pictures):
            atomic_write_bytes(folder / f"{k:02d}_{picture.stem}.png", _png(picture.panels))
        if drawn.matrix_png is not None:
            atomic_write_bytes(folder / "confusion_matrix.png", drawn.matrix_png)
        if drawn.iou is not None:
            atomic_write_text(folder / "per_class_iou.csv", _csv(drawn.iou))

    def items(self, trainer: L.Trainer) -> list[Any]:
        """The first ``num_images`` items of the validation dataset, read once."""
        if self._items is None:
            dataset = _val_dataset(trainer)
            count = 0 if dataset is None else min(self.num_images, len(dataset))
            with _random_state_kept([]):
                self._items = [dataset[i] for i in range(count)]  # type: ignore[index]
        return self._items

    def pictures(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[Picture]:
        """The overlays of ``items`` with ``pl_module``'s current predictions."""
        items = self.items(trainer)
        if not items:
            return []
        datamodule = getattr(trainer, "datamodule", None)
        palette = getattr(datamodule, "palette", None) or default_palette(
            getattr(pl_module, "num_classes", 256)
        )
        colours = np.asarray(palette, np.uint8).reshape(-1, 3)
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        training = pl_module.training
        try:
            pl_module.eval()
            with torch.no_grad(), _random_state_kept(devices):
                if isinstance(pl_module, InstanceSegmentationTask):
                    return self._detection_pictures(pl_module, items, colours)
                if isinstance(pl_module, SemanticSegmentationTask):
                    return self._semantic_pictures(pl_module, items, colours, datamodule)
        finally:
            pl_module.train(training)
        return []

    def confusion(self, pl_module: L.LightningModule) -> tuple[torch.Tensor, list[str]] | None:
        """The epoch's confusion matrix (K, K) counts and its class names, if the task has one."""
        results = getattr(pl_module, "semantic_results", {}).get("val")
        if results is None or "confmat" not in results:
            return None
        return results["confmat"], _semantic_class_names(pl_module)

    def per_class_iou(self, pl_module: L.LightningModule) -> list[tuple[str, float]] | None:
        """``(class, IoU)`` of the epoch (NaN: a class in neither targets nor predictions);
        semantic tasks only."""
        if not isinstance(pl_module, SemanticSegmentationTask):
            return None
        results = pl_module.semantic_results.get("val")
        if results is None:
            return None
        return [(n, float(v)) for n, v in zip(pl_module.class_names, results["iou"].tolist())]

    def _semantic_pictures(
        self,
        task: SemanticSegmentationTask,
        items: list[dict[str, Any]],
        colours: np.ndarray,
        datamodule: Any,
    ) -> list[Picture]:
        mean = np.asarray(getattr(datamodule, "mean", None) or [], np.float32)
        std = np.asarray(getattr(datamodule, "std", None) or [], np.float32)
        labels = {i: name for i, name in enumerate(task.class_names)}
        labels[task.ignore_index] = "ignored"
        pictures = []
        for item in items:
            # one image at a time: validation images may differ in size (VOC, DSB, ...)
            logits = task.infer(item["image"][None].to(task.device))
            prediction = logits[0].argmax(dim=0).cpu().numpy()
            size = tuple(logits.shape[-2:])  # an unpadded net's smaller output: its centre window
            pixels = _unnormalise(crop_to(item["image"], size), mean, std)
            truth = crop_to(item["mask"], size).numpy()
            known = (truth >= 0) & (truth < len(task.class_names))
            truth_overlay = np.where(
                known[..., None], class_overlay(pixels, truth, colours, self.alpha), pixels
            )
            pred_overlay = class_overlay(pixels, prediction, colours, self.alpha)
            factor = _factor(pixels)
            pictures.append(
                Picture(
                    stem=output_stem(str(item.get("name", len(pictures)))),
                    panels=_side_by_side(
                        [_enlarge(p, factor) for p in (pixels, truth_overlay, pred_overlay)]
                    ),
                    image=pixels,
                    masks={
                        "prediction": {"mask_data": prediction, "class_labels": labels},
                        "ground_truth": {"mask_data": truth, "class_labels": labels},
                    },
                )
            )
        return pictures

    def _detection_pictures(
        self,
        task: InstanceSegmentationTask,
        items: list[tuple[torch.Tensor, dict]],
        colours: np.ndarray,
    ) -> list[Picture]:
        outputs = task.net([image.to(task.device) for image, _ in items])
        panoptic = isinstance(task, PanopticSegmentationTask)
        names = self._names = list(task.class_names)
        labels = {i: name for i, name in enumerate(names)}
        pictures = []
        for (image, target), output in zip(items, outputs):
            output = {k: v.cpu() if torch.is_tensor(v) else v for k, v in output.items()}
            pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            pixels = pixels if pixels.shape[-1] == 3 else np.repeat(pixels[..., :1], 3, axis=2)
            factor = _factor(pixels)
            big = _enlarge(pixels, factor)
            if panoptic:
                pred_boxes = _segment_boxes(output["panoptic"], task.num_things)
                truth_boxes = _segment_boxes(target["panoptic"], task.num_things)
                truth = self._panoptic_panel(big, target["panoptic"], truth_boxes, factor, colours)
                pred = self._panoptic_panel(big, output["panoptic"], pred_boxes, factor, colours)
                masks = {
                    "prediction": {"mask_data": output["panoptic"][..., 0].numpy(),
                                   "class_labels": labels},
                    "ground_truth": {"mask_data": target["panoptic"][..., 0].numpy(),
                                     "class_labels": labels},
                }  # fmt: skip
            else:
                keep = output["scores"] >= self.score_threshold
                found = {k: output[k][keep] for k in ("boxes", "labels", "scores")}
                found["masks"] = output["masks"][keep].reshape(-1, *pixels.shape[:2])
                found["masks"] = found["masks"] >= task.mask_threshold
                real = {"boxes": target["boxes"], "labels": target["labels"],
                        "masks": target["masks"].bool()}  # fmt: skip
                truth = self._instance_panel(big, real, factor, colours)
                pred = self._instance_panel(big, found, factor, colours)
                masks = {
                    "prediction": {"mask_data": _label_map(found, pixels.shape[:2]),
                                   "class_labels": labels},
                    "ground_truth": {"mask_data": _label_map(real, pixels.shape[:2]),
                                     "class_labels": labels},
                }  # fmt: skip
                pred_boxes, truth_boxes = found, real
            name = target.get("name", target.get("image_id", len(pictures)))
            pictures.append(
                Picture(
                    stem=output_stem(str(name)),
                    panels=_side_by_side([big, truth, pred]),
                    image=pixels,
                    masks=masks,
                    boxes={
                        "predictions": _wandb_boxes(pred_boxes, names),
                        "ground_truth": _wandb_boxes(truth_boxes, names),
                    },
                )
            )
        return pictures

    def _instance_panel(
        self,
        big: np.ndarray,
        objects: Mapping[str, torch.Tensor],
        factor: int,
        colours: np.ndarray,
    ) -> np.ndarray:
        """``big`` (the image enlarged ``factor`` times) with the masks and boxes of
        ``objects`` in their class colours, each box captioned with its class (and score)."""
        canvas = torch.from_numpy(big).permute(2, 0, 1).contiguous()
        if len(objects["labels"]):
            masks = objects["masks"].bool()
            if factor > 1:
                masks = masks.repeat_interleave(factor, 1).repeat_interleave(factor, 2)
            tints = _tints(objects["labels"], colours)
            canvas = draw_segmentation_masks(canvas, masks, alpha=self.alpha, colors=tints)
            canvas = self._draw_boxes(canvas, objects, factor, tints)
        return canvas.permute(1, 2, 0).numpy()

    def _panoptic_panel(
        self,
        big: np.ndarray,
        panoptic: torch.Tensor,
        things: Mapping[str, torch.Tensor],
        factor: int,
        colours: np.ndarray,
    ) -> np.ndarray:
        """``big`` with the segments of ``panoptic`` (H, W, 2) coloured by class (things shaded
        per instance) and the boxes of ``things``."""
        enlarged = _enlarge(panoptic.numpy(), factor)
        canvas = torch.from_numpy(panoptic_overlay(big, enlarged, colours, self.alpha))
        canvas = canvas.permute(2, 0, 1).contiguous()
        if len(things["labels"]):
            canvas = self._draw_boxes(canvas, things, factor, _tints(things["labels"], colours))
        return canvas.permute(1, 2, 0).numpy()

    def _draw_boxes(
        self,
        canvas: torch.Tensor,
        objects: Mapping[str, torch.Tensor],
        factor: int,
        tints: list[tuple[int, int, int]],
    ) -> torch.Tensor:
        scores = objects.get("scores")
        captions = [
            _name(self._names, label) + ("" if scores is None else f" {float(scores[i]):.2f}")
            for i, label in enumerate(objects["labels"].tolist())
        ]
        boxes = objects["boxes"].float() * factor
        return draw_bounding_boxes(canvas, boxes, labels=captions, colors=tints, width=1)

    # -- loggers ------------------------------------------------------------------------------

    def _to_wandb(self, logger: WandbLogger, step: int, drawn: Drawn) -> None:
        import wandb

        payload: dict[str, Any] = {}
        if drawn.pictures:
            payload["val/predictions"] = [
                wandb.Image(p.image, caption=p.stem, masks=p.masks, boxes=p.boxes or None)
                for p in drawn.pictures
            ]
        if drawn.matrix is not None:
            payload["val/confusion_matrix"] = wandb.Image(drawn.matrix)
        if drawn.iou is not None:
            rows = [[name, None if math.isnan(value) else value] for name, value in drawn.iou]
            payload["val/per_class_iou"] = wandb.Table(columns=["class", "iou"], data=rows)
        if payload:
            logger.log_metrics(payload, step=step)

    def _to_tensorboard(self, logger: TensorBoardLogger, step: int, drawn: Drawn) -> None:
        writer = logger.experiment
        for k, picture in enumerate(drawn.pictures):
            writer.add_image(
                f"val/predictions/{k:02d}_{picture.stem}", picture.panels, step, dataformats="HWC"
            )
        if drawn.matrix is not None:  # the figure drawn once, for the file, W&B and here
            writer.add_image("val/confusion_matrix", drawn.matrix, step, dataformats="HWC")
        if drawn.iou is not None:
            table = "| class | IoU |\n|---|---|\n" + "".join(
                f"| {name} | {value:.4f} |\n" for name, value in drawn.iou
            )
            writer.add_text("val/per_class_iou", table, step)


@contextlib.contextmanager
def _random_state_kept(devices: list[torch.device]) -> Iterator[None]:
    """Restore torch's (CPU and ``devices``), NumPy's and Python's random states on exit."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def _has_validation(trainer: L.Trainer) -> bool:
    if trainer.limit_val_batches == 0:
        return False
    return _val_dataset(trainer) is not None


def _val_dataset(trainer: L.Trainer) -> Any:
    loaders = trainer.val_dataloaders
    if isinstance(loaders, Sequence) and not isinstance(loaders, torch.utils.data.DataLoader):
        loaders = loaders[0] if loaders else None
    dataset = getattr(loaders, "dataset", None)
    return dataset if dataset is not None and len(dataset) > 0 else None


def _semantic_class_names(task: L.LightningModule) -> list[str]:
    """Class names of the semantic results: the task's, or the panoptic semantic branch's
    (``things`` as one class, then the stuff classes)."""
    if isinstance(task, PanopticSegmentationTask):
        return ["things", *task.class_names[1 + task.num_things :]]
    return list(task.class_names)


def _unnormalise(image: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """A normalised image (C, H, W) back on the 0..255 scale as (H, W, 3) uint8; without the
    data module's ``mean`` / ``std``, each channel stretched to its own range."""
    pixels = image.detach().float().cpu().permute(1, 2, 0).numpy()
    if len(mean) == pixels.shape[-1] and len(std) == pixels.shape[-1]:
        pixels = (pixels * std + mean) * 255
    else:
        low, high = pixels.min(axis=(0, 1)), pixels.max(axis=(0, 1))
        pixels = (pixels - low) / np.maximum(high - low, 1e-12) * 255
    pixels = pixels.clip(0, 255).round().astype(np.uint8)
    return pixels if pixels.shape[-1] == 3 else np.repeat(pixels[..., :1], 3, axis=2)


def _factor(pixels: np.ndarray) -> int:
    return max(1, min(8, math.ceil(_MIN_SIDE / max(1, min(pixels.shape[:2])))))


def _tints(labels: torch.Tensor, colours: np.ndarray) -> list[tuple[int, int, int]]:
    return [tuple(int(c) for c in colours[int(k) % len(colours)]) for k in labels]  # type: ignore[misc]


def _name(names: Sequence[str], label: int) -> str:
    return names[label] if 0 <= label < len(names) else str(label)


def _label_map(objects: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> np.ndarray:
    """One class label per pixel (0: none) of instance masks, the first object on top."""
    labels = np.zeros(shape, np.int64)
    for mask, label in reversed(list(zip(objects["masks"], objects["labels"].tolist()))):
        labels[mask.numpy().astype(bool)] = label
    return labels


def _segment_boxes(panoptic: torch.Tensor, num_things: int) -> dict[str, torch.Tensor]:
    """Boxes (n, 4) xyxy and labels (n,) of the thing segments of a panoptic map (H, W, 2) =
    (class, instance id): segments with an instance id, of a class 1..``num_things``."""
    classes, instances = panoptic[..., 0], panoptic[..., 1]
    pairs = torch.unique(torch.stack([classes, instances], -1).view(-1, 2), dim=0)
    pairs = pairs[(pairs[:, 1] > 0) & (pairs[:, 0] > 0) & (pairs[:, 0] <= num_things)]
    if not len(pairs):
        return {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}
    masks = torch.stack([(classes == c) & (instances == i) for c, i in pairs.tolist()])
    return {"boxes": masks_to_boxes(masks), "labels": pairs[:, 0].to(torch.int64)}


def _wandb_boxes(objects: Mapping[str, torch.Tensor], names: Sequence[str]) -> dict[str, Any]:
    """``wandb.Image`` box data (pixel coordinates) of ``objects``' boxes and labels."""
    boxes = []
    scores = objects.get("scores")
    for i, (box, label) in enumerate(zip(objects["boxes"].tolist(), objects["labels"].tolist())):
        entry = {
            "position": {"minX": box[0], "minY": box[1], "maxX": box[2], "maxY": box[3]},
            "domain": "pixel",
            "class_id": int(label),
            "box_caption": _name(names, label),
        }
        if scores is not None:
            entry["scores"] = {"score": float(scores[i])}
        boxes.append(entry)
    return {"box_data": boxes, "class_labels": {i: name for i, name in enumerate(names)}}


def _csv(iou: list[tuple[str, float]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class", "iou"])
    writer.writerows([name, repr(value)] for name, value in iou)
    return buffer.getvalue()
