"""2018 Data Science Bowl nuclei (BBBC038v1 ``stage1_train``): nucleus vs background.

Caicedo et al., "Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl",
Nature Methods 2019. Layout under ``data_dir``::

    stage1_train/<id>/images/<id>.png   RGBA, grey or colour light-microscopy image, varying size
    stage1_train/<id>/masks/<m>.png     one binary mask per nucleus, same size as the image

``load_dsb2018`` reads one id into an RGB image and an int32 instance-id map; the semantic view
(nucleus = 1, background = 0) and the instance view (one ``nucleus`` target per mask file) both
build on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from seglab.data.base import InstanceDataset, SegmentationDataModule, SemanticDataset, list_collate
from seglab.data.weight_maps import unet_weight_map

__all__ = [
    "DSB2018DataModule",
    "DSB2018InstanceDataset",
    "DSB2018SemanticDataset",
    "InstanceMaps",
    "list_dsb2018_ids",
    "load_dsb2018",
    "load_dsb2018_image",
    "load_dsb2018_instances",
    "split_dsb2018_ids",
]

HOW_TO_GET = (
    "get stage1_train of the 2018 Data Science Bowl (https://www.kaggle.com/c/"
    "data-science-bowl-2018/data, or the corrected copy github.com/lopuhin/"
    "kaggle-dsbowl-2018-dataset-fixes) and unpack it so that stage1_train/<id>/images/<id>.png "
    "exists under data.data_dir (or under dsb2018_nuclei/ in $SEGLAB_DATA_DIR)"
)


def list_dsb2018_ids(folder: str | Path) -> list[str]:
    """Sorted image ids of a DSB 2018 stage folder: the subfolders holding ``images/<id>.png``.

    Raises:
        FileNotFoundError: ``folder`` is missing, holds no id folder, or an id folder lacks
            its image (naming what was looked for and how to get the data).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"data=dsb2018: folder {folder} does not exist; {HOW_TO_GET}")
    ids = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not ids:
        raise FileNotFoundError(f"data=dsb2018: no <id>/ folder in {folder}; {HOW_TO_GET}")
    for image_id in ids:
        image = folder / image_id / "images" / f"{image_id}.png"
        if not image.is_file():
            raise FileNotFoundError(f"data=dsb2018: image {image} not found; {HOW_TO_GET}")
    return ids


def load_dsb2018_image(folder: str | Path, image_id: str) -> np.ndarray:
    """The image of ``image_id`` as RGB uint8 (H, W, 3): RGBA drops its alpha, grey is repeated."""
    path = Path(folder) / image_id / "images" / f"{image_id}.png"
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"), dtype=np.uint8)
    except OSError as err:
        raise ValueError(f"DSB 2018 image {path} could not be read ({err})") from err


