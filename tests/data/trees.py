"""Tiny trees in each dataset's official on-disk layout, written by the tests.

Each writer fills ``root`` and returns a ``Tree``: the ``data=`` option, the overrides that point
it at ``root``, the split sizes, the expected mask of the first val sample and one label file
(``None`` where labels are not class-index files).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "instance"))
from coco_tree import write_edge_case_tree

H, W = 24, 32


@dataclass
class Tree:
    data: str
    overrides: list[str]
    sizes: dict[str, int]
    val_mask: np.ndarray  # int64 (H, W), ignore as 255 (11 for CamVid)
    label_file: Path | None = None
    bad_value: int = 0
    extra: dict = field(default_factory=dict)


def _rgb(seed: int, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _raw(seed: int, high: int, first: list[int]) -> np.ndarray:
    """(H, W) uint8 raw label values below ``high`` starting with ``first``."""
    raw = np.random.default_rng(seed).integers(0, high, (H, W), dtype=np.uint8)
    raw.flat[: len(first)] = first
    return raw


def camvid(root: Path) -> Tree:
    masks = {}
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        lines = []
        for i in range(n):
            _save(root / split / f"{split}{i}.png", _rgb(i))
            masks[split, i] = _raw(i, 12, list(range(12)))
            _save(root / f"{split}annot" / f"{split}{i}.png", masks[split, i])
            lines.append(
                f"/SegNet/CamVid/{split}/{split}{i}.png /SegNet/CamVid/{split}annot/{split}{i}.png"
            )
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    label = root / "trainannot" / "train1.png"
    return Tree("camvid", [], {"train": 3, "val": 2, "test": 1}, masks["val", 0], label, 12)


def voc(root: Path) -> Tree:
    base = root / "VOCdevkit" / "VOC2012"
    palette = [v for i in range(256) for v in (i, 255 - i, i // 2)]
    masks = {}
    for i, image_id in enumerate(("a", "b", "c", "d")):
        _save(base / "JPEGImages" / f"{image_id}.jpg", _rgb(i))
        masks[image_id] = _raw(i, 21, list(range(21)))
        masks[image_id][1, :3] = 255
        png = Image.fromarray(masks[image_id], "L").convert("P")
        png.putpalette(palette)
        png.save(_save(base / "SegmentationClass" / f"{image_id}.png", masks[image_id]))
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("a\nb\nc\n")
    (lists / "val.txt").write_text("d\n")
    label = base / "SegmentationClass" / "b.png"
    return Tree("voc", ["data.crop_size=16"], {"train": 3, "val": 1}, masks["d"], label, 21)


# cityscapesScripts' labels.py: label id -> trainId of the 19 evaluated classes
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
             25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip


def cityscapes_train_ids(ids: np.ndarray) -> np.ndarray:
    out = np.full(ids.shape, 255, np.int64)
    for label_id, train_id in TRAIN_IDS.items():
        out[ids == label_id] = train_id
    return out


def cityscapes(root: Path) -> Tree:
    ids = {}
    for k, (split, city) in enumerate((("train", "aachen"), ("train", "aachen"),
                                       ("train", "bochum"), ("val", "lindau"))):  # fmt: skip
        stem = f"{city}_{k:06d}_000019"
        _save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _rgb(k))
        ids[split, k] = _raw(k, 34, list(range(34)))
        gt = root / "gtFine" / split / city
        _save(gt / f"{stem}_gtFine_labelIds.png", ids[split, k])
        _save(
            gt / f"{stem}_gtFine_labelTrainIds.png",
            cityscapes_train_ids(ids[split, k]).astype(np.uint8),
        )
        _save(gt / f"{stem}_gtFine_color.png", _rgb(k))  # not read
    label = root / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png"
    expected = cityscapes_train_ids(ids["val", 3])
    return Tree("cityscapes", ["data.crop_size=16"], {"train": 3, "val": 1}, expected, label, 34)


def ade20k(root: Path) -> Tree:
    release = root / "ADEChallengeData2016"
    anns = {}
    for k, (folder, prefix) in enumerate((("training", "ADE_train"), ("training", "ADE_train"),
                                          ("validation", "ADE_val"))):  # fmt: skip
        stem = f"{prefix}_{k:08d}"
        image = _rgb(k)[..., 0] if k == 1 else _rgb(k)  # a greyscale JPEG, read as RGB
        _save(release / "images" / folder / f"{stem}.jpg", image)
        anns[k] = _raw(k, 151, [0, 1, 75, 150])
        _save(release / "annotations" / folder / f"{stem}.png", anns[k])
    expected = np.where(anns[2] == 0, 255, anns[2].astype(np.int64) - 1)
    label = release / "annotations/training/ADE_train_00000001.png"
    return Tree("ade20k", ["data.crop_size=16"], {"train": 2, "val": 1}, expected, label, 151)


def _isbi_stack(n: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.random.default_rng(0).integers(0, 256, (n, H, W), dtype=np.uint8)
    labels = np.full((n, H, W), 255, np.uint8)
    labels[:, ::8] = 0
    labels[:, :, ::8] = 0
    return images, labels


def isbi_png(root: Path) -> Tree:
    images, labels = _isbi_stack(4)
    for i in range(4):
        _save(root / "train/image" / f"{i}.png", images[i])
        _save(root / "train/label" / f"{i}.png", labels[i])
        _save(root / "test" / f"{i}.png", images[i])
    _save(root / "test" / "0_predict.png", labels[0])  # not a slice
    overrides = ["data.val_slices=[3]", "data.test_slices=[2]", "data.crop_size=16"]
    sizes = {"train": 2, "val": 1, "test": 1, "challenge": 4}
    return Tree("isbi2012", overrides, sizes, labels[3] // 255)


def isbi_tif(root: Path) -> Tree:
    images, labels = _isbi_stack(4)
    root.mkdir(parents=True, exist_ok=True)
    for name, stack in (
        ("train-volume", images),
        ("train-labels", labels),
        ("test-volume", images[:2]),
    ):
        pages = [Image.fromarray(s) for s in stack]
        pages[0].save(root / f"{name}.tif", save_all=True, append_images=pages[1:])
    overrides = ["data.val_slices=[3]", "data.test_slices=[2]", "data.crop_size=16"]
    sizes = {"train": 2, "val": 1, "test": 1, "challenge": 2}
    return Tree("isbi2012", overrides, sizes, labels[3] // 255)


def write_dsb_id(folder: Path, image_id: str, image: np.ndarray, masks: list[np.ndarray]) -> None:
    _save(folder / image_id / "images" / f"{image_id}.png", image)
    (folder / image_id / "masks").mkdir(exist_ok=True)
    for k, mask in enumerate(masks):
        _save(folder / image_id / "masks" / f"m{k:02d}.png", mask)


def dsb2018(root: Path) -> Tree:
    folder = root / "stage1_train"
    for k in range(4):
        a = np.zeros((H, W), np.uint8)
        a[2 + k : 8, 3:9] = 255
        b = np.zeros((H, W), np.uint8)
        b[10:20, 12 + k : 30] = 255
        write_dsb_id(folder, f"id{k}", _rgb(k), [a, b])
    overrides = ["data.val_fraction=0.25", "data.crop_size=16"]
    tree = Tree("dsb2018", overrides, {"train": 2, "val": 1, "test": 1}, np.zeros(0))
    # val is the seeded choice of split_dsb2018_ids: its mask is checked against the files
    tree.extra["folder"] = folder
    return tree


def coco(root: Path) -> Tree:
    write_edge_case_tree(root)
    files = "{images: images, annotations: annotations.json}"
    overrides = [
        "model=maskrcnn",
        f"data.split_files={{train: {files}, val: {files}}}",
        "data.class_names=null",
        "data.num_classes=3",
    ]
    return Tree("coco", overrides, {"train": 2, "val": 4}, np.zeros(0))


TREES = {
    "camvid": camvid,
    "voc": voc,
    "cityscapes": cityscapes,
    "ade20k": ade20k,
    "isbi_png": isbi_png,
    "isbi_tif": isbi_tif,
    "dsb2018": dsb2018,
    "coco": coco,
}
