"""Cityscapes fine annotations, semantic view: the 19 evaluation classes (trainIds).

Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding", CVPR 2016.
Layout under ``data_dir`` (``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``
unpacked side by side)::

    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png      RGB 2048x1024
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png        ids 0..33
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   optional

``label_type: labelIds`` (default, needs no preprocessing) maps the label ids to the trainIds of
cityscapesScripts' ``labels.py`` through a look-up table: the 19 evaluated classes become 0..18,
every other id (void, parking, rail track, guard rail, bridge, tunnel, polegroup, caravan,
trailer, license plate -1) becomes ``ignore_index``. ``label_type: trainIds`` reads the
``*_labelTrainIds.png`` files that cityscapesScripts' ``createTrainIdLabelImgs.py`` writes
(255 = void). The test split's public labels are void everywhere, so ``test`` refuses to load.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from seglab.data.base import PairedSemanticDataset, SegmentationDataModule

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_LABELS",
    "CITYSCAPES_PALETTE",
    "CityscapesDataModule",
    "CityscapesDataset",
    "CityscapesLabel",
    "labelids_to_trainids",
    "list_cityscapes",
    "read_cityscapes_label",
    "trainids_to_labelids",
]

HOW_TO_GET = (
    "register at https://www.cityscapes-dataset.com, download leftImg8bit_trainvaltest.zip and "
    "gtFine_trainvaltest.zip and unzip both into data.data_dir (or cityscapes/ under "
    "$SEGLAB_DATA_DIR), so that leftImg8bit/ and gtFine/ sit side by side"
)
HOW_TO_TRAINIDS = (
    "make them with cityscapesScripts (pip install cityscapesscripts; "
    "CITYSCAPES_DATASET=<data_dir> csCreateTrainIdLabelImgs) or set data.label_type=labelIds"
)
LABEL_TYPES = {"labelIds": "_gtFine_labelIds.png", "trainIds": "_gtFine_labelTrainIds.png"}
_IMAGE_SUFFIX = "_leftImg8bit.png"


class CityscapesLabel(NamedTuple):
    """One row of cityscapesScripts' ``labels.py`` (the columns used here)."""

    name: str
    id: int
    train_id: int
    color: tuple[int, int, int]


