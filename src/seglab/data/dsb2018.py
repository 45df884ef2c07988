"""2018 Data Science Bowl nuclei (BBBC038v1 ``stage1_train``): nucleus vs background.

Caicedo et al., "Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl",
Nature Methods 2019. Layout under ``data_dir``::

    stage1_train/<id>/images/<id>.png   RGBA, grey or colour light-microscopy image, varying size
    stage1_train/<id>/masks/<m>.png     one binary mask per nucleus, same size as the image

``DSB2018Images`` reads each id into an RGB image and an int32 instance-id map; the semantic view
(nucleus = 1, background = 0) and the instance view (one ``nucleus`` target per mask file) both
build on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from seglab.data.base import (
    DatasetInfo,
    SampleSource,
    SegmentationDataModule,
    open_image,
    read_image,
)

__all__ = ["DSB2018", "DSB2018DataModule", "DSB2018Images", "list_dsb2018_ids",
           "load_dsb2018_instances", "split_dsb2018_ids"]  # fmt: skip

HOW_TO_GET = (
    "get stage1_train of the 2018 Data Science Bowl (https://www.kaggle.com/c/"
    "data-science-bowl-2018/data, or the corrected copy github.com/lopuhin/"
    "kaggle-dsbowl-2018-dataset-fixes) and unpack it so that stage1_train/<id>/images/<id>.png "
    "exists under data.data_dir (or under dsb2018_nuclei/ in $SEGLAB_DATA_DIR)"
)
CLASSES = ("background", "nucleus")
DSB2018 = DatasetInfo(
    name="dsb2018",
    views={"semantic": CLASSES, "instance": CLASSES},
    how_to_get=HOW_TO_GET,
    splits=("train", "val", "test"),
    palette=((0, 0, 0), (255, 255, 255)),
    mean=(0.216, 0.210, 0.225),  # pixel-weighted over the 74-image sample
    std=(0.316, 0.310, 0.330),
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


def load_dsb2018_instances(
    folder: str | Path, image_id: str, shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Instance-id map (H, W) int32 of ``image_id``: 0 = background, 1..n = the non-empty masks
    in sorted file-name order (a pixel two masks claim keeps the first one's id). ``shape``: the
    image's (H, W), None to read it from the image's header.

    Raises:
        FileNotFoundError: the ``masks`` folder is missing.
        ValueError: a mask is not a single-channel image of the image's size (naming the file).
    """
    base = Path(folder) / image_id
    if shape is None:
        with open_image(base / "images" / f"{image_id}.png", "DSB 2018 image") as img:
            shape = (img.height, img.width)
    mask_dir = base / "masks"
    if not mask_dir.is_dir():
        raise FileNotFoundError(f"data=dsb2018: mask folder {mask_dir} not found; {HOW_TO_GET}")
    height, width = shape
    ids = np.zeros(shape, np.int32)
    n = 0
    for path in sorted(mask_dir.glob("*.png")):
        with open_image(path, f"DSB 2018 mask {path}") as img:
            if len(img.getbands()) != 1 or img.size != (width, height):
                raise ValueError(
                    f"DSB 2018 mask {path} is a {img.mode} image of {img.height}x{img.width}; "
                    f"expected a single-channel mask of the image's size {height}x{width}"
                )
            box = img.getbbox()  # of the non-zero pixels, None when there are none
            if box is None:
                continue
            crop = np.asarray(img.crop(box))
        n += 1
        x0, y0, x1, y1 = box
        region = ids[y0:y1, x0:x1]
        region[(crop != 0) & (region == 0)] = n
    return ids


def _held_out(fraction: float, n: int) -> int:
    """``round(fraction * n)``, at least 1 and at most n - 1 when ``fraction > 0`` and n >= 2."""
    count = round(fraction * n)
    return min(max(count, 1), n - 1) if fraction > 0 and n >= 2 else count


def split_dsb2018_ids(
    ids: Sequence[str], *, val_fraction: float, seed: int, test_fraction: float = 0.0
) -> dict[str, list[str]]:
    """Deterministic train / val / test split: the sorted ids shuffled with ``seed``; the first
    ``round(test_fraction * n)`` go to ``test``, the next ``round(val_fraction * n)`` to ``val``
    (each at least 1 when its fraction is > 0 and n >= 2), the rest to ``train``. ``test`` comes
    first so that it is the ``val`` of the same fraction and seed without a test split. Each split
    is returned sorted.

    Raises:
        ValueError: the held-out ids leave none to train on.
    """
    ordered, n = sorted(ids), len(ids)
    n_test, n_val = _held_out(test_fraction, n), _held_out(val_fraction, n)
    if n and n_test + n_val >= n:
        raise ValueError(
            f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} hold out "
            f"{n_val} + {n_test} of the {n} images, leaving none to train on"
        )
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(n)]
    return {
        "train": sorted(shuffled[n_test + n_val :]),
        "val": sorted(shuffled[n_test : n_test + n_val]),
        "test": sorted(shuffled[:n_test]),
    }


