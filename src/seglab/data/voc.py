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

Masks are read as their indices, never as colours; 255 becomes ``ignore_index``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seglab.data.base import IGNORE, DatasetInfo, SegmentationDataModule

__all__ = ["VOC", "VOCDataModule"]

CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
           "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
           "sheep", "sofa", "train", "tvmonitor")  # fmt: skip
VOC = DatasetInfo(
    name="voc",
    views={"semantic": CLASSES},
    how_to_get=(
        "get VOCtrainval_11-May-2012.tar from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ "
        "and unpack it under data.data_dir (or $SEGLAB_DATA_DIR) so that "
        "VOCdevkit/VOC2012/JPEGImages exists; for data.augmented=true also put SBD's "
        "SegmentationClassAug/ and ImageSets/Segmentation/train_aug.txt into VOC2012/ (as for "
        "DeepLab or mmsegmentation)"
    ),
    splits=("train", "val"),
    unscored={"test": "VOC 2012 test is scored on the evaluation server only; use split=val"},
    labels={**{k: k for k in range(21)}, 255: IGNORE},
)


class VOCDataModule(SegmentationDataModule):
    """``data=voc``: PASCAL VOC 2012 segmentation, 21 classes, RGB input, semantic view only.

    Splits: ``train`` (``train.txt``, or with ``augmented`` SBD's ``train_aug.txt`` with masks
    from ``SegmentationClassAug``) and ``val`` (``val.txt``, masks from ``SegmentationClass``).
    Every listed id must have its JPEG and mask. A list line is ``<id>`` or DeepLab's
    ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`` (the first path's stem).

    Args:
        data_dir: the folder holding ``VOCdevkit``, or ``VOC2012`` itself.
        augmented: train on SBD's augmented set.
        train_list, val_list, aug_list: list files in ``ImageSets/Segmentation``.
        aug_mask_folder: the SBD masks' folder, relative to the VOC2012 folder (or absolute).
        **kwargs: ``SegmentationDataModule``'s arguments.
    """

    info = VOC

    def __init__(
        self,
        *,
        augmented: bool = False,
        train_list: str = "train.txt",
        val_list: str = "val.txt",
        aug_list: str = "train_aug.txt",
        aug_mask_folder: str = "SegmentationClassAug",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.augmented = augmented
        self.lists = {"train": aug_list if augmented else train_list, "val": val_list}
        self.aug_mask_folder = aug_mask_folder

    @property
    def voc_root(self) -> Path:
        """The first of ``data_dir``, ``data_dir/VOC2012`` and ``data_dir/VOCdevkit/VOC2012``
        that holds ``JPEGImages/`` and ``SegmentationClass/``."""
        base = Path(self.data_dir or "").expanduser()
        candidates = (base, base / "VOC2012", base / "VOCdevkit" / "VOC2012")
        for root in candidates:
            if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
                return root
        raise self.not_found(
            f"found no JPEGImages/ and SegmentationClass/ in {', '.join(map(str, candidates))}"
        )

    def pairs(self, split: str) -> list[tuple[Path, Path]]:
        root = self.voc_root
        list_file = root / "ImageSets" / "Segmentation" / self.lists[split]
        aug = self.augmented and split == "train"
        mask_dir = self.require_dir(root / (self.aug_mask_folder if aug else "SegmentationClass"))
        ids = [Path(fields[0]).stem for _, fields in self.read_list(list_file)]
        images = [root / "JPEGImages" / f"{i}.jpg" for i in ids]
        return self.match_pairs(images, lambda image: mask_dir / f"{image.stem}.png")
