"""What every dataset module shares: the semantic sample contract, loaders, samplers, statistics.

A semantic sample after ``SemanticDataset.__getitem__`` is a dict::

    image  float32 (C, H, W), normalised with the data module's mean / std
    mask   int64 (H, W), classes 0..K-1 or ignore_index
    weight float32 (H, W), optional per-pixel loss weight (U-Net weight maps)
    name   str, the file or generated sample it came from (used in error messages)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

__all__ = [
    "InstanceDataset",
    "PairedSemanticDataset",
    "SegmentationDataModule",
    "SemanticDataset",
    "UnpaddedDistributedSampler",
    "declare_weight_target",
    "default_palette",
    "list_collate",
    "median_frequency_weights",
    "read_rgb_image",
    "seed_transform",
]

TASKS = ("semantic", "instance", "panoptic")


def default_palette(num_colours: int) -> list[list[int]]:
    """The PASCAL VOC colour map (bit-interleaved), extended to ``num_colours`` entries."""
    palette = []
    for i in range(num_colours):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette


def declare_weight_target(transform: Callable[..., dict[str, Any]] | None) -> None:
    """Declare ``weight`` (the per-pixel loss weight map) as a mask target of an albumentations
    pipeline, in place: albumentations passes undeclared targets through untouched, which would
    leave the map unaligned with the augmented image and mask. Other callables are left alone."""
    if transform is not None and hasattr(transform, "add_targets"):
        transform.add_targets({"weight": "mask"})


def median_frequency_weights(counts: np.ndarray, image_counts: np.ndarray) -> np.ndarray:
    """Median-frequency balancing of SegNet (Eigen & Fergus 2015): ``median(f) / f(c)``.

    ``f(c)`` = pixels of class c / total pixels of the images in which c is present.

    Args:
        counts: (K,) pixels of each class over the training set (ignore label excluded).
        image_counts: (K,) summed pixel counts of the images that contain each class.
    Returns:
        (K,) float32 weights; a class absent from every image gets weight 0.
    """
    counts = np.asarray(counts, np.float64)
    image_counts = np.asarray(image_counts, np.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("median-frequency weights: the training masks hold no labelled pixel")
    freq = np.zeros_like(counts)
    freq[present] = counts[present] / image_counts[present]
    weights = np.zeros_like(counts)
    weights[present] = np.median(freq[present]) / freq[present]
    return weights.astype(np.float32)


class SemanticDataset(Dataset):
    """Base of every semantic view: subclasses implement ``__len__`` and ``load_sample``.

    ``load_sample(i)`` returns ``{"image": uint8 (H, W, C), "mask": int (H, W), "name": str}`` and
    optionally ``"weight": float32 (H, W)`` and ``"mask_file": str`` (the label file, named in
    mask errors instead of ``name``). This class validates the mask against ``num_classes``
    and ``ignore_index`` (raising ``ValueError`` naming the sample), applies the albumentations
    pipeline (the weight map travels as a mask target), normalises and converts to tensors.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        ignore_index: int,
        mean: Sequence[float],
        std: Sequence[float],
        transform: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mean = np.asarray(mean, np.float32) * 255.0
        self.inv_std = 1.0 / (np.asarray(std, np.float32) * 255.0)
        self.transform = transform

    def load_sample(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def load_mask(self, index: int) -> np.ndarray:
        """The raw mask of sample ``index`` (override when it can be read without the image)."""
        return np.asarray(self.load_sample(index)["mask"])

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
        if image.ndim == 2:
            image = image[..., None]
        if mask.shape != image.shape[:2]:
            raise ValueError(
                f"sample '{name}': mask shape {mask.shape} differs from image shape {image.shape[:2]}"
            )
        self.check_mask(mask, sample.get("mask_file", name))
        weight = sample.get("weight")
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


def read_rgb_image(path: str | Path, dataset: str) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3): grey, palette, CMYK and RGBA are converted.

    Raises:
        ValueError: the file cannot be read, naming ``dataset`` and the file.
    """
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"), dtype=np.uint8)
    except OSError as err:
        raise ValueError(f"{dataset} image {path} could not be read ({err})") from err


class PairedSemanticDataset(SemanticDataset):
    """A semantic view read from ``(image file, label file)`` pairs.

    ``read_label(path, ignore_index=...)`` turns one label file into the mask (classes and
    ``ignore_index``); images are read as RGB. ``name`` is the image file.

    Args:
        pairs: ``(image, label)`` paths.
        read_label: the dataset's label decoder.
        dataset: the dataset's name, for error messages.
        **kwargs: ``SemanticDataset``'s arguments.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        read_label: Callable[..., np.ndarray],
        *,
        dataset: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pairs = list(pairs)
        self.read_label = read_label
        self.dataset_name = dataset

    def __len__(self) -> int:
        return len(self.pairs)

    def load_mask(self, index: int) -> np.ndarray:
        """The checked mask of sample ``index`` (for statistics; ``__getitem__`` checks its own)."""
        path = self.pairs[index][1]
        mask = self.read_label(path, ignore_index=self.ignore_index)
        self.check_mask(mask, str(path))
        return mask

    def load_sample(self, index: int) -> dict[str, Any]:
        image_path, label_path = self.pairs[index]
        return {
            "image": read_rgb_image(image_path, self.dataset_name),
            "mask": self.read_label(label_path, ignore_index=self.ignore_index),
            "name": str(image_path),
            "mask_file": str(label_path),
        }


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


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(n, H, W) binary masks -> (n, 4) float32 xyxy boxes on pixel edges (x1 = last column + 1)."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for k, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if rows.size:
            boxes[k] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


