"""What every dataset module shares: declared metadata, the checks on it, datasets per view,
label reading, loaders, samplers and statistics.

A semantic sample after ``SemanticDataset.__getitem__`` is a dict::

    image  float32 (C, H, W), normalised with the data module's mean / std
    mask   int64 (H, W), classes 0..K-1 or ignore_index
    weight float32 (H, W), only with ``data.weight_map``: the per-pixel loss weight
    name   str, the file or generated sample it came from (used in error messages)

An instance sample is ``(image, target)`` in torchvision's detection format (``InstanceDataset``);
a panoptic sample adds the ``semantic``, ``panoptic`` and ``crowd`` maps to it (``PanopticDataset``).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader
from torchvision.ops import masks_to_boxes

from seglab.data.loaders import EpochSeeded, EpochShuffle
from seglab.data.weight_maps import UNetWeightMap

__all__ = ["IGNORE", "DatasetInfo", "IndexPNG", "InstanceDataset", "PairedSamples",
           "PanopticDataset", "SampleSource", "SegmentationDataModule", "SemanticDataset",
           "default_palette", "edge_boxes", "instance_masks", "list_collate", "open_image",
           "read_image",
           "seed_transform"]  # fmt: skip

IGNORE = -1  # in a label table: the raw value is read as data.ignore_index
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is, declared once in its module (the yaml reads it, never repeats it).

    Attributes:
        name: the ``data=<name>`` token, used in messages.
        views: task view -> its class names (background included), or None where the config or
            the files give them (``data.class_names``); the keys are the views offered.
        how_to_get: how to get the data, said whenever it is missing.
        splits: the splits this module reads, scored unless ``unscored`` lists them.
        unscored: split -> why it cannot be scored (scoring it raises, saying so); one that
            ``splits`` also lists is still read for predict (``input=<split>``).
        labels: raw label-file value -> class, or ``IGNORE``; any other value is an error.
        palette: one RGB triple per class (None: the VOC colour map).
        things: the panoptic view's number of thing classes (the first ones after void), where
            its ``views`` entry declares the classes.
        ignore_index, in_channels, mean, std: defaults of the ``data.*`` keys of those names.
    """

    name: str
    views: Mapping[str, Sequence[str] | None]
    how_to_get: str = ""
    splits: tuple[str, ...] = ("train", "val", "test")
    unscored: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[int, int] | None = None
    palette: Sequence[Sequence[int]] | None = None
    things: int | None = None
    ignore_index: int = 255
    in_channels: int = 3
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD


def default_palette(num_colours: int) -> list[list[int]]:
    """The PASCAL VOC colour map (bit-interleaved), extended to ``num_colours`` entries."""
    index = np.arange(num_colours)[:, None]
    palette = np.zeros((num_colours, 3), np.int64)
    for bit in range(8):  # bit 3k + c of the index is bit 7 - k of channel c
        palette |= ((index >> (3 * bit + np.arange(3))) & 1) << (7 - bit)
    return palette.tolist()


@contextmanager
def open_image(path: str | Path, what: str) -> Iterator[Image.Image]:
    """``PIL.Image.open(path)``; a file Pillow cannot read raises ``ValueError("<what> could not
    be read (<reason>)")``, ``what`` naming the file."""
    try:
        with Image.open(path) as img:
            yield img
    except (OSError, EOFError) as err:
        raise ValueError(f"{what} could not be read ({err})") from err


def read_image(path: str | Path, dataset: str, mode: str = "RGB") -> np.ndarray:
    """An image file as uint8 in Pillow ``mode``: RGB (H, W, 3) converts grey, palette, CMYK and
    RGBA; ``L`` gives grey (H, W, 1).

    Raises:
        ValueError: the file cannot be read, naming ``dataset`` and the file.
    """
    with open_image(path, f"{dataset} image {str(path)!r}") as img:
        image = np.array(img.convert(mode), dtype=np.uint8)
    return image[..., None] if image.ndim == 2 else image