# cityscapesScripts/helpers/labels.py: name, id, trainId, color.
CITYSCAPES_LABELS = (
    CityscapesLabel("unlabeled", 0, 255, (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, (0, 0, 0)),
    CityscapesLabel("static", 4, 255, (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, (81, 0, 81)),
    CityscapesLabel("road", 7, 0, (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, (230, 150, 140)),
    CityscapesLabel("building", 11, 2, (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, (70, 130, 180)),
    CityscapesLabel("person", 24, 11, (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, (255, 0, 0)),
    CityscapesLabel("car", 26, 13, (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, (0, 0, 110)),
    CityscapesLabel("train", 31, 16, (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, (119, 11, 32)),
    CityscapesLabel("license plate", -1, -1, (0, 0, 142)),
)
_EVALUATED = sorted(
    (lab for lab in CITYSCAPES_LABELS if 0 <= lab.train_id < 255), key=lambda x: x.train_id
)
CITYSCAPES_CLASSES = tuple(lab.name for lab in _EVALUATED)
CITYSCAPES_PALETTE = tuple(lab.color for lab in _EVALUATED)
NUM_CLASSES = len(CITYSCAPES_CLASSES)  # 19


def _label_dtype(ignore_index: int) -> type[np.integer]:
    return np.uint8 if 0 <= ignore_index <= 255 else np.int32


def _trainid_lut(ignore_index: int) -> np.ndarray:
    """(256,) table: label id -> trainId, or ``ignore_index`` for every id not evaluated."""
    lut = np.full(256, ignore_index, _label_dtype(ignore_index))
    for lab in _EVALUATED:
        lut[lab.id] = lab.train_id
    return lut


def labelids_to_trainids(label_ids: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Map Cityscapes label ids (any integer array) to trainIds 0..18; any other id, negative
    ones (license plate, -1) included, becomes ``ignore_index``. Same shape; uint8 when
    ``ignore_index`` fits in a byte, else int32."""
    ids = np.asarray(label_ids)
    lut = _trainid_lut(ignore_index)
    if ids.dtype == np.uint8:
        return lut[ids]
    out = np.full(ids.shape, ignore_index, lut.dtype)
    inside = (ids >= 0) & (ids < 256)
    out[inside] = lut[ids[inside]]
    return out


def trainids_to_labelids(train_ids: np.ndarray) -> np.ndarray:
    """Map trainIds 0..18 back to the label ids the benchmark server scores (uint8, same shape);
    any other value becomes 0 (unlabeled)."""
    train_ids = np.asarray(train_ids)
    lut = np.zeros(256, np.uint8)
    for lab in _EVALUATED:
        lut[lab.train_id] = lab.id
    out = np.zeros(train_ids.shape, np.uint8)
    inside = (train_ids >= 0) & (train_ids < 256)
    out[inside] = lut[train_ids[inside]]
    return out


def read_cityscapes_label(
    path: str | Path, label_type: str = "labelIds", ignore_index: int = 255
) -> np.ndarray:
    """The trainId mask (H, W) of a ``*_gtFine_labelIds.png`` or ``*_gtFine_labelTrainIds.png``.

    Raises:
        ValueError: naming the file when it is not a single-channel image, or when a trainIds
            file holds a value other than 0..18 and 255.
    """
    if label_type not in LABEL_TYPES:
        raise ValueError(f"data.label_type={label_type!r}: expected one of {list(LABEL_TYPES)}")
    try:
        with Image.open(path) as img:
            if len(img.getbands()) != 1:
                raise ValueError(
                    f"Cityscapes label {path} is a {img.mode} image; expected a single-channel "
                    f"{label_type} image"
                )
            raw = np.array(img)
    except OSError as err:
        raise ValueError(f"Cityscapes label {path} could not be read ({err})") from err
    if label_type == "labelIds":
        return labelids_to_trainids(raw, ignore_index)
    bad = (raw < 0) | ((raw >= NUM_CLASSES) & (raw != 255))
    if bad.any():
        values = sorted(int(v) for v in np.unique(raw[bad])[:10])
        raise ValueError(
            f"Cityscapes trainIds label {path} holds value(s) {values}; expected 0..18 and "
            "255 (void)"
        )
    mask = raw.astype(_label_dtype(ignore_index))
    if ignore_index != 255:
        mask[raw == 255] = ignore_index
    return mask


def list_cityscapes(
    data_dir: str | Path, split: str, label_type: str = "labelIds"
) -> list[tuple[Path, Path]]:
    """Sorted ``(image, label)`` pairs of ``split``, paired by file name.

    Raises:
        FileNotFoundError: a split folder is missing or holds no image, or an image has no
            label file (naming what was looked for and how to get it).
    """
    if label_type not in LABEL_TYPES:
        raise ValueError(f"data.label_type={label_type!r}: expected one of {list(LABEL_TYPES)}")
    root = Path(data_dir).expanduser()
    image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"data=cityscapes: folder {folder} not found; {HOW_TO_GET}")
    images = sorted(image_dir.glob(f"*/*{_IMAGE_SUFFIX}"))
    if not images:
        raise FileNotFoundError(
            f"data=cityscapes: no <city>/*{_IMAGE_SUFFIX} in {image_dir}; {HOW_TO_GET}"
        )
    pairs = []
    for image in images:
        stem = image.name[: -len(_IMAGE_SUFFIX)]
        label = label_dir / image.parent.name / f"{stem}{LABEL_TYPES[label_type]}"
        if not label.is_file():
            how = HOW_TO_TRAINIDS if label_type == "trainIds" else HOW_TO_GET
            raise FileNotFoundError(
                f"data=cityscapes: label {label} of image {image} not found; {how}"
            )
        pairs.append((image, label))
    return pairs


class CityscapesDataset(PairedSemanticDataset):
    """Semantic view of Cityscapes pairs: ``image`` uint8 (H, W, 3), ``mask`` trainIds (H, W)
    with ``ignore_index`` for void, ``name`` the image file.

    Args:
        pairs: ``(image, label)`` paths, as ``list_cityscapes`` returns them.
        label_type: ``labelIds`` or ``trainIds``, the kind of the label files.
        **kwargs: ``SemanticDataset``'s arguments.
    """

    def __init__(
        self, pairs: Sequence[tuple[Path, Path]], *, label_type: str = "labelIds", **kwargs: Any
    ) -> None:
        super().__init__(
            pairs,
            functools.partial(read_cityscapes_label, label_type=label_type),
            dataset="Cityscapes",
            **kwargs,
        )
        self.label_type = label_type


class CityscapesDataModule(SegmentationDataModule):
    """``data=cityscapes``: Cityscapes gtFine, 19 trainId classes, RGB input, semantic view only.

    Splits: ``train`` (2975 images) and ``val`` (500) as released. ``test`` (1525 images) raises
    a ``ValueError``: its public labels are void everywhere, so any score on it would be
    meaningless; its images go to the benchmark server (predict them with ``src/predict.py``).

    Args:
        data_dir: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        label_type: ``labelIds`` (map the ids on the fly) or ``trainIds`` (read the files made
            by ``createTrainIdLabelImgs.py``).
        crop_size: side of the square train crops, read by the yaml's train pipeline; None: not
            set.
        palette: one RGB triple per class; None: the labels.py colours of the 19 classes.
        **kwargs: ``SegmentationDataModule``'s arguments.
    """

    def __init__(
        self,
        *,
        data_dir: str,
        label_type: str = "labelIds",
        crop_size: int | None = None,
        num_classes: int = NUM_CLASSES,
        in_channels: int = 3,
        class_names: Sequence[str] | None = CITYSCAPES_CLASSES,
        palette: Sequence[Sequence[int]] | None = CITYSCAPES_PALETTE,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        **kwargs: Any,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            class_names=class_names,
            palette=CITYSCAPES_PALETTE if palette is None else palette,
            mean=mean,
            std=std,
            data_dir=data_dir,
            **kwargs,
        )
        self.check_fixed_view("cityscapes", NUM_CLASSES, crop_size)
        if label_type not in LABEL_TYPES:
            raise ValueError(f"data.label_type={label_type!r}: expected one of {list(LABEL_TYPES)}")
        self.label_type = label_type
        self.crop_size = crop_size

    def build_dataset(self, split: str) -> CityscapesDataset:
        if split == "test":
            raise ValueError(
                "data=cityscapes: split 'test' cannot be scored: the public gtFine/test labels "
                "are void everywhere (the real ones stay on the benchmark server). Score on "
                "split=val; for a server submission predict leftImg8bit/test/<city> with "
                "src/predict.py and map the trainIds back with trainids_to_labelids"
            )
        pairs = list_cityscapes(self.data_dir or "", split, self.label_type)
        return CityscapesDataset(pairs, label_type=self.label_type, **self.dataset_kwargs(split))