class InstanceDataset(Dataset):
    """Base of every instance view: subclasses implement ``__len__`` and ``load_instances``.

    ``load_instances(i)`` returns ``{"image": uint8 (H, W, C), "masks": (n, H, W) binary,
    "labels": (n,) int, contiguous 1..K-1 (0 = background), "name": str}`` and optionally
    ``"iscrowd"`` (n,). This class applies the albumentations pipeline to the image and every mask,
    derives the boxes from the transformed masks (so boxes always fit their masks), drops objects
    left empty, and returns ``(image, target)`` in torchvision's detection format::

        image  float32 (C, H, W) in [0, 1] (the detector normalises)
        target {"boxes": float32 (n, 4) xyxy, "labels": int64 (n,), "masks": uint8 (n, H, W),
                "iscrowd": int64 (n,), "area": float32 (n,), "image_id": int, "name": str}
    """

    def __init__(
        self, *, num_classes: int, transform: Callable[..., dict[str, Any]] | None = None
    ) -> None:
        self.num_classes = num_classes
        self.transform = transform

    def __len__(self) -> int:
        raise NotImplementedError

    def load_instances(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        sample = self.load_instances(index)
        image, name = sample["image"], sample["name"]
        if image.ndim == 2:
            image = image[..., None]
        masks = np.asarray(sample["masks"], np.uint8).reshape(-1, *image.shape[:2])
        labels = np.asarray(sample["labels"], np.int64).reshape(-1)
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
            "boxes": torch.from_numpy(masks_to_boxes(masks)),
            "labels": torch.from_numpy(labels),
            "masks": torch.from_numpy(np.ascontiguousarray(masks)),
            "iscrowd": torch.from_numpy(iscrowd),
            "area": torch.from_numpy(area),
            "image_id": int(sample.get("image_id", index)),
            "name": name,
        }
        pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return pixels.float().div_(255.0), target


