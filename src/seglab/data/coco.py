"""COCO-format instance annotations (Lin et al., "Microsoft COCO: Common Objects in Context",
ECCV 2014): an instances JSON and an image folder per split, read through pycocotools.

Official layout under ``data_dir`` (the defaults of ``conf/data/coco.yaml``)::

    annotations/instances_train2017.json   train2017/<file_name>
    annotations/instances_val2017.json     val2017/<file_name>

Any COCO-format file works (labelme and CVAT exports, for example): polygons, RLE, crowd
annotations, images without annotations. Annotation ids below 1 or repeated (COCOeval takes id 0
for "unmatched") are renumbered 1..N in file order, with a warning; a category named like the
background (labelme's ``_background_``) is dropped, an annotation that uses it is an error; the
other categories, in id order, become the labels 1..K-1 (0 = background; ``label_to_category``
maps them back for export).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from seglab.data.base import DatasetInfo, SampleSource, SegmentationDataModule, read_image

__all__ = ["BACKGROUND_NAMES", "CocoDataModule", "CocoImages", "annotation_mask", "read_coco"]

log = logging.getLogger(__name__)

BACKGROUND_NAMES = ("_background_", "__background__")
EDGE_SLACK = 1.0  # pixels a bbox or polygon may reach past the image (rounding in exports)
COCO_2017 = {
    "train": {"images": "train2017", "annotations": "annotations/instances_train2017.json"},
    "val": {"images": "val2017", "annotations": "annotations/instances_val2017.json"},
}
HOW_TO_GET = (
    "get COCO from https://cocodataset.org/#download (2017 train/val images and annotations) "
    "and unpack it under data.data_dir, or point data.split_files at a COCO-format file and its "
    "image folder"
)


def annotation_problem(annotation: Mapping[str, Any], height: int, width: int) -> str | None:
    """What is wrong with an annotation's geometry on its ``height`` x ``width`` image: a bbox
    or polygon reaching past the image (by more than ``EDGE_SLACK`` pixels), a polygon of under
    3 points or an odd count of numbers, an RLE of another size; None when nothing is."""
    lo, xs, ys = -EDGE_SLACK, [width + EDGE_SLACK], [height + EDGE_SLACK]
    bbox, segmentation = annotation.get("bbox"), annotation.get("segmentation")
    if bbox is not None:
        if len(bbox) != 4 or bbox[2] < 0 or bbox[3] < 0:
            return f"has bbox {bbox}: expected [x, y, width, height] with width, height >= 0"
        x, y, w, h = bbox
        if min(x, y) < lo or x + w > xs[0] or y + h > ys[0]:
            return f"has bbox {bbox} outside its {height}x{width} image"
    if isinstance(segmentation, dict) and list(segmentation.get("size", [])) != [height, width]:
        return f"has an RLE of size {segmentation.get('size')} on its {height}x{width} image"
    for polygon in segmentation if isinstance(segmentation, list) else []:
        if len(polygon) < 6 or len(polygon) % 2:
            return (
                f"has a polygon of {len(polygon)} numbers: expected x, y pairs of at least "
                "3 points (6 numbers)"
            )
        if min(polygon) < lo or max(polygon[0::2]) > xs[0] or max(polygon[1::2]) > ys[0]:
            return f"has a polygon outside its {height}x{width} image"
    return None


def check_coco(data: Mapping[str, Any], path: Path) -> None:
    """Check a COCO instances file's ``images`` and ``annotations`` (JSON only, no image read).

    Raises:
        ValueError: the first repeated image id, annotation of an unlisted image or with a bad
            geometry (``annotation_problem``), naming ``path`` and the entry.
    """
    sizes: dict[Any, tuple[int, int]] = {}
    for k, image in enumerate(data["images"]):
        where = f"data=coco: {path}: images[{k}]"
        if not all(isinstance(image.get(key), int) for key in ("id", "height", "width")):
            raise ValueError(f"{where} needs an integer 'id', 'height' and 'width'")
        if image["id"] in sizes:
            raise ValueError(f"{where} repeats image id {image['id']}: give each image its own id")
        sizes[image["id"]] = image["height"], image["width"]
    for k, annotation in enumerate(data["annotations"]):
        where = f"data=coco: {path}: annotations[{k}] (id {annotation.get('id')!r})"
        if (image_id := annotation.get("image_id")) not in sizes:
            raise ValueError(
                f"{where} has image_id {image_id!r}, which the file's 'images' do not list; "
                "fix its image_id or remove it"
            )
        if problem := annotation_problem(annotation, *sizes[image_id]):
            raise ValueError(f"{where} {problem}; fix or remove it")


def read_coco(path: str | Path, background_names: Sequence[str] = BACKGROUND_NAMES) -> COCO:
    """A pycocotools ``COCO`` of the instances file ``path``, annotation ids renumbered 1..N (in
    file order) when any is below 1 or repeated, categories named like the background
    (``background_names``) dropped: the categories left, in id order, are the labels 1..K-1.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a COCO instances file (no ``images`` or ``categories`` list), an entry
            ``check_coco`` refuses, or an annotation of a dropped or unlisted category (naming it).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data=coco: annotation file {path} not found; {HOW_TO_GET}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"data=coco: {path} is not a readable JSON file ({err})") from err
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "categories")
    ):
        raise ValueError(f"data=coco: {path} has no 'images' and 'categories' lists")
    annotations = data.setdefault("annotations", [])
    check_coco(data, path)
    ids = [a.get("id") for a in annotations]
    if any(not isinstance(i, int) or i < 1 for i in ids) or len(set(ids)) != len(ids):
        log.warning(
            "data=coco: %s has annotation ids below 1 or repeated; renumbered 1..%d in file "
            "order (COCOeval counts a match with annotation id 0 as no match)",
            path,
            len(ids),
        )
        for k, annotation in enumerate(annotations):
            annotation["id"] = k + 1
    dropped = {c["id"] for c in data["categories"] if c.get("name") in background_names}
    data["categories"] = [c for c in data["categories"] if c["id"] not in dropped]
    listed = {c["id"] for c in data["categories"]}
    for annotation in annotations:
        if (cid := annotation.get("category_id")) not in listed:
            why = "which the file's 'categories' do not list"
            if cid in dropped:
                why = (
                    f"named like the background ({list(background_names)}); relabel it or set "
                    "data.background_names"
                )
            raise ValueError(
                f"data=coco: annotation {annotation['id']} in {path} has category {cid}, {why}"
            )
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def annotation_mask(annotation: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """The binary mask (H, W) uint8 of a COCO annotation (checked by ``read_coco``), decoded by
    pycocotools: polygons, uncompressed or compressed RLE.

    Raises:
        ValueError: no segmentation, or an RLE of another size than the image (naming the id).
    """
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), np.uint8)
    elif not isinstance(segmentation, dict) or "counts" not in segmentation:
        raise ValueError(
            f"data=coco: annotation {annotation.get('id')}: expected a 'segmentation' of polygons "
            f"or an RLE dict (instance segmentation needs masks), got {segmentation!r:.40}"
        )
    elif list(segmentation.get("size", [])) != [height, width]:
        raise ValueError(
            f"data=coco: annotation {annotation.get('id')} has an RLE of size "
            f"{segmentation.get('size')} on an image of {height}x{width}"
        )
    rle = segmentation
    if isinstance(segmentation, list) or isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    return mask_utils.decode(mask_utils.merge(rle) if isinstance(rle, list) else rle)


