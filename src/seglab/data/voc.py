"""PASCAL VOC 2012 semantic segmentation: background + 20 object classes, 255 = void.

Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 2010. The official
layout, found under ``data_dir`` itself, ``data_dir/VOC2012`` or ``data_dir/VOCdevkit/VOC2012``::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png               palette PNG: index = class, 255 = boundary / void
    ImageSets/Segmentation/{train,val}.txt   one id a line (1,464 and 1,449 ids)

and optionally the SBD-augmented training set (Hariharan et al., ICCV 2011) as DeepLab and
mmsegmentation arrange it::

    SegmentationClassAug/<id>.png            plain class-index PNG (mode L)
    ImageSets/Segmentation/train_aug.txt     10,582 ids (VOC train + SBD, VOC val left out)

Masks are read as their indices, never as colours; 255 becomes ``ignore_index`` and any other
value outside 0..20 raises a ``ValueError`` naming the file. The test split's labels are not
public, so only ``train`` and ``val`` exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from seglab.data.base import PairedSemanticDataset, SegmentationDataModule

__all__ = [
    "VOC_CLASSES",
    "VOCDataModule",
    "VOCDataset",
    "find_voc_root",
    "read_voc_ids",
    "read_voc_mask",
]

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
VOID = 255
HOW_TO_GET = (
    "get VOCtrainval_11-May-2012.tar from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ and "
    "unpack it under data.data_dir (or $SEGLAB_DATA_DIR) so that VOCdevkit/VOC2012/JPEGImages "
    "exists; for data.augmented=true also put SBD's SegmentationClassAug/ and "
    "ImageSets/Segmentation/train_aug.txt into VOC2012/ (as for DeepLab or mmsegmentation)"
)
_LIST_DIR = Path("ImageSets", "Segmentation")


def find_voc_root(data_dir: str | Path) -> Path:
    """The VOC2012 folder: the first of ``data_dir``, ``data_dir/VOC2012`` and
    ``data_dir/VOCdevkit/VOC2012`` that holds ``JPEGImages/`` and ``SegmentationClass/``.

    Raises:
        FileNotFoundError: none does (naming the three folders looked in and how to get them).
    """
    base = Path(data_dir).expanduser()
    candidates = (base, base / "VOC2012", base / "VOCdevkit" / "VOC2012")
    for root in candidates:
        if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
            return root
    raise FileNotFoundError(
        "data=voc: found no JPEGImages/ and SegmentationClass/ in "
        f"{', '.join(str(c) for c in candidates)}; {HOW_TO_GET}"
    )


def read_voc_ids(list_file: str | Path) -> list[str]:
    """The image ids of an ImageSets list: one a line, either ``<id>`` or DeepLab's
    ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`` (the first path's stem).

    Raises:
        FileNotFoundError: naming the list file when it is missing.
        ValueError: the list holds no id.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"data=voc: list file {list_file} not found; {HOW_TO_GET}")
    ids = [
        Path(line.split()[0]).stem for line in list_file.read_text().splitlines() if line.strip()
    ]
    if not ids:
        raise ValueError(f"data=voc: list file {list_file} lists no image id")
    return ids


def read_voc_mask(path: str | Path, ignore_index: int) -> np.ndarray:
    """Class indices (H, W) of a VOC mask PNG (palette or grey: the stored indices, not the
    colours), 255 (void) -> ``ignore_index``; uint8, or int32 when ``ignore_index`` exceeds 255.

    Raises:
        ValueError: naming the file when it is a colour image or cannot be read.
    """
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise ValueError(
                    f"VOC mask {path} has Pillow mode {img.mode!r}; expected a palette (P) or "
                    "grey (L) PNG of class indices (a colour rendering cannot be read as labels)"
                )
            raw = np.array(img, dtype=np.uint8)
    except OSError as err:
        raise ValueError(f"VOC mask {path} could not be read ({err})") from err
    if ignore_index == VOID:
        return raw
    mask = raw.astype(np.uint8 if ignore_index <= 255 else np.int32)
    mask[raw == VOID] = ignore_index
    return mask


