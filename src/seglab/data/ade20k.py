"""ADE20K SceneParsing (ADEChallengeData2016), semantic view: the 150 benchmark classes.

Zhou et al., "Scene Parsing through ADE20K Dataset", CVPR 2017. Layout of the release
(``ADEChallengeData2016.zip``)::

    ADEChallengeData2016/images/training/ADE_train_00000001.jpg ...      20210 images
    ADEChallengeData2016/images/validation/ADE_val_00000001.jpg ...      2000 images
    ADEChallengeData2016/annotations/{training,validation}/<same stem>.png   values 0..150

Annotation 0 is "other / unlabelled" and 1..150 the classes of ``objectInfo150``. As in PSPNet and
mmsegmentation (``reduce_zero_label=True``), 0 becomes ``ignore_index`` and 1..150 become
0..149. Some images are greyscale (or CMYK) JPEGs: every image is converted to RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from seglab.data.base import PairedSemanticDataset, SegmentationDataModule

__all__ = [
    "ADE20K_CLASSES",
    "ADE20K_PALETTE",
    "ADE20KDataModule",
    "ADE20KDataset",
    "find_ade20k_root",
    "list_ade20k",
    "read_ade20k_label",
]

HOW_TO_GET = (
    "download ADEChallengeData2016.zip of the MIT Scene Parsing benchmark "
    "(http://sceneparsing.csail.mit.edu, "
    "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip) and unzip it into "
    "data.data_dir (or ade20k/ under $SEGLAB_DATA_DIR)"
)
RELEASE = "ADEChallengeData2016"
SPLIT_FOLDERS = {"train": "training", "val": "validation"}

# The first name of each row of objectInfo150, in index order (annotation value k -> class k-1).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van",
    "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light",
    "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower",
    "radiator", "glass", "clock", "flag",
)  # fmt: skip

# mmsegmentation's ADE20K palette (mmseg/datasets/ade.py), one colour per class above.
ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)  # fmt: skip
NUM_CLASSES = len(ADE20K_CLASSES)  # 150


def find_ade20k_root(data_dir: str | Path) -> Path:
    """The ``ADEChallengeData2016`` folder: ``data_dir`` itself when it holds ``images/`` and
    ``annotations/``, else ``data_dir/ADEChallengeData2016``.

    Raises:
        FileNotFoundError: naming the folders looked for and how to get the data.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data=ade20k: data_dir {root} does not exist; {HOW_TO_GET}")
    for candidate in (root, root / RELEASE):
        if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
            return candidate
    raise FileNotFoundError(
        f"data=ade20k: found neither {root / RELEASE}/images and annotations nor "
        f"{root}/images and annotations; {HOW_TO_GET}"
    )


def list_ade20k(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """Sorted ``(image, annotation)`` pairs of ``split`` (``train`` or ``val``) under the
    ``ADEChallengeData2016`` folder ``root``, paired by file stem.

    Raises:
        FileNotFoundError: a split folder is missing or holds no ``.jpg``, or an image has no
            annotation (naming the file).
    """
    root = Path(root)
    folder = SPLIT_FOLDERS[split]
    image_dir, label_dir = root / "images" / folder, root / "annotations" / folder
    for path in (image_dir, label_dir):
        if not path.is_dir():
            raise FileNotFoundError(f"data=ade20k: folder {path} not found; {HOW_TO_GET}")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() == ".jpg")
    if not images:
        raise FileNotFoundError(f"data=ade20k: no .jpg image in {image_dir}; {HOW_TO_GET}")
    pairs = []
    for image in images:
        label = label_dir / f"{image.stem}.png"
        if not label.is_file():
            raise FileNotFoundError(
                f"data=ade20k: annotation {label} of image {image} not found; {HOW_TO_GET}"
            )
        pairs.append((image, label))
    return pairs