class UnpaddedDistributedSampler(DistributedSampler):
    """Rank r takes samples r, r + W, r + 2W, ...: no sample is repeated to even out the ranks.

    torch's ``DistributedSampler`` pads the last round with repeated samples, which counts them
    twice in evaluation metrics. Lightning keeps a ``DistributedSampler`` it is given.
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))  # type: ignore[arg-type]
        self.total_size = len(dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))


class SegmentationDataModule(L.LightningDataModule):
    """Base LightningDataModule: loaders, normalisation, task view and class metadata.

    Subclasses implement ``build_dataset(split)`` for the splits they have. Keyword arguments
    mirror the keys of every ``conf/data/*.yaml``.

    Args:
        task: ``semantic``, ``instance`` or ``panoptic`` (set by the model config).
        num_classes: classes of the task view, background included.
        in_channels: image channels the network receives.
        class_names: one name per class.
        palette: one RGB triple per class (default: the VOC colour map).
        ignore_index: label ignored by losses and metrics.
        mean, std: per-channel normalisation on the 0..1 scale.
        train_transforms, eval_transforms: albumentations pipelines (geometry and colour only;
            normalisation and tensor conversion happen after them).
    """

    splits: tuple[str, ...] = ("train", "val", "test")
    collate_fn: Callable[[list[Any]], Any] | None = None

    def __init__(
        self,
        *,
        task: str = "semantic",
        num_classes: int,
        in_channels: int = 3,
        class_names: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        ignore_index: int = 255,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        train_transforms: Callable[..., dict[str, Any]] | None = None,
        eval_transforms: Callable[..., dict[str, Any]] | None = None,
        data_dir: str | None = None,
        extra_metrics: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"data.task={task!r}: expected one of {list(TASKS)}")
        if num_classes < 1:
            raise ValueError(f"data.num_classes={num_classes}: expected at least 1")
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(
                f"data.mean / data.std have {len(mean)} / {len(std)} entries but "
                f"data.in_channels={in_channels}"
            )
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is not None and value < 1:
                raise ValueError(f"data.{key}={value!r}: expected a positive integer")
        if num_workers < 0:
            raise ValueError(f"data.num_workers={num_workers}: expected 0 or more")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"data.class_names has {len(class_names)} names but data.num_classes={num_classes}"
            )
        self.task = task
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.class_names = (
            list(class_names) if class_names else [str(i) for i in range(num_classes)]
        )
        self.palette = [list(c) for c in palette] if palette else default_palette(num_classes)
        self.ignore_index = ignore_index
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train_transforms = train_transforms
        self.eval_transforms = eval_transforms
        if task == "semantic":
            for transform in (train_transforms, eval_transforms):
                declare_weight_target(transform)
        self.data_dir = data_dir
        self.extra_metrics = tuple(extra_metrics)
        self.datasets: dict[str, Dataset] = {}

    def check_fixed_view(self, name: str, num_classes: int, crop_size: int | None = None) -> None:
        """For datasets with one semantic RGB view and a fixed class set (``data=<name>``):
        ``task``, ``num_classes``, ``in_channels``, ``ignore_index`` and ``crop_size`` checked
        against it, each error naming its config key."""
        if self.task != "semantic":
            raise ValueError(f"data.task={self.task!r}: data={name} has only a semantic view")
        if self.num_classes != num_classes:
            raise ValueError(
                f"data.num_classes={self.num_classes} but data={name} has {num_classes} classes"
            )
        if self.in_channels != 3:
            raise ValueError(f"data.in_channels={self.in_channels} but data={name} images are RGB")
        if 0 <= self.ignore_index < num_classes:
            raise ValueError(
                f"data.ignore_index={self.ignore_index} collides with the classes "
                f"0..{num_classes - 1}: expected a value outside them"
            )
        if crop_size is not None and crop_size < 1:
            raise ValueError(f"data.crop_size={crop_size}: expected a positive crop side")

    def build_dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def dataset_kwargs(self, split: str) -> dict[str, Any]:
        """Keyword arguments of ``SemanticDataset`` for ``split``."""
        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "mean": self.mean,
            "std": self.std,
            "transform": self.train_transforms if split == "train" else self.eval_transforms,
        }

    def dataset(self, split: str) -> Dataset:
        if split not in self.splits:
            raise ValueError(f"split={split!r}: this dataset has the splits {list(self.splits)}")
        if split not in self.datasets:
            dataset = self.build_dataset(split)
            # Main-process loading: augmentation follows the run's seed, one stream per rank.
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            seed_transform(getattr(dataset, "transform", None), torch.initial_seed() + rank)
            self.datasets[split] = dataset
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(
            stage or "", ()
        )
        for split in needed:
            self.dataset(split)

    def _loader(self, split: str, *, train: bool) -> DataLoader:
        dataset = self.dataset(split)
        sampler = None
        if not train and dist.is_available() and dist.is_initialized():
            sampler = UnpaddedDistributedSampler(
                dataset, num_replicas=dist.get_world_size(), rank=dist.get_rank()
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train and len(dataset) > self.batch_size,  # type: ignore[arg-type]
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_worker if self.num_workers > 0 else None,
            collate_fn=self.collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def loader(self, split: str) -> DataLoader:
        """An evaluation loader (no shuffling, no augmentation) over any split."""
        return self._loader(split, train=False)

    def class_pixel_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel counts per class over the training masks, and image pixels where each occurs."""
        dataset = self.dataset("train")
        counts = np.zeros(self.num_classes, np.int64)
        image_counts = np.zeros(self.num_classes, np.int64)
        for i in range(len(dataset)):  # type: ignore[arg-type]
            mask = np.asarray(dataset.load_mask(i)).ravel()  # type: ignore[attr-defined]
            c = np.bincount(
                mask[(mask >= 0) & (mask < self.num_classes)], minlength=self.num_classes
            )
            counts += c
            image_counts[c > 0] += int(c.sum())
        return counts, image_counts

    def median_frequency_weights(self) -> list[float]:
        """SegNet's median-frequency class weights from the training masks (ignore label out)."""
        return median_frequency_weights(*self.class_pixel_counts()).tolist()