class VOCDataset(PairedSemanticDataset):
    """Semantic view of VOC ids: ``image`` uint8 (H, W, 3), ``mask`` (H, W) with 0..20 and
    ``ignore_index``, ``name`` the JPEG.

    Args:
        image_dir: the ``JPEGImages`` folder.
        mask_dir: the ``SegmentationClass`` (or ``SegmentationClassAug``) folder.
        ids: the image ids of this split.
        **kwargs: ``SemanticDataset``'s arguments.
    """

    def __init__(
        self, image_dir: str | Path, mask_dir: str | Path, ids: Sequence[str], **kwargs: Any
    ) -> None:
        self.image_dir, self.mask_dir = Path(image_dir), Path(mask_dir)
        self.ids = list(ids)
        pairs = [(self.image_dir / f"{i}.jpg", self.mask_dir / f"{i}.png") for i in self.ids]
        super().__init__(pairs, read_voc_mask, dataset="VOC", **kwargs)


class VOCDataModule(SegmentationDataModule):
    """``data=voc``: PASCAL VOC 2012 segmentation, 21 classes, RGB input, semantic view only.

    Splits: ``train`` (``train.txt``, or with ``augmented`` SBD's ``train_aug.txt`` with masks
    from ``SegmentationClassAug``) and ``val`` (``val.txt``, masks from ``SegmentationClass``).
    Asking for ``test`` raises: its labels are only on the evaluation server. Every listed id
    must have its JPEG and mask.

    Args:
        data_dir: the folder holding ``VOCdevkit``, or ``VOC2012`` itself (see ``find_voc_root``).
        augmented: train on SBD's augmented set.
        train_list, val_list, aug_list: list files in ``ImageSets/Segmentation``.
        aug_mask_folder: the SBD masks' folder, relative to the VOC2012 folder (or absolute).
        crop_size: side of the square train crops, read by the yaml's train pipeline.
        **kwargs: ``SegmentationDataModule``'s arguments.
    """

    splits = ("train", "val")

    def __init__(
        self,
        *,
        data_dir: str,
        augmented: bool = False,
        train_list: str = "train.txt",
        val_list: str = "val.txt",
        aug_list: str = "train_aug.txt",
        aug_mask_folder: str = "SegmentationClassAug",
        crop_size: int | None = None,
        num_classes: int = 21,
        in_channels: int = 3,
        class_names: Sequence[str] | None = VOC_CLASSES,
        ignore_index: int = 255,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        **kwargs: Any,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            class_names=class_names,
            ignore_index=ignore_index,
            mean=mean,
            std=std,
            data_dir=data_dir,
            **kwargs,
        )
        self.check_fixed_view("voc", 21, crop_size)
        self.augmented = augmented
        self.crop_size = crop_size
        self.lists = {"train": aug_list if augmented else train_list, "val": val_list}
        self.aug_mask_folder = aug_mask_folder
        self._root: Path | None = None

    @property
    def root(self) -> Path:
        """The VOC2012 folder (looked up on first use)."""
        if self._root is None:
            self._root = find_voc_root(self.data_dir or "")
        return self._root

    def dataset(self, split: str) -> Dataset:
        if split == "test":
            raise ValueError(
                "data=voc: split 'test' has no public labels (VOC 2012 test is scored on the "
                "evaluation server only); evaluate on split=val"
            )
        return super().dataset(split)

    def build_dataset(self, split: str) -> VOCDataset:
        root = self.root
        list_file = root / _LIST_DIR / self.lists[split]
        mask_dir = root / (
            self.aug_mask_folder if self.augmented and split == "train" else "SegmentationClass"
        )
        if not mask_dir.is_dir():
            raise FileNotFoundError(f"data=voc: mask folder {mask_dir} not found; {HOW_TO_GET}")
        ids = read_voc_ids(list_file)
        image_dir = root / "JPEGImages"
        for image_id in ids:
            for path in (image_dir / f"{image_id}.jpg", mask_dir / f"{image_id}.png"):
                if not path.is_file():
                    raise FileNotFoundError(
                        f"data=voc: {list_file} lists '{image_id}' but {path} is missing; "
                        f"{HOW_TO_GET}"
                    )
        return VOCDataset(image_dir, mask_dir, ids, **self.dataset_kwargs(split))