def read_ade20k_label(path: str | Path, ignore_index: int = 255) -> np.ndarray:
    """Class mask (H, W) of an annotation PNG: 0 -> ``ignore_index``, 1..150 -> 0..149 (uint8
    when ``ignore_index`` fits in a byte, else int32).

    Raises:
        ValueError: naming the file when it is not single-channel or holds a value above 150.
    """
    try:
        with Image.open(path) as img:
            if len(img.getbands()) != 1:
                raise ValueError(
                    f"ADE20K annotation {path} is a {img.mode} image; expected single-channel "
                    "class indices 0..150"
                )
            raw = np.array(img)
    except OSError as err:
        raise ValueError(f"ADE20K annotation {path} could not be read ({err})") from err
    bad = (raw < 0) | (raw > NUM_CLASSES)
    if bad.any():
        values = sorted(int(v) for v in np.unique(raw[bad])[:10])
        raise ValueError(
            f"ADE20K annotation {path} holds value(s) {values}; expected 0 (other) to {NUM_CLASSES}"
        )
    lut = np.full(NUM_CLASSES + 1, ignore_index, np.uint8 if ignore_index <= 255 else np.int32)
    lut[1:] = np.arange(NUM_CLASSES)
    return lut[raw]


class ADE20KDataset(PairedSemanticDataset):
    """Semantic view of ADE20K pairs: ``image`` uint8 RGB (H, W, 3), ``mask`` (H, W) with classes
    0..149 and ``ignore_index`` for "other", ``name`` the image file.

    Args:
        pairs: ``(image, annotation)`` paths, as ``list_ade20k`` returns them.
        **kwargs: ``SemanticDataset``'s arguments.
    """

    def __init__(self, pairs: Sequence[tuple[Path, Path]], **kwargs: Any) -> None:
        super().__init__(pairs, read_ade20k_label, dataset="ADE20K", **kwargs)


class ADE20KDataModule(SegmentationDataModule):
    """``data=ade20k``: ADE20K SceneParsing, 150 classes, RGB input, semantic view only.

    Splits: ``train`` (``training``, 20210 images) and ``val`` (``validation``, 2000). ``test``
    raises a ``ValueError``: this release has no test labels (the test images of
    ``release_test.zip`` are scored by the benchmark server). Images vary in size: the train
    pipeline crops to one size and evaluation takes whole images, one per batch.

    Args:
        data_dir: the folder holding ``ADEChallengeData2016``, or that folder itself.
        crop_size: side of the square train crops, read by the yaml's train pipeline; None: not
            set.
        palette: one RGB triple per class; None: mmsegmentation's ADE20K palette.
        **kwargs: ``SegmentationDataModule``'s arguments.
    """

    def __init__(
        self,
        *,
        data_dir: str,
        crop_size: int | None = None,
        num_classes: int = NUM_CLASSES,
        in_channels: int = 3,
        class_names: Sequence[str] | None = ADE20K_CLASSES,
        palette: Sequence[Sequence[int]] | None = ADE20K_PALETTE,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        **kwargs: Any,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            class_names=class_names,
            palette=ADE20K_PALETTE if palette is None else palette,
            mean=mean,
            std=std,
            data_dir=data_dir,
            **kwargs,
        )
        self.check_fixed_view("ade20k", NUM_CLASSES, crop_size)
        self.crop_size = crop_size
        self._root: Path | None = None

    @property
    def root(self) -> Path:
        """The ``ADEChallengeData2016`` folder (looked up on first use)."""
        if self._root is None:
            self._root = find_ade20k_root(self.data_dir or "")
        return self._root

    def build_dataset(self, split: str) -> ADE20KDataset:
        if split == "test":
            raise ValueError(
                "data=ade20k: split 'test' has no labels in ADEChallengeData2016 (the test "
                "images of release_test.zip are scored by the benchmark server). Score on "
                "split=val; predict test images with src/predict.py"
            )
        return ADE20KDataset(list_ade20k(self.root, split), **self.dataset_kwargs(split))
