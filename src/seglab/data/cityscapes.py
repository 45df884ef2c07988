"""Cityscapes fine annotations: the 19 evaluation classes (trainIds), semantic and panoptic views.

Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding", CVPR 2016.
Layout under ``data_dir`` (``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``
unpacked side by side)::

    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png      RGB 2048x1024
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png        ids 0..33
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   optional

``label_type: labelIds`` (default, needs no preprocessing) maps the label ids to the trainIds of
cityscapesScripts' ``helpers/labels.py``: the 19 evaluated classes become 0..18, every other id (void,
parking, rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer) is ignored.
``label_type: trainIds`` reads the ``*_labelTrainIds.png`` files that cityscapesScripts'
``createTrainIdLabelImgs.py`` writes (255 = void).

The panoptic view reads Cityscapes' own panoptic files, as cityscapesScripts'
``createPanopticImgs.py`` writes them (COCO panoptic format, category ids = label ids, or
trainIds with ``label_type: trainIds`` and ``--use-train-id``); classes: void, the 8 things, the
11 stuff classes, each in id order::

    gtFine/cityscapes_panoptic_{train,val}[_trainId].json
    gtFine/cityscapes_panoptic_{train,val}[_trainId]/<city>_<seq>_<frame>_gtFine_panoptic.png
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS

from seglab.data.base import IGNORE, DatasetInfo, SegmentationDataModule
from seglab.data.coco_panoptic import PanopticCategories, PanopticImages, read_panoptic_json

__all__ = [
    "CITYSCAPES",
    "CityscapesDataModule",
    "CityscapesPanopticImages",
    "labelids_to_trainids",
    "trainids_to_labelids",
]

HOW_TO_TRAINIDS = (
    "make them with cityscapesScripts (pip install cityscapesscripts; "
    "CITYSCAPES_DATASET=<data_dir> csCreateTrainIdLabelImgs) or set data.label_type=labelIds"
)
HOW_TO_PANOPTIC = (
    "make them with cityscapesScripts (pip install cityscapesscripts; "
    "CITYSCAPES_DATASET=<data_dir> csCreatePanopticImgs, with --use-train-id for "
    "data.label_type=trainIds)"
)
LABEL_SUFFIX = {"labelIds": "_gtFine_labelIds.png", "trainIds": "_gtFine_labelTrainIds.png"}
IMAGE_SUFFIX = "_leftImg8bit.png"
# the 19 evaluated classes in trainId order; void (255) and license plate (-1) are left out
EVALUATED = sorted(
    (lab for lab in CITYSCAPES_LABELS if 0 <= lab.trainId < 255), key=lambda lab: lab.trainId
)
TRAIN_IDS = {lab.id: lab.trainId for lab in EVALUATED}
# the panoptic classes 1..19: createPanopticImgs.py's categories, things then stuff, each by id
PANOPTIC = sorted(EVALUATED, key=lambda lab: (not lab.hasInstances, lab.id))
CITYSCAPES = DatasetInfo(
    name="cityscapes",
    views={
        "semantic": tuple(lab.name for lab in EVALUATED),
        "panoptic": ("void", *(lab.name for lab in PANOPTIC)),
    },
    things=sum(lab.hasInstances for lab in PANOPTIC),
    how_to_get=(
        "register at https://www.cityscapes-dataset.com, download leftImg8bit_trainvaltest.zip "
        "and gtFine_trainvaltest.zip and unzip both into data.data_dir (or cityscapes/ under "
        "$SEGLAB_DATA_DIR), so that leftImg8bit/ and gtFine/ sit side by side"
    ),
    splits=("train", "val"),
    unscored={
        "test": "the public gtFine/test labels are void everywhere (the real ones stay on the "
        "benchmark server). Score on split=val; for a server submission predict "
        "leftImg8bit/test/<city> and map the trainIds back with trainids_to_labelids"
    },
    labels={i: TRAIN_IDS.get(i, IGNORE) for i in range(34)},
    palette=tuple(lab.color for lab in EVALUATED),
)


def labelids_to_trainids(label_ids: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Map Cityscapes label ids (any integer array) to trainIds 0..18; any other id, negative
    ones (license plate, -1) included, becomes ``ignore_index``. Same shape; uint8 when
    ``ignore_index`` fits in a byte, else int32."""
    ids = np.asarray(label_ids)
    lut = np.full(256, ignore_index, np.uint8 if 0 <= ignore_index <= 255 else np.int32)
    lut[list(TRAIN_IDS)] = list(TRAIN_IDS.values())
    return np.where(
        (ids >= 0) & (ids < 256), lut[np.clip(ids, 0, 255)], lut.dtype.type(ignore_index)
    )