def load_dsb2018_instances(
    folder: str | Path, image_id: str, shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Instance-id map (H, W) int32 of ``image_id``: 0 = background, 1..n = the non-empty masks
    (their non-zero pixels) in sorted file-name order; a pixel claimed by several masks keeps
    the first one's id.

    ``shape`` is the image's (H, W); None reads it from the image file's header.

    Raises:
        FileNotFoundError: the ``masks`` folder is missing.
        ValueError: a mask is not a single-channel image of the image's size (naming the file).
    """
    base = Path(folder) / image_id
    if shape is None:
        with Image.open(base / "images" / f"{image_id}.png") as img:
            shape = (img.height, img.width)
    mask_dir = base / "masks"
    if not mask_dir.is_dir():
        raise FileNotFoundError(f"data=dsb2018: mask folder {mask_dir} not found; {HOW_TO_GET}")
    height, width = shape
    ids = np.zeros(shape, np.int32)
    n = 0
    for path in sorted(mask_dir.glob("*.png")):
        try:
            with Image.open(path) as img:
                if len(img.getbands()) != 1 or img.size != (width, height):
                    raise ValueError(
                        f"DSB 2018 mask {path} is a {img.mode} image of {img.height}x{img.width}; "
                        f"expected a single-channel mask of the image's size {height}x{width}"
                    )
                box = img.getbbox()  # of the non-zero pixels, None when there are none
                if box is None:
                    continue
                crop = np.asarray(img.crop(box))
        except OSError as err:
            raise ValueError(f"DSB 2018 mask {path} could not be read ({err})") from err
        n += 1
        x0, y0, x1, y1 = box
        region = ids[y0:y1, x0:x1]
        region[(crop != 0) & (region == 0)] = n
    return ids


def load_dsb2018(folder: str | Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """``(image, instances)`` of ``image_id``: RGB uint8 (H, W, 3) and int32 ids (H, W)."""
    image = load_dsb2018_image(folder, image_id)
    return image, load_dsb2018_instances(folder, image_id, image.shape[:2])


def split_dsb2018_ids(
    ids: Sequence[str], *, val_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Deterministic train / val split: the sorted ids shuffled with ``seed``; the first
    ``round(val_fraction * n)`` (at least 1 and at most n - 1 when ``val_fraction > 0`` and
    n >= 2) go to ``val``. Each split is returned sorted."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"data.val_fraction={val_fraction}: expected 0 <= val_fraction < 1")
    ordered = sorted(ids)
    n = len(ordered)
    n_val = round(val_fraction * n)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(ordered[i] for i in order[:n_val])
    train = sorted(ordered[i] for i in order[n_val:])
    return {"train": train, "val": val}


class InstanceMaps:
    """Instance-id maps of one stage folder by image id, composed from the mask files on first
    request and, with ``cache``, kept in memory (uint16 when the count fits: 2 bytes per pixel;
    each data loader worker keeps its own), so later epochs read only the image file."""

    def __init__(self, folder: str | Path, cache: bool = True) -> None:
        self.folder = Path(folder)
        self.cache = cache
        self._maps: dict[str, np.ndarray] = {}

    def __call__(self, image_id: str, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The int32 instance-id map (H, W) of ``image_id`` (see ``load_dsb2018_instances``)."""
        stored = self._maps.get(image_id)
        if stored is not None:
            return stored.astype(np.int32)
        ids = load_dsb2018_instances(self.folder, image_id, shape)
        if self.cache:
            self._maps[image_id] = ids.astype(np.uint16) if ids.max() < 2**16 else ids
        return ids


class DSB2018SemanticDataset(SemanticDataset):
    """Semantic view of DSB 2018 ids: nucleus (1) vs background (0).

    Samples: ``image`` uint8 (H, W, 3), ``mask`` uint8 (H, W), ``name`` the image file, and
    ``weight`` float32 (H, W) when ``weight_map`` is set: U-Net's weight map over the given
    nuclei (touching nuclei stay separate objects), computed on the first request of an id and
    kept in memory (4 bytes per pixel; each data loader worker keeps its own).

    Args:
        folder: the stage folder (``.../stage1_train``).
        ids: the image ids of this split.
        weight_map, w0, sigma, w_c: as for ``unet_weight_map`` (``w_c`` is its
            ``class_weights``: None, ``"balanced"`` or ``(background_weight, nucleus_weight)``).
        cache_masks: keep each image's instance-id map in memory (see ``InstanceMaps``).
        **kwargs: ``SemanticDataset``'s arguments.
    """

    def __init__(
        self,
        folder: str | Path,
        ids: Sequence[str],
        *,
        cache_masks: bool = True,
        weight_map: bool = False,
        w0: float = 10.0,
        sigma: float = 5.0,
        w_c: str | Sequence[float] | None = "balanced",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.folder = Path(folder)
        self.ids = list(ids)
        self.instance_maps = InstanceMaps(self.folder, cache_masks)
        self.weight_map = weight_map
        self.w0, self.sigma, self.w_c = w0, sigma, w_c
        self._weights: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def load_instances(self, index: int) -> np.ndarray:
        """The instance-id map (H, W) int32 of sample ``index``."""
        return self.instance_maps(self.ids[index])

    def load_mask(self, index: int) -> np.ndarray:
        return (self.load_instances(index) > 0).astype(np.uint8)

    def load_weight(self, index: int, instances: np.ndarray) -> np.ndarray:
        """U-Net weight map (H, W) float32 of sample ``index`` (cached per id)."""
        image_id = self.ids[index]
        if image_id not in self._weights:
            self._weights[image_id] = unet_weight_map(
                instances, w0=self.w0, sigma=self.sigma, class_weights=self.w_c
            )
        return self._weights[image_id]

    def load_sample(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        image = load_dsb2018_image(self.folder, image_id)
        instances = self.instance_maps(image_id, image.shape[:2])
        sample = {
            "image": image,
            "mask": (instances > 0).astype(np.uint8),
            "name": str(self.folder / image_id / "images" / f"{image_id}.png"),
        }
        if self.weight_map:
            sample["weight"] = self.load_weight(index, instances)
        return sample


class DSB2018InstanceDataset(InstanceDataset):
    """Instance view of DSB 2018 ids: one ``nucleus`` (label 1) target per non-empty mask file,
    its pixels as in ``load_dsb2018_instances`` (a pixel two files claim goes to the first).

    Args:
        folder: the stage folder (``.../stage1_train``).
        ids: the image ids of this split.
        cache_masks: keep each image's instance-id map in memory (see ``InstanceMaps``).
        **kwargs: ``InstanceDataset``'s arguments.
    """

    def __init__(
        self, folder: str | Path, ids: Sequence[str], *, cache_masks: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.folder = Path(folder)
        self.ids = list(ids)
        self.instance_maps = InstanceMaps(self.folder, cache_masks)

    def __len__(self) -> int:
        return len(self.ids)

    def load_instances(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        image = load_dsb2018_image(self.folder, image_id)
        instances = self.instance_maps(image_id, image.shape[:2])
        count = int(instances.max())
        masks = instances[None] == np.arange(1, count + 1, dtype=np.int32)[:, None, None]
        return {
            "image": image,
            "masks": masks,
            "labels": np.ones(count, np.int64),
            "image_id": index,
            "name": str(self.folder / image_id / "images" / f"{image_id}.png"),
        }


class DSB2018DataModule(SegmentationDataModule):
    """``data=dsb2018``: DSB 2018 ``stage1_train`` nuclei, RGB input; semantic view
    (``task=semantic``: background / nucleus masks) or instance view (``task=instance``: one
    ``nucleus`` target per mask file, in lists; ``image_id`` is the index in the split).

    Splits: ``train`` and ``val`` divide the ids of ``data_dir/train_folder`` by
    ``split_dsb2018_ids`` (seeded shuffle, ``val_fraction``); there is no ``test`` split (stage 1
    test masks are not in this layout). Images vary in size: the train pipeline crops to a fixed
    size and evaluation takes them whole, one per batch (``eval_batch_size: 1`` in the yaml).

    Args:
        data_dir: the folder holding ``train_folder``.
        train_folder: the stage folder with the labelled ids.
        val_fraction, split_seed: the train / val split.
        crop_size: side of the square train tiles, read by the yaml's train pipeline
            (``PadIfNeeded`` + ``RandomCrop``: one size, so that images batch) and available to
            tiling inference; None: not set.
        cache_masks: keep each image's composed instance-id map in memory after its first read
            (the mask files are read once, not every epoch).
        weight_map, w0, sigma, w_c: U-Net weight maps (see ``DSB2018SemanticDataset``).
        **kwargs: ``SegmentationDataModule``'s arguments.
    """

    splits = ("train", "val")

    def __init__(
        self,
        *,
        data_dir: str,
        train_folder: str = "stage1_train",
        val_fraction: float = 0.2,
        split_seed: int = 0,
        crop_size: int | None = None,
        cache_masks: bool = True,
        weight_map: bool = False,
        w0: float = 10.0,
        sigma: float = 5.0,
        w_c: str | Sequence[float] | None = "balanced",
        num_classes: int = 2,
        in_channels: int = 3,
        class_names: Sequence[str] | None = ("background", "nucleus"),
        palette: Sequence[Sequence[int]] | None = ((0, 0, 0), (255, 255, 255)),
        mean: Sequence[float] = (0.216, 0.210, 0.225),
        std: Sequence[float] = (0.316, 0.310, 0.330),
        **kwargs: Any,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            class_names=class_names,
            palette=palette,
            mean=mean,
            std=std,
            data_dir=data_dir,
            **kwargs,
        )
        if self.task == "panoptic":
            raise ValueError(
                "data.task='panoptic': data=dsb2018 has a semantic and an instance view"
            )
        if self.task == "instance":
            if weight_map:
                raise ValueError("data.weight_map=true: weight maps belong to the semantic view")
            self.collate_fn = list_collate
        if num_classes != 2:
            raise ValueError(f"data.num_classes={num_classes} but data=dsb2018 has 2 classes")
        if self.ignore_index in (0, 1):
            raise ValueError(
                f"data.ignore_index={self.ignore_index} collides with the classes 0 and 1"
            )
        if not 0 <= val_fraction < 1:
            raise ValueError(f"data.val_fraction={val_fraction}: expected 0 <= val_fraction < 1")
        if crop_size is not None and crop_size < 1:
            raise ValueError(f"data.crop_size={crop_size}: expected a positive tile side")
        self.folder = Path(data_dir).expanduser() / train_folder
        self.crop_size = crop_size
        self.cache_masks = cache_masks
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.weight_map = weight_map
        self.w0, self.sigma, self.w_c = w0, sigma, w_c
        self._split: dict[str, list[str]] | None = None

    def split_ids(self) -> dict[str, list[str]]:
        """The sorted ids of ``train`` and ``val`` (listed on first use)."""
        if self._split is None:
            ids = list_dsb2018_ids(self.folder)
            self._split = split_dsb2018_ids(
                ids, val_fraction=self.val_fraction, seed=self.split_seed
            )
        return self._split

    def build_dataset(self, split: str) -> Dataset:
        if self.task == "instance":
            return DSB2018InstanceDataset(
                self.folder,
                self.split_ids()[split],
                cache_masks=self.cache_masks,
                num_classes=self.num_classes,
                transform=self.train_transforms if split == "train" else self.eval_transforms,
            )
        return DSB2018SemanticDataset(
            self.folder,
            self.split_ids()[split],
            cache_masks=self.cache_masks,
            weight_map=self.weight_map,
            w0=self.w0,
            sigma=self.sigma,
            w_c=self.w_c,
            **self.dataset_kwargs(split),
        )