def _ranges(values: Iterable[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0..2, 5"``."""
    runs: list[list[int]] = []
    for v in sorted(values):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in runs)


class IndexPNG:
    """The one label reader of every paired dataset: single-channel class-index images (8-bit,
    palette or 16-bit PNGs: the stored indices, never the colours) mapped through ``labels``
    (raw value -> class, or ``IGNORE``: ``ignore_index``; any other value is an error naming
    the file). ``dataset`` names the dataset in error messages."""

    def __init__(self, labels: Mapping[int, int], *, ignore_index: int, dataset: str) -> None:
        size = max(labels) + 1
        small = 0 <= ignore_index <= 255 and max(labels.values()) <= 255
        self.valid = np.zeros(size, bool)
        self.lut = np.zeros(size, np.uint8 if small else np.int32)
        for raw, cls in labels.items():
            self.valid[raw] = True
            self.lut[raw] = ignore_index if cls == IGNORE else cls
        ignored = [raw for raw, cls in labels.items() if cls == IGNORE]
        self.allowed = _ranges(labels) + (f" ({_ranges(ignored)}: ignored)" if ignored else "")
        self.dataset = dataset

    def __call__(self, path: str | Path) -> np.ndarray:
        """The class mask (H, W) of ``path``: uint8, or int32 for indices above 255."""
        with open_image(path, f"{self.dataset} label file {path}") as img:
            if len(img.getbands()) != 1:
                raise ValueError(
                    f"{self.dataset} label file {path} has Pillow mode {img.mode!r}; expected "
                    f"a single-channel image of class indices ({self.allowed}), not colours"
                )
            raw = np.asarray(img)
        return self.lookup(raw, path)

    def lookup(self, raw: np.ndarray, source: str | Path) -> np.ndarray:
        """The classes of the raw label values ``raw`` read from ``source`` (named in errors)."""
        inside = (raw >= 0) & (raw < len(self.valid))
        bad = ~inside | ~self.valid[np.where(inside, raw, 0)]
        if bad.any():
            values = sorted(int(v) for v in np.unique(raw[bad])[:10])
            raise ValueError(
                f"{self.dataset} label file {source} holds label(s) {values}; "
                f"expected {self.allowed}"
            )
        return self.lut[raw]


class SampleSource:
    """The samples of one split, written once per dataset whatever the view: subclasses implement
    ``__len__`` and ``__getitem__``, and ``labels`` where the labels can be read without the image.

    A sample is a dict: ``image`` uint8 (H, W, C), ``name`` str (named in errors), and
    the labels as the dataset has them, any of: ``mask`` int (H, W) classes (with ``mask_file``,
    the file named in mask errors instead of ``name``); ``masks`` (n, H, W) binary or
    ``instances`` int (H, W) object ids (0 none, k object k), with ``labels`` (n,) int 1..K-1 and
    optionally ``iscrowd`` (n,); ``image_id`` int (default: the index); for the panoptic view
    ``segment_ids`` int (H, W) (0 = void) with ``segments`` (``PanopticDataset``). A sample
    without any of them is unlabelled: an all-``ignore_index`` mask, no object.
    """

    def labels(self, index: int) -> dict[str, Any]:
        """Sample ``index`` without its image where the labels do not need it (for statistics)."""
        return self[index]  # type: ignore[index]


class PairedSamples(SampleSource):
    """Samples read from ``pairs`` of ``(image, label or None)`` by ``read_image`` and
    ``read_label`` (the label's ``mask``); ``name`` and ``mask_file`` are ``str`` of the two."""

    def __init__(
        self,
        pairs: Iterable[tuple[Any, Any]],
        *,
        read_image: Callable[[Any], np.ndarray],
        read_label: Callable[[Any], np.ndarray] | None = None,
    ) -> None:
        self.pairs = list(pairs)
        self.read_image = read_image
        self.read_label = read_label

    @property
    def images(self) -> list[Any]:
        return [image for image, _ in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def labels(self, index: int) -> dict[str, Any]:
        image, label = self.pairs[index]
        if label is None:  # unlabelled: the mask takes the image's shape
            return self[index]
        return {"mask": self.read_label(label), "mask_file": str(label), "name": str(image)}  # type: ignore[misc]

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self.pairs[index]
        labels = {} if label is None else self.labels(index)
        return {**labels, "image": self.read_image(image), "name": str(image)}


def instance_masks(sample: Mapping[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """The (n, H, W) uint8 object masks of a sample: its ``masks``, those of its ``instances``
    ids 1..n (n = its number of ``labels``), or none."""
    if "masks" in sample:
        return np.asarray(sample["masks"], np.uint8).reshape(-1, *shape)
    if "instances" not in sample:
        return np.zeros((0, *shape), np.uint8)
    ids = np.arange(1, len(sample["labels"]) + 1, dtype=np.int32)[:, None, None]
    return (sample["instances"][None] == ids).astype(np.uint8)


class _View(Dataset):
    """A view of a ``SampleSource``; the source's attributes (``pairs``, ``ids``) read through."""

    def __init__(
        self,
        source: SampleSource | None = None,
        *,
        num_classes: int,
        transform: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        self.source = source
        self.num_classes = num_classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == "source":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.source, name)


class SemanticDataset(_View):
    """The semantic view of a ``source`` (subclasses may instead implement ``__len__`` and
    ``load_sample``).

    ``load_sample(i)`` returns the source's sample with its ``mask``: the source's own, else
    painted from its objects (each pixel takes the label of the smallest object covering it, so
    small objects stay visible on large ones; crowd regions not covered by another object are
    ``ignore_index``; the rest background 0), else ``ignore_index`` everywhere. Its
    ``instances`` (object ids) feed weight maps. This class validates the mask against
    ``num_classes`` and ``ignore_index`` (raising ``ValueError`` naming the sample), adds the
    weight map (computed once per sample and kept in memory, per loader worker), applies the
    albumentations pipeline (the weight map travels as a mask target), normalises and converts
    to tensors.
    """

    def __init__(
        self,
        source: SampleSource | None = None,
        *,
        num_classes: int,
        ignore_index: int,
        mean: Sequence[float],
        std: Sequence[float],
        transform: Callable[..., dict[str, Any]] | None = None,
        weight_map: UNetWeightMap | None = None,
    ) -> None:
        super().__init__(source, num_classes=num_classes, transform=transform)
        self.ignore_index = ignore_index
        self.mean = np.asarray(mean, np.float32) * 255.0
        self.inv_std = 1.0 / (np.asarray(std, np.float32) * 255.0)
        self.weight_map = weight_map
        self._weights: dict[int, np.ndarray] = {}

    def with_mask(self, sample: dict[str, Any]) -> dict[str, Any]:
        """``sample`` with its ``mask`` (see the class)."""
        if "mask" in sample:
            return sample
        labels = np.asarray(sample.get("labels", ()), np.int64).reshape(-1)
        small = 0 <= self.ignore_index <= 255 and labels.max(initial=0) <= 255
        dtype = np.uint8 if small else np.int32
        if "masks" in sample:
            masks = np.asarray(sample["masks"])
            iscrowd = np.asarray(sample.get("iscrowd", np.zeros(len(masks))))
            mask = np.zeros(masks.shape[1:], dtype)
            area = masks.reshape(len(masks), -1).sum(1)
            # crowd first, then objects from the largest to the smallest: later ones paint over
            order = sorted(range(len(masks)), key=lambda k: (-int(iscrowd[k]), -int(area[k])))
            for k in order:
                mask[masks[k] > 0] = self.ignore_index if iscrowd[k] else labels[k]
        elif "instances" in sample:  # ids: the objects do not overlap
            mask = np.concatenate([[0], labels]).astype(dtype)[sample["instances"]]
        else:
            mask = np.full(sample["image"].shape[:2], self.ignore_index, dtype)
        sample["mask"] = mask
        return sample

    def load_sample(self, index: int) -> dict[str, Any]:
        return self.with_mask(self.source[index])  # type: ignore[index]

    def load_mask(self, index: int) -> np.ndarray:
        """The checked mask of sample ``index``, read without the image where the source can."""
        sample = self.with_mask(self.source.labels(index))  # type: ignore[union-attr]
        mask = np.asarray(sample["mask"])
        self.check_mask(mask, sample.get("mask_file", sample["name"]))
        return mask

    def load_weight(self, index: int, sample: dict[str, Any] | None = None) -> np.ndarray:
        """The weight map (H, W) float32 of sample ``index`` (``sample``: its loaded sample)."""
        if index not in self._weights:
            sample = sample or self.load_sample(index)
            self._weights[index] = self.weight_map(  # type: ignore[misc]
                np.asarray(sample["mask"]), sample.get("instances"), self.ignore_index
            )
        return self._weights[index]

    def check_mask(self, mask: np.ndarray, name: str) -> None:
        bad = (mask < 0) | ((mask >= self.num_classes) & (mask != self.ignore_index))
        if bad.any():
            values = sorted(int(v) for v in np.unique(mask[bad])[:10])
            raise ValueError(
                f"data.num_classes={self.num_classes} but mask of sample '{name}' holds label(s) "
                f"{values}; expected 0..{self.num_classes - 1} or ignore_index={self.ignore_index}"
            )

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.load_sample(index)
        image, mask, name = sample["image"], np.asarray(sample["mask"]), sample["name"]
        if mask.shape != image.shape[:2]:
            raise ValueError(
                f"sample '{name}': mask shape {mask.shape} differs from image shape {image.shape[:2]}"
            )
        self.check_mask(mask, sample.get("mask_file", name))
        weight = None if self.weight_map is None else self.load_weight(index, sample)
        if self.transform is not None:
            extra = {} if weight is None else {"weight": weight}
            out = self.transform(image=image, mask=mask, **extra)
            image, mask, weight = out["image"], out["mask"], out.get("weight", weight)
        image = (np.asarray(image, np.float32) - self.mean) * self.inv_std
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
            "name": name,
        }
        if weight is not None:
            item["weight"] = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
        return item


def seed_transform(transform: Any, seed: int) -> None:
    """Seed an albumentations pipeline, which keeps its own random state and ignores the global
    seeds (``seed_everything`` alone leaves augmentation, hence training, unreproducible)."""
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed % 2**32)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: numpy, ``random`` and the dataset's augmentation pipeline
    seeded from the worker's torch seed, which torch derives from the run's seed, the worker id
    and the epoch, so that workers differ from each other and runs repeat."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = get_worker_info()
    if info is not None:
        seed_transform(getattr(info.dataset, "transform", None), seed)


def list_collate(batch: list[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    """Instance / panoptic batches as torchvision detection expects: (list[image], list[target])."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def edge_boxes(masks: np.ndarray) -> torch.Tensor:
    """(n, H, W) non-empty binary masks -> (n, 4) float32 xyxy boxes on pixel edges
    (x2 = last column + 1)."""
    boxes = masks_to_boxes(torch.from_numpy(np.ascontiguousarray(masks)))
    boxes[:, 2:] += 1
    return boxes


class InstanceDataset(_View):
    """The instance view of a ``source``: its objects (``masks``, or ``instances`` ids, with
    ``labels`` 1..K-1, 0 = background, and optionally ``iscrowd``); an unlabelled sample has
    none. This class applies the albumentations pipeline to the image and every mask,
    derives the boxes from the transformed masks (so boxes always fit their masks), drops objects
    left empty, and returns ``(image, target)`` in torchvision's detection format::

        image  float32 (C, H, W) in [0, 1] (the detector normalises)
        target {"boxes": float32 (n, 4) xyxy, "labels": int64 (n,), "masks": uint8 (n, H, W),
                "iscrowd": int64 (n,), "area": float32 (n,), "image_id": int, "name": str}
    """

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        sample = self.source[index]  # type: ignore[index]
        image, name = sample["image"], sample["name"]
        masks = instance_masks(sample, image.shape[:2])
        labels = np.asarray(sample.get("labels", ()), np.int64).reshape(-1)
        iscrowd = np.asarray(sample.get("iscrowd", np.zeros(len(labels))), np.int64).reshape(-1)
        if len(labels) != len(masks) or len(iscrowd) != len(masks):
            raise ValueError(
                f"sample '{name}': {len(masks)} masks but {len(labels)} labels, {len(iscrowd)} iscrowd"
            )
        bad = (labels < 1) | (labels >= self.num_classes)
        if bad.any():
            raise ValueError(
                f"data.num_classes={self.num_classes} but sample '{name}' has instance label(s) "
                f"{sorted(set(labels[bad].tolist()))}; expected 1..{self.num_classes - 1} (0 = background)"
            )
        if self.transform is not None:
            out = self.transform(image=image, masks=list(masks))
            image = out["image"]
            masks = np.asarray(out["masks"], np.uint8).reshape(-1, *image.shape[:2])
        area = masks.sum(axis=(1, 2), dtype=np.int64).astype(np.float32)  # (0, H, W) too
        keep = area > 0
        masks, labels, iscrowd, area = masks[keep], labels[keep], iscrowd[keep], area[keep]
        target = {
            "boxes": edge_boxes(masks),
            "labels": torch.from_numpy(labels),
            "masks": torch.from_numpy(np.ascontiguousarray(masks)),
            "iscrowd": torch.from_numpy(iscrowd),
            "area": torch.from_numpy(area),
            "image_id": int(sample.get("image_id", index)),
            "name": name,
        }
        pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return pixels.float().div_(255.0), target


class PanopticDataset(_View):
    """The panoptic view of a ``source`` whose samples hold ``segment_ids`` int (H, W) (0 = void)
    and ``segments``: a dict per segment with its ``id``, ``class`` (1..T things, T+1..T+S stuff)
    and optionally ``iscrowd`` (default 0); ``panoptic_file`` names the map in errors. This class
    checks them (every id of the map listed once, every listed id in the map, classes in
    1..``num_classes`` - 1, map and image of one size), applies the albumentations pipeline to
    the image and the segment map (a mask target: nearest), and returns ``(image, target)``: the
    instance view's pair for the thing segments (crowd ones with ``iscrowd = 1``; boxes from the
    transformed masks; things left empty dropped), the target adding::

        file_image_id  the source's own image id (``image_id`` is an int; Cityscapes' are not)
        semantic  int64 (H, W): 0 on every thing, s on stuff class T + s, ignore_index on void
        panoptic  int64 (H, W, 2): (class, k on the k-th thing of the target, else 0)
        crowd     bool (H, W): the pixels of crowd segments
    """

    def __init__(
        self,
        source: SampleSource | None = None,
        *,
        num_classes: int,
        num_things: int,
        ignore_index: int,
        transform: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(source, num_classes=num_classes, transform=transform)
        self.num_things = num_things
        self.ignore_index = ignore_index

    def segment_map(self, sample: Mapping[str, Any]) -> np.ndarray:
        """The checked map (H, W) int32 of 1 + each pixel's position in ``segments``, 0 = void
        (everywhere for an unlabelled sample, one without ``segment_ids``)."""
        if "segment_ids" not in sample:
            return np.zeros(sample["image"].shape[:2], np.int32)
        ids, file = np.asarray(sample["segment_ids"]), sample.get("panoptic_file", sample["name"])
        if ids.shape != sample["image"].shape[:2]:
            raise ValueError(
                f"panoptic file {file} is {'x'.join(map(str, ids.shape))} but its image "
                f"{sample['name']} is {'x'.join(map(str, sample['image'].shape[:2]))}"
            )
        listed = np.array([s["id"] for s in sample["segments"]], np.int64)
        classes = np.array([s["class"] for s in sample["segments"]], np.int64)
        found, inverse = np.unique(ids, return_inverse=True)
        unlisted, absent = np.setdiff1d(found, [0, *listed]), np.setdiff1d(listed, found)
        bad = np.unique(classes[(classes < 1) | (classes >= self.num_classes)])
        for problem, failed in (
            ("lists the void id 0 or a segment id twice",
             (listed == 0).any() or len(np.unique(listed)) < len(listed)),
            (f"holds segment id(s) {unlisted[:10].tolist()} that its segments do not list",
             unlisted.size),
            (f"lists segment id(s) {absent[:10].tolist()} absent from it", absent.size),
            (f"has segment class(es) {bad.tolist()}; expected 1..{self.num_classes - 1}", bad.size),
        ):  # fmt: skip
            if failed:
                raise ValueError(f"panoptic file {file} {problem}")
        position = np.zeros(len(found), np.int32)  # found id -> 1 + its position in segments
        order = np.argsort(listed)
        real = found != 0
        position[real] = order[np.searchsorted(listed[order], found[real])] + 1
        return position[inverse].reshape(ids.shape)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        sample = self.source[index]  # type: ignore[index]
        image, seg = sample["image"], self.segment_map(sample)
        if self.transform is not None:
            # padding fills both maps with one value: real pixels are those where they differ by 1
            out = self.transform(image=image, masks=[seg, seg + 1])
            image, (seg, shifted) = out["image"], out["masks"]
            seg = np.where(np.asarray(shifted) == np.asarray(seg) + 1, seg, 0).astype(np.int32)
        segments = sample.get("segments", ())
        classes = np.array([0, *(s["class"] for s in segments)], np.int64)  # by 1 + position
        crowd = np.array([False, *(bool(s.get("iscrowd", 0)) for s in segments)])
        area = np.bincount(seg.ravel(), minlength=len(classes))
        things = np.flatnonzero((classes >= 1) & (classes <= self.num_things) & (area > 0))
        instance = np.zeros(len(classes), np.int64)
        instance[things] = np.arange(1, len(things) + 1)
        semantic = np.where(classes > self.num_things, classes - self.num_things, 0)
        semantic[0] = self.ignore_index
        masks = (seg[None] == things[:, None, None]).astype(np.uint8)
        target = {
            "boxes": edge_boxes(masks),
            "labels": torch.from_numpy(classes[things]),
            "masks": torch.from_numpy(masks),
            "iscrowd": torch.from_numpy(crowd[things].astype(np.int64)),
            "area": torch.from_numpy(area[things].astype(np.float32)),
            "image_id": int(sample.get("image_id", index)),
            "file_image_id": sample.get("file_image_id", sample.get("image_id", index)),
            "name": sample["name"],
            "semantic": torch.from_numpy(semantic[seg]),
            "panoptic": torch.from_numpy(np.stack([classes[seg], instance[seg]], axis=-1)),
            "crowd": torch.from_numpy(crowd[seg]),
        }
        pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return pixels.float().div_(255.0), target


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class SegmentationDataModule(L.LightningDataModule):
    """Base LightningDataModule: a dataset module declares ``info`` (a ``DatasetInfo``) and
    implements ``pairs(split)`` (paired image / label files) or its own ``source(split)``; this
    class does the rest: view and class checks, transforms per split, dataset and collate per
    view, refusal of unscored splits, loaders.

    Keyword arguments mirror the keys of ``conf/data/*.yaml``; one left None takes the value
    ``info`` declares (``class_names`` else ``"0"``, ``"1"``, ...; ``palette`` else VOC's).

    Args:
        task: the task view (``semantic``, ``instance`` or ``panoptic``; set by the model config).
        num_classes: classes of the view, background included (panoptic: void + things + stuff).
        num_things, num_stuff: the panoptic view's thing and stuff classes, checked against the
            data (None: from it); None for the other views (``check_panoptic``).
        train_transforms, eval_transforms: albumentations pipelines (geometry and colour only;
            normalisation and tensor conversion happen after them).
        crop_size: side of the square train crops, read by the yaml's train pipeline
            (``${data.crop_size}``) and available to tiling inference.
        weight_map: a ``UNetWeightMap`` put in each semantic sample as ``weight``; True:
            ``UNetWeightMap()``.
        extra_metrics: metric names the task logs besides its own.
        detector_scale: ``{"min_size": ..., "max_size": ...}`` the detector configs resize this
            data's images to (``model.net.min_size`` / ``max_size``); kept as ``detector_scale``.
    """

    info: ClassVar[DatasetInfo]

    def __init__(
        self,
        *,
        task: str = "semantic",
        num_classes: int | None = None,
        num_things: int | None = None,
        num_stuff: int | None = None,
        in_channels: int | None = None,
        class_names: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        ignore_index: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int | str = 0,
        pin_memory: bool | str = False,
        prefetch_factor: int | None = None,
        train_transforms: Callable[..., dict[str, Any]] | None = None,
        eval_transforms: Callable[..., dict[str, Any]] | None = None,
        data_dir: str | None = None,
        crop_size: int | None = None,
        weight_map: UNetWeightMap | bool | None = None,
        extra_metrics: Sequence[str] = (),
        detector_scale: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        info = self.info
        self.check_task(task)
        self.task = task
        declared = self.view_classes()
        names = class_names or declared
        if num_classes is None:
            if names is None:
                raise ValueError(f"data.num_classes: required by data={info.name}'s {task} view")
            num_classes = len(declared if declared is not None else names)
        if declared is not None and num_classes != len(declared):
            raise ValueError(
                f"data.num_classes={num_classes} but data={info.name} has {len(declared)} "
                f"{task} classes"
            )
        if names is not None and len(names) != num_classes:
            raise ValueError(
                f"data.class_names has {len(names)} names but data.num_classes={num_classes} "
                f"(data={info.name})"
            )
        self.num_classes = num_classes
        self.class_names = [str(n) for n in names or range(num_classes)]
        palette = palette or info.palette
        self.palette = [list(c) for c in palette] if palette else default_palette(num_classes)
        panoptic = task == "panoptic"
        self.num_things, self.num_stuff = (num_things, num_stuff) if panoptic else (None, None)
        self._category_ids: list[int] | None = None
        if panoptic and None in (num_things, num_stuff):
            self.check_panoptic()
        elif panoptic and 1 + num_things + num_stuff != num_classes:  # type: ignore[operator]
            raise ValueError(
                f"data.num_things={num_things} + data.num_stuff={num_stuff} + void != "
                f"data.num_classes={num_classes} (data={info.name})"
            )
        if in_channels not in (None, info.in_channels):
            raise ValueError(
                f"data.in_channels={in_channels} but data={info.name} images have "
                f"{info.in_channels} channel(s)"
            )
        self.in_channels = info.in_channels
        self.ignore_index = info.ignore_index if ignore_index is None else ignore_index
        if 0 <= self.ignore_index < num_classes:
            raise ValueError(
                f"data.ignore_index={self.ignore_index} collides with the classes "
                f"0..{num_classes - 1} of data={info.name}: expected a value outside them"
            )
        self.mean, self.std = tuple(mean or info.mean), tuple(std or info.std)
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(
                f"data.mean / data.std have {len(self.mean)} / {len(self.std)} entries but "
                f"data.in_channels={self.in_channels}"
            )
        sizes = {
            "batch_size": batch_size,
            "eval_batch_size": eval_batch_size,
            "crop_size": crop_size,
        }
        for key, value in sizes.items():
            if value is not None and value < 1:
                raise ValueError(f"data.{key}={value!r}: expected a positive integer")
        if num_workers != "auto" and (
            isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0
        ):
            raise ValueError(f"data.num_workers={num_workers!r}: expected 'auto' or 0 or more")
        if pin_memory != "auto" and not isinstance(pin_memory, bool):
            raise ValueError(f"data.pin_memory={pin_memory!r}: expected 'auto', true or false")
        if prefetch_factor is not None and (
            isinstance(prefetch_factor, bool)
            or not isinstance(prefetch_factor, int)
            or prefetch_factor < 1
        ):
            raise ValueError(
                f"data.prefetch_factor={prefetch_factor!r}: expected null (torch's 2) or a "
                "positive integer"
            )
        if weight_map and task != "semantic":
            raise ValueError(
                f"data.weight_map: weight maps belong to the semantic view, not {task}"
            )
        self.weight_map = UNetWeightMap() if weight_map is True else weight_map or None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.train_transforms = train_transforms
        self.eval_transforms = eval_transforms
        if task == "semantic":  # albumentations passes undeclared targets through unaligned
            for transform in (train_transforms, eval_transforms):
                if hasattr(transform, "add_targets"):
                    transform.add_targets({"weight": "mask"})
        self.data_dir = data_dir
        self.crop_size = crop_size
        self.extra_metrics = tuple(extra_metrics)
        self.detector_scale = dict(detector_scale or {})
        self.splits: tuple[str, ...] = info.splits
        self.datasets: dict[str, Dataset] = {}
        self.predict_input: str | None = None  # set by predict.py before Trainer.predict

    @classmethod
    def declared(cls, key: str, task: str = "semantic") -> Any:
        """The declared default of the ``data.<key>`` config key (``num_classes``,
        ``in_channels``, ``ignore_index``, ``mean``, ``std``; ``num_things``, ``num_stuff``: None
        but for a declared panoptic view) for the ``task`` view."""
        if key in ("num_things", "num_stuff"):
            things, classes = cls.info.things, cls.info.views.get("panoptic")
            if task != "panoptic" or things is None or classes is None:
                return None
            return things if key == "num_things" else len(classes) - 1 - things
        if key != "num_classes":
            return getattr(cls.info, key)
        cls.check_task(task)
        if cls.info.views[task] is None:
            raise ValueError(
                f"data.num_classes: data={cls.info.name} declares no {task} classes; "
                "set data.num_classes (and data.class_names)"
            )
        return len(cls.info.views[task])

    @classmethod
    def check_task(cls, task: str) -> None:
        """Raise a ``ValueError`` naming ``data.task`` unless ``info`` offers the view ``task``."""
        if task not in cls.info.views:
            raise ValueError(
                f"data.task={task!r}: data={cls.info.name} offers the views {list(cls.info.views)}"
            )

    def view_classes(self) -> Sequence[str] | None:
        """The class names of the chosen view from the dataset itself (None: from the config)."""
        return self.info.views[self.task]

    def panoptic_categories(self) -> tuple[int, list[int], str]:
        """The panoptic classes as the data has them: the number of things T, the dataset's
        category id of each class 1..T+S (things, then stuff, each in ascending id) and where
        they were read (named in errors). Datasets with a panoptic view implement it."""
        raise NotImplementedError(f"data={self.info.name} declares no panoptic categories")

    def check_panoptic(self) -> list[int]:
        """``category_ids``, read on first use and checked against ``data.num_things``,
        ``data.num_stuff`` and ``data.num_classes`` (a ``ValueError`` naming the key)."""
        if self._category_ids is None:
            things, ids, where = self.panoptic_categories()
            for key, kind, count in (
                ("num_things", "thing", things),
                ("num_stuff", "stuff", len(ids) - things),
            ):
                if getattr(self, key) not in (None, count):
                    raise ValueError(
                        f"data.{key}={getattr(self, key)} but {where} has {count} {kind} "
                        f"categories: set data.{key}={count} (or null)"
                    )
            if 1 + len(ids) != self.num_classes:
                raise ValueError(
                    f"data.num_classes={self.num_classes} but {where} has {len(ids)} "
                    f"categories (+ void): set data.num_classes={len(ids) + 1}"
                )
            self.num_things, self.num_stuff = things, len(ids) - things
            self._category_ids = list(ids)
        return self._category_ids

    @property
    def category_ids(self) -> list[int] | None:
        """Panoptic view: the dataset's category id of each class 1..T+S
        (``category_ids[c - 1]``, for export); None for the other views."""
        return self.check_panoptic() if self.task == "panoptic" else None

    # ----------------------------------------------------------------- files and folders

    def not_found(self, what: str, how: str | None = None) -> FileNotFoundError:
        """``FileNotFoundError("data=<name>: <what>; <how to get the data>")``."""
        return FileNotFoundError(f"data={self.info.name}: {what}; {how or self.info.how_to_get}")

    def require_dir(self, path: str | Path, what: str = "folder") -> Path:
        """``path`` as a Path, raising ``not_found`` when it is not a folder."""
        path = Path(path).expanduser()
        if not path.is_dir():
            raise self.not_found(f"{what} {path} does not exist")
        return path

    @property
    def root(self) -> Path:
        """``data_dir``, which must exist."""
        return self.require_dir(self.data_dir or "", "data_dir")

    def read_list(self, path: Path) -> list[tuple[int, list[str]]]:
        """The non-empty lines of a list file as ``(line number, fields)``.

        Raises:
            FileNotFoundError: no such file. ValueError: the file lists nothing.
        """
        if not path.is_file():
            raise self.not_found(f"list file {path} not found")
        lines = [(n, s.split()) for n, s in enumerate(path.read_text().splitlines(), 1)]
        lines = [(n, fields) for n, fields in lines if fields]
        if not lines:
            raise ValueError(f"data={self.info.name}: list file {path} lists nothing")
        return lines

    def match_pairs(
        self, images: Iterable[Path], label_of: Callable[[Path], Path], *, how: str | None = None
    ) -> list[tuple[Path, Path]]:
        """``(image, label_of(image))`` pairs, each file checked to exist (``how``: how to get a
        missing one, default ``info.how_to_get``)."""
        pairs = []
        for image in images:
            label = label_of(image)
            for kind, path in (("image", image), ("label", label)):
                if not path.is_file():
                    raise self.not_found(f"{kind} {path} of the pair {image.name} not found", how)
            pairs.append((image, label))
        return pairs

    # ----------------------------------------------------------------- datasets per view

    def pairs(self, split: str) -> list[tuple[Path, Path]]:
        """The ``(image, label)`` files of ``split`` (paired datasets)."""
        raise NotImplementedError(f"data={self.info.name} lists no (image, label) pairs")

    def label_values(self) -> Mapping[int, int]:
        """Raw label value -> class or ``IGNORE`` (default: the declared ``info.labels``)."""
        return self.info.labels or {}

    def source(self, split: str) -> SampleSource:
        """The samples of ``split`` (default: ``pairs`` read as RGB images and ``IndexPNG``)."""
        reader = IndexPNG(
            self.label_values(), ignore_index=self.ignore_index, dataset=self.info.name
        )
        image = partial(read_image, dataset=self.info.name)
        return PairedSamples(self.pairs(split), read_image=image, read_label=reader)

    def view(self, source: SampleSource, *, train: bool = False) -> Dataset:
        """The chosen view of ``source``, with the train or the eval transforms."""
        kwargs = {
            "num_classes": self.num_classes,
            "transform": self.train_transforms if train else self.eval_transforms,
        }
        if self.task == "panoptic":
            self.check_panoptic()  # the data's categories against the config, before a sample
            return PanopticDataset(
                source, num_things=self.num_things, ignore_index=self.ignore_index, **kwargs
            )
        if self.task != "semantic":
            return InstanceDataset(source, **kwargs)
        return SemanticDataset(
            source,
            ignore_index=self.ignore_index,
            mean=self.mean,
            std=self.std,
            weight_map=self.weight_map,
            **kwargs,
        )

    def refuse_unscored(self, split: str) -> None:
        """Raise a ``ValueError`` saying why when ``split`` has no labels to score."""
        if split in self.info.unscored:
            raise ValueError(
                f"data={self.info.name}: split '{split}' has no labels to score: "
                f"{self.info.unscored[split]}"
            )

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` for the chosen view, built on first use (an unscored split
        too where ``splits`` lists it: predict reads it, ``loader`` refuses to score it)."""
        if split not in self.splits:
            self.refuse_unscored(split)
            raise ValueError(f"split={split!r}: data={self.info.name} has {list(self.splits)}")
        if split not in self.datasets:
            dataset = self.view(self.source(split), train=split == "train")
            # Main-process loading: augmentation follows the run's seed, one stream per rank.
            rank = dist.get_rank() if _distributed() else 0
            seed_transform(getattr(dataset, "transform", None), torch.initial_seed() + rank)
            self.datasets[split] = dataset
        return self.datasets[split]

    # ----------------------------------------------------------------- loaders

    def setup(self, stage: str | None = None) -> None:
        stages = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
        for split in stages.get(stage or "", ()):
            self.dataset(split)

    def _loader(self, dataset: Dataset, *, train: bool, batch_size: int) -> DataLoader:
        """A loader over ``dataset``. In one process, the training loader is a torchdata
        ``StatefulDataLoader`` over ``EpochShuffle`` and ``EpochSeeded`` (seglab.data.loaders), so
        that a checkpoint holds its position and a resumed run draws what the uninterrupted one
        drew; under DDP, Lightning puts its ``DistributedSampler`` in (resumed at epoch starts).
        Every loader draws its workers' seeds from its own generator, never the global one."""
        # the run's seed (seed_everything), one stream per rank
        seed = torch.initial_seed() + (dist.get_rank() if _distributed() else 0)
        sampler = None
        options: dict[str, Any] = {"shuffle": train}
        if not train and _distributed():
            # unlike torch's DistributedSampler, no sample repeated to even out the ranks: the
            # metrics would count it twice
            if 0 < len(dataset) < dist.get_world_size():  # type: ignore[arg-type]
                raise ValueError(
                    f"data={self.info.name}: an evaluation split of {len(dataset)} sample(s) "  # type: ignore[arg-type]
                    f"cannot give each of the {dist.get_world_size()} DDP processes one; expected "
                    "trainer.devices (x num_nodes) at most the split's size"
                )
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        loader_class: type[DataLoader] = DataLoader
        if train and not _distributed():
            loader_class = StatefulDataLoader
            sampler = EpochShuffle(len(dataset), seed)  # type: ignore[arg-type]
            dataset = EpochSeeded(dataset, seed)
            options = {}
        workers, pin = self.loader_workers()
        if workers > 0 and self.prefetch_factor is not None:
            options["prefetch_factor"] = self.prefetch_factor
        return loader_class(
            dataset,
            batch_size=batch_size,
            drop_last=train and len(dataset) > batch_size,  # type: ignore[arg-type]
            sampler=sampler,
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=workers > 0,
            worker_init_fn=seed_worker if workers > 0 else None,
            collate_fn=None if self.task == "semantic" else list_collate,
            generator=torch.Generator().manual_seed(seed),
            **options,
        )

    def loader_workers(self) -> tuple[int, bool]:
        """``(num_workers, pin_memory)`` of this run's loaders, ``auto`` resolved.

        On a CUDA device, ``num_workers: auto`` is one worker per core this process may use, its
        share of the node's devices less one for the process itself, at most 8 (decoding and
        augmentation run in the workers and keep the GPU fed); ``pin_memory: auto`` pins the
        batches (faster, asynchronous host-to-device copies). On a CPU both are off: the
        convolutions' threads already use every core, and there is nothing to pin for.
        The samples drawn do not depend on the number of workers (``seglab.data.loaders``).
        """
        trainer = getattr(self, "trainer", None)
        strategy = getattr(trainer, "strategy", None)
        cuda = strategy is not None and strategy.root_device.type == "cuda"
        workers = self.num_workers
        if workers == "auto":
            workers = 0
            if cuda:
                cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
                per_device = (cores or os.cpu_count() or 1) // max(1, trainer.num_devices)
                workers = max(1, min(8, per_device - 1))
        pin = cuda if self.pin_memory == "auto" else bool(self.pin_memory)
        return int(workers), pin

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("train"), train=True, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def loader(self, split: str) -> DataLoader:
        """An evaluation loader (no shuffling, no augmentation) over any scored split."""
        self.refuse_unscored(split)
        return self._loader(self.dataset(split), train=False, batch_size=self.eval_batch_size)

    def predict_dataset(self) -> Dataset:
        """The dataset of ``predict_input`` (``seglab.data.prediction.prediction_dataset``), built
        once: its files' headers are read when it is built."""
        from seglab.data.prediction import prediction_dataset  # its module needs this one

        key = f"predict:{self.predict_input}"
        if key not in self.datasets:
            self.datasets[key] = prediction_dataset(self, self.predict_input)
        return self.datasets[key]

    def predict_dataloader(self) -> DataLoader:
        """An evaluation loader over ``predict_input``: an image file, a folder of images or a
        split of this dataset (whole batches of ``eval_batch_size`` for a split, else one image
        a batch: files differ in size)."""
        batch = self.eval_batch_size if self.predict_input in self.splits else 1
        return self._loader(self.predict_dataset(), train=False, batch_size=batch)

    def median_frequency_weights(self) -> list[float]:
        """SegNet's median-frequency class weights (Eigen & Fergus 2015) from the training masks
        (ignore label out): ``median(f) / f(c)``, ``f(c)`` = pixels of class c / pixels of the
        images in which c is present; a class absent from every image gets weight 0."""
        dataset, k = self.dataset("train"), self.num_classes
        counts, image_counts = np.zeros(k, np.int64), np.zeros(k, np.int64)
        for i in range(len(dataset)):  # type: ignore[arg-type]
            mask = np.asarray(dataset.load_mask(i)).ravel()  # type: ignore[attr-defined]
            c = np.bincount(mask[(mask >= 0) & (mask < k)], minlength=k)
            counts += c
            image_counts[c > 0] += int(c.sum())
        present = counts > 0
        if not present.any():
            raise ValueError("median-frequency weights: the training masks hold no labelled pixel")
        freq = counts[present] / image_counts[present]
        weights = np.zeros(k, np.float32)
        weights[present] = np.median(freq) / freq
        return weights.tolist()