def trainids_to_labelids(train_ids: np.ndarray) -> np.ndarray:
    """Map trainIds 0..18 back to the label ids the benchmark server scores (uint8, same shape);
    any other value becomes 0 (unlabeled)."""
    train_ids = np.asarray(train_ids)
    lut = np.zeros(256, np.uint8)
    lut[list(TRAIN_IDS.values())] = list(TRAIN_IDS)
    return np.where((train_ids >= 0) & (train_ids < 256), lut[np.clip(train_ids, 0, 255)], 0)


class CityscapesDataModule(SegmentationDataModule):
    """``data=cityscapes``: Cityscapes gtFine, 19 trainId classes, RGB input; semantic view, or
    panoptic view (void + 8 things + 11 stuff) from the files of ``createPanopticImgs.py``.

    Splits: ``train`` (2975 images) and ``val`` (500) as released; ``test`` (1525 images) has
    no labels to score (its images go to the benchmark server: predict them).

    Args:
        data_dir: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        label_type: ``labelIds`` (map the ids on the fly) or ``trainIds`` (read the files made
            by ``createTrainIdLabelImgs.py``; panoptic: by ``createPanopticImgs.py
            --use-train-id``).
        **kwargs: ``SegmentationDataModule``'s arguments.
    """

    info = CITYSCAPES

    def __init__(self, *, label_type: str = "labelIds", **kwargs: Any) -> None:
        if label_type not in LABEL_SUFFIX:
            raise ValueError(
                f"data.label_type={label_type!r}: expected one of {list(LABEL_SUFFIX)}"
            )
        self.label_type = label_type
        if kwargs.get("task") == "panoptic":  # the declared colours are the semantic view's
            kwargs["palette"] = kwargs.get("palette") or [
                (0, 0, 0),
                *(lab.color for lab in PANOPTIC),
            ]
        super().__init__(**kwargs)

    def panoptic_categories(self) -> tuple[int, list[int], str]:
        train_ids = self.label_type == "trainIds"
        ids = [lab.trainId if train_ids else lab.id for lab in PANOPTIC]
        return self.info.things, ids, "cityscapesScripts' labels.py"  # type: ignore[return-value]

    def source(self, split: str) -> Any:
        """The split's pairs (semantic view) or its panoptic JSON, PNGs and images."""
        if self.task != "panoptic":
            return super().source(split)
        name = f"cityscapes_panoptic_{split}{'_trainId' if self.label_type == 'trainIds' else ''}"
        gt = self.require_dir(self.root / "gtFine")
        path = gt / f"{name}.json"
        data = read_panoptic_json(path, self.info.name, HOW_TO_PANOPTIC)
        categories = PanopticCategories(data["categories"], source=str(path))
        expected = (self.info.things, self.check_panoptic())
        if (categories.num_things, categories.category_ids) != expected:
            raise ValueError(
                f"data=cityscapes: {path} has the categories {categories.category_ids} "
                f"({categories.num_things} things); expected those of cityscapesScripts' "
                f"labels.py for data.label_type={self.label_type}: {expected[1]} ({expected[0]})"
            )
        return CityscapesPanopticImages(
            data,
            source=path,
            image_dir=self.require_dir(self.root / "leftImg8bit" / split),
            png_dir=self.require_dir(gt / name, "panoptic PNG folder"),
            categories=categories,
            dataset=self.info.name,
        )

    def label_values(self) -> dict[int, int]:
        if self.label_type == "trainIds":
            return {**{k: k for k in range(19)}, 255: IGNORE}
        return dict(self.info.labels or {})

    def pairs(self, split: str) -> list[tuple[Path, Path]]:
        """Sorted ``(image, label)`` pairs of ``split``, paired by file name."""
        images = self.require_dir(self.root / "leftImg8bit" / split)
        labels = self.require_dir(self.root / "gtFine" / split)
        found = sorted(images.glob(f"*/*{IMAGE_SUFFIX}"))
        if not found:
            raise self.not_found(f"no <city>/*{IMAGE_SUFFIX} in {images}")
        suffix = LABEL_SUFFIX[self.label_type]
        how = HOW_TO_TRAINIDS if self.label_type == "trainIds" else None
        return self.match_pairs(
            found,
            lambda image: labels / image.parent.name / (image.name[: -len(IMAGE_SUFFIX)] + suffix),
            how=how,
        )


class CityscapesPanopticImages(PanopticImages):
    """``PanopticImages`` with the images in ``leftImg8bit/<split>/<city>/``, found by image id
    (``<city>_<seq>_<frame>``): the JSON's ``file_name`` says ``*_gtFine_leftImg8bit.png``,
    a name no image has."""

    def image_path(self, image: Mapping[str, Any]) -> Path:
        city = str(image["id"]).split("_")[0]
        return self.image_dir / city / f"{image['id']}{IMAGE_SUFFIX}"