class CocoImages(SampleSource):
    """The images ``image_ids`` of ``coco`` (``read_coco``), their ``file_name`` relative to
    ``image_dir``: ``image`` RGB, ``name`` the file, ``image_id`` the file's, one object per
    annotation labelled by the rank of its category id (1..K-1), crowd ones marked
    ``iscrowd = 1`` (the instance task keeps them out of the losses and the AP metrics ignore
    detections on them; the semantic view makes them ``ignore_index``). ``source``: the
    annotation file, named in errors.

    Raises (on reading, naming the image file): ValueError for an image Pillow cannot decode
    (truncated, corrupt) or of another size than the file says; FileNotFoundError when missing.
    """

    def __init__(
        self, coco: COCO, image_dir: str | Path, image_ids: Sequence[int], source: str | Path = ""
    ) -> None:
        self.coco = coco
        self.image_dir = Path(image_dir).expanduser()
        self.image_ids = list(image_ids)
        self.source = source
        self.label = {cid: k for k, cid in enumerate(sorted(coco.cats), start=1)}

    def __len__(self) -> int:
        return len(self.image_ids)

    def labels(self, index: int) -> dict[str, Any]:
        info = self.coco.imgs[self.image_ids[index]]
        height, width = int(info["height"]), int(info["width"])
        annotations = self.coco.imgToAnns.get(info["id"], [])
        masks = np.zeros((len(annotations), height, width), np.uint8)
        for k, annotation in enumerate(annotations):
            masks[k] = annotation_mask(annotation, height, width)
        return {
            "masks": masks,
            "labels": [self.label[a["category_id"]] for a in annotations],
            "iscrowd": [int(bool(a.get("iscrowd", 0))) for a in annotations],
            "image_id": info["id"],
            "name": str(self.image_dir / info["file_name"]),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        info = self.coco.imgs[self.image_ids[index]]
        path = self.image_dir / info["file_name"]
        fix = f"replace it or remove image id {info['id']} and its annotations from {self.source}"
        if not path.is_file():
            raise FileNotFoundError(f"data=coco: image {path} (image id {info['id']}) not found")
        try:  # decoding the whole image here: a truncated file fails at its first read
            image = read_image(path, "data=coco:")
        except ValueError as err:
            raise ValueError(f"{err}; {fix}") from err
        expected = (int(info["height"]), int(info["width"]))
        if image.shape[:2] != expected:
            raise ValueError(
                f"data=coco: image {path} is {image.shape[0]}x{image.shape[1]} but "
                f"{self.source} says {expected[0]}x{expected[1]}; {fix}"
            )
        return {**self.labels(index), "image": image}


COCO_INFO = DatasetInfo(
    name="coco", views={"semantic": None, "instance": None}, how_to_get=HOW_TO_GET
)


class CocoDataModule(SegmentationDataModule):
    """``data=coco``: COCO-format instance annotations; instance view (``task=instance``, lists
    of targets) or semantic view (``task=semantic``).

    Args:
        data_dir: the root the paths of ``split_files`` are relative to.
        split_files: ``{split: {"images": folder, "annotations": json file}}``; default COCO 2017
            train and val. Add ``test`` to have a test split.
        filter_empty_train: leave the images without a non-crowd annotation out of the train
            split (as torchvision's and detectron2's COCO training); other splits keep every image.
        background_names: category names taken for the background and dropped.
        num_classes: background + the file's categories; checked against the files at setup.
        class_names: ``["background", *names]`` in category id order (checked against the files),
            or None to take them from the first split's file.
        **kwargs: ``SegmentationDataModule``'s arguments.
    """

    info = COCO_INFO

    def __init__(
        self,
        *,
        data_dir: str,
        split_files: Mapping[str, Mapping[str, str]] | None = None,
        filter_empty_train: bool = True,
        background_names: Sequence[str] = BACKGROUND_NAMES,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        files = {k: dict(v) for k, v in (split_files or COCO_2017).items()}
        for split, entry in files.items():
            if set(entry) != {"images", "annotations"}:
                raise ValueError(
                    f"data.split_files.{split}={entry}: expected the keys 'images' and "
                    "'annotations'"
                )
        if not files:
            raise ValueError("data.split_files is empty: give at least one split")
        self.split_files = files
        self.first = next(iter(files))
        self.filter_empty_train = filter_empty_train
        self.background_names = tuple(background_names)
        self._coco: dict[str, COCO] = {}
        super().__init__(
            num_classes=num_classes, class_names=class_names, data_dir=data_dir, **kwargs
        )
        self.splits = tuple(files)
        if class_names is None:  # take them from the first file, checking data.num_classes
            self.class_names = self._check(self.first, names_from_file=True)

    def _path(self, split: str, key: str) -> Path:
        return Path(self.data_dir or "").expanduser() / self.split_files[split][key]

    def coco(self, split: str) -> COCO:
        """The split's annotations as a pycocotools ``COCO`` (``read_coco``), e.g. for running
        ``COCOeval`` on exported results directly."""
        if split not in self.split_files:
            raise ValueError(f"split={split!r}: data.split_files has {list(self.split_files)}")
        if split not in self._coco:
            self._coco[split] = read_coco(self._path(split, "annotations"), self.background_names)
        return self._coco[split]

    @property
    def label_to_category(self) -> dict[int, int]:
        """Contiguous label -> the file's category id (for COCO results files)."""
        return dict(enumerate(sorted(self.coco(self.first).cats), start=1))

    def _check(self, split: str, names_from_file: bool = False) -> list[str]:
        """The class names of the split's file, checked against the first file's categories,
        data.num_classes and (unless ``names_from_file``) data.class_names."""
        source, cats = self._path(split, "annotations"), self.coco(split).cats
        ids, first = sorted(cats), list(self.label_to_category.values())
        if ids != first:
            raise ValueError(
                f"data=coco: {source} has the categories {ids}, but "
                f"{self._path(self.first, 'annotations')} has {first}"
            )
        names = ["background", *(str(cats[i]["name"]) for i in ids)]
        if self.num_classes != len(names):
            raise ValueError(
                f"data.num_classes={self.num_classes} but {source} has {len(ids)} categories "
                f"(+ background): set data.num_classes={len(names)}"
            )
        if not names_from_file and list(self.class_names) != names:
            raise ValueError(
                f"data.class_names={list(self.class_names)} differ from the categories of "
                f"{source} {names}: set data.class_names=null to take them from the file"
            )
        return names

    def source(self, split: str) -> CocoImages:
        self._check(split)
        coco = self.coco(split)
        image_dir = self.require_dir(self._path(split, "images"), "image folder")
        image_ids = sorted(coco.imgs)
        if split == "train" and self.filter_empty_train:
            image_ids = [
                i
                for i in image_ids
                if any(not a.get("iscrowd", 0) for a in coco.imgToAnns.get(i, []))
            ]
            if not image_ids:
                raise ValueError(
                    f"data=coco: no image of {self._path(split, 'annotations')} has a non-crowd "
                    "annotation (data.filter_empty_train=true left the train split empty)"
                )
        source = self._path(split, "annotations")
        missing = [i for i in image_ids if not (image_dir / coco.imgs[i]["file_name"]).is_file()]
        if missing:  # one stat per image: cheap, and before any training
            raise FileNotFoundError(
                f"data=coco: image {image_dir / coco.imgs[missing[0]]['file_name']} (image id "
                f"{missing[0]}) of {source} not found ({len(missing)} missing in all); add the "
                "images or remove them and their annotations from the file"
            )
        return CocoImages(coco, image_dir, image_ids, source)