class DSB2018Images(SampleSource):
    """The DSB 2018 ``ids`` of the stage ``folder``: ``image`` uint8 (H, W, 3), ``name`` the image
    file, ``instances`` the int32 id map of ``load_dsb2018_instances`` (a pixel two mask files
    claim goes to the first), one ``nucleus`` (label 1) per id; so the semantic view is nucleus
    (1) vs background (0), its weight maps keep touching nuclei apart, and the instance view has
    one target per non-empty mask file. Each map is composed from the mask files on first
    request and, with ``cache_masks``, kept in memory (uint16 when the count fits; each loader
    worker keeps its own), so later epochs read only the image file."""

    def __init__(self, folder: str | Path, ids: Sequence[str], *, cache_masks: bool = True) -> None:
        self.folder = Path(folder)
        self.ids = list(ids)
        self.cache_masks = cache_masks
        self._maps: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def labels(self, index: int, shape: tuple[int, int] | None = None) -> dict[str, Any]:
        image_id = self.ids[index]
        if image_id in self._maps:
            ids = self._maps[image_id].astype(np.int32)
        else:
            ids = load_dsb2018_instances(self.folder, image_id, shape)
            if self.cache_masks:
                self._maps[image_id] = ids.astype(np.uint16) if ids.max() < 2**16 else ids
        name = str(self.folder / image_id / "images" / f"{image_id}.png")
        return {"instances": ids, "labels": np.ones(int(ids.max()), np.int64), "name": name}

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        image = read_image(self.folder / image_id / "images" / f"{image_id}.png", "DSB 2018")
        return {**self.labels(index, image.shape[:2]), "image": image}


class DSB2018DataModule(SegmentationDataModule):
    """``data=dsb2018``: DSB 2018 ``stage1_train`` nuclei, RGB input; semantic view
    (``task=semantic``: background / nucleus masks) or instance view (``task=instance``: one
    ``nucleus`` target per mask file).

    Splits: ``train``, ``val`` (which chooses the checkpoint) and ``test`` (which is reported)
    divide the labelled ids of ``data_dir/train_folder`` by ``split_dsb2018_ids`` (seeded shuffle,
    ``test_fraction``, ``val_fraction``); stage 1's own test masks are not in this layout. Images
    vary in size: the train pipeline crops to a fixed size and evaluation takes them whole, one
    per batch (``eval_batch_size: 1`` in the yaml).

    The fraction defaults here are those of configs saved before ``test_fraction`` existed (20%
    val, no test), so that their checkpoints evaluate on the images they were validated on;
    ``conf/data/dsb2018.yaml`` holds out 20% for test (the same images as that val) and 10% for
    val.

    Args:
        data_dir: the folder holding ``train_folder``.
        train_folder: the stage folder with the labelled ids.
        val_fraction, test_fraction, split_seed: the train / val / test split.
        cache_masks: keep each image's composed instance-id map in memory after its first read
            (the mask files are read once, not every epoch).
        **kwargs: ``SegmentationDataModule``'s arguments.
    """

    info = DSB2018

    def __init__(
        self,
        *,
        data_dir: str,
        train_folder: str = "stage1_train",
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        cache_masks: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir=data_dir, **kwargs)
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= value < 1:
                raise ValueError(f"data.{key}={value}: expected 0 <= {key} < 1")
        if val_fraction + test_fraction >= 1:
            raise ValueError(
                f"data.val_fraction={val_fraction} + data.test_fraction={test_fraction} >= 1: "
                "expected a sum below 1, leaving images to train on"
            )
        self.folder = Path(data_dir).expanduser() / train_folder
        self.cache_masks = cache_masks
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed

    @cached_property
    def split_ids(self) -> dict[str, list[str]]:
        """The sorted ids of ``train``, ``val`` and ``test`` (listed on first use)."""
        return split_dsb2018_ids(
            list_dsb2018_ids(self.folder),
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            seed=self.split_seed,
        )

    def source(self, split: str) -> DSB2018Images:
        if split == "test" and not self.split_ids["test"]:
            raise ValueError(
                f"data=dsb2018: split='test' holds no image (data.test_fraction="
                f"{self.test_fraction}, as in configs saved before the key existed); set "
                "data.test_fraction (conf/data/dsb2018.yaml: 0.2), or score split=val"
            )
        return DSB2018Images(self.folder, self.split_ids[split], cache_masks=self.cache_masks)
