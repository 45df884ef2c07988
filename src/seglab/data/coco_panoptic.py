"""COCO panoptic annotations (Kirillov et al., "Panoptic Segmentation", CVPR 2019; Lin et al.,
"Microsoft COCO", ECCV 2014), read as panopticapi defines them: per split a JSON file
(``images``, ``annotations`` with ``segments_info``, ``categories`` with ``isthing``), a folder
of PNGs (segment id = R + 256 G + 256^2 B, 0 = void) and an image folder.

Official layout under ``data_dir`` (the defaults of ``conf/data/coco_panoptic.yaml``)::

    annotations/panoptic_train2017.json   annotations/panoptic_train2017/<png>   train2017/<jpg>
    annotations/panoptic_val2017.json     annotations/panoptic_val2017/<png>     val2017/<jpg>

The JSON's categories, things then stuff, each in ascending id, become the panoptic classes
1..T+S (0 = void); ``category_ids`` maps them back for export.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seglab.data.base import DatasetInfo, SampleSource, SegmentationDataModule, read_image

__all__ = ["CocoPanopticDataModule", "PanopticCategories", "PanopticImages", "read_panoptic_json",
           "rgb_to_id"]  # fmt: skip

COCO_2017 = {
    split: {
        "images": f"{split}2017",
        "annotations": f"annotations/panoptic_{split}2017.json",
        "panoptic": f"annotations/panoptic_{split}2017",
    }
    for split in ("train", "val")
}
HOW_TO_GET = (
    "get the COCO 2017 images and panoptic_annotations_trainval2017.zip from "
    "https://cocodataset.org/#download, unzip them under data.data_dir and the PNG zips inside "
    "annotations/ next to their JSON, or point data.split_files at a COCO panoptic JSON, its PNG "
    "folder and its image folder"
)


def rgb_to_id(png: np.ndarray) -> np.ndarray:
    """Segment ids (H, W) int32 of a COCO panoptic PNG (H, W, 3): R + 256 G + 256^2 B."""
    rgb = png.astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def read_panoptic_json(path: Path, dataset: str, how: str = HOW_TO_GET) -> dict[str, Any]:
    """A COCO panoptic JSON file (its ``images``, ``annotations`` and ``categories`` lists).

    Raises:
        FileNotFoundError: no such file (saying ``how`` to get it). ValueError: not such a file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"data={dataset}: panoptic JSON {path} not found; {how}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"data={dataset}: {path} is not a readable JSON file ({err})") from err
    keys = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in keys):
        raise ValueError(f"data={dataset}: {path} lacks the COCO panoptic lists {list(keys)}")
    return data


class PanopticCategories:
    """The panoptic classes of a JSON's ``categories``: things then stuff, each by ascending id.

    Attributes:
        names: ``["void", *thing names, *stuff names]``, one per class 0..T+S.
        num_things: T.
        category_ids: the file's category id of each class 1..T+S (``category_ids[c - 1]``).
        to_class: the file's category id -> class.
    """

    def __init__(self, categories: Sequence[Mapping[str, Any]], *, source: str) -> None:
        ordered = sorted(categories, key=lambda c: (not c.get("isthing"), c["id"]))
        self.names = ["void", *(str(c["name"]) for c in ordered)]
        self.num_things = sum(bool(c.get("isthing")) for c in ordered)
        self.category_ids = [int(c["id"]) for c in ordered]
        self.to_class = {cid: k + 1 for k, cid in enumerate(self.category_ids)}
        if len(self.to_class) != len(ordered):
            raise ValueError(f"{source} lists a category id twice")


class PanopticImages(SampleSource):
    """The annotated images of a COCO panoptic JSON ``data`` read from ``source``: ``image``
    (``image_dir / file_name``), ``name`` its path, ``image_id`` the file's (an int; else the
    index), ``segment_ids`` from ``png_dir / file_name`` and ``segments`` (id, class by
    ``categories``, iscrowd) for ``PanopticDataset``, which checks the map against them.

    Raises (on reading): FileNotFoundError for a missing file; ValueError for a category the
    JSON does not list or an image or PNG of another size than the JSON says, naming the file.
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        *,
        source: Path,
        image_dir: Path,
        png_dir: Path,
        categories: PanopticCategories,
        dataset: str,
    ) -> None:
        self.images = {image["id"]: image for image in data["images"]}
        if len(self.images) != len(data["images"]):
            ids = [image["id"] for image in data["images"]]
            twice = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(
                f"data={dataset}: {source} lists image id {twice!r} twice in 'images': give each "
                "image its own id"
            )
        self.annotations = list(data["annotations"])
        for annotation in self.annotations:
            if annotation.get("image_id") not in self.images:
                raise ValueError(
                    f"data={dataset}: {source} annotates image id {annotation.get('image_id')!r} "
                    f"({annotation.get('file_name')}) that its 'images' do not list; fix its "
                    "image_id or remove it"
                )
            info = self.images[annotation["image_id"]]
            for segment in annotation.get("segments_info", []):
                x, y, w, h = segment.get("bbox", (0, 0, 0, 0))
                if min(x, y, w, h) < 0 or x + w > info["width"] or y + h > info["height"]:
                    raise ValueError(
                        f"data={dataset}: {source}: segment {segment.get('id')} of "
                        f"{annotation.get('file_name')} has bbox {segment['bbox']} outside its "
                        f"{info['height']}x{info['width']} image; fix or remove it"
                    )
        self.source, self.image_dir, self.png_dir = source, image_dir, png_dir
        for annotation in self.annotations:  # one stat per file, before any training
            image = self.image_path(self.images[annotation["image_id"]])
            for kind, path in (
                ("image", image),
                ("panoptic PNG", png_dir / annotation["file_name"]),
            ):
                if not path.is_file():
                    raise FileNotFoundError(
                        f"data={dataset}: {kind} {path} of {source} not found; add it or remove "
                        f"image id {annotation['image_id']!r} from the file"
                    )
        self.categories = categories
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.annotations)

    def image_path(self, image: Mapping[str, Any]) -> Path:
        """The image file of an entry of the JSON's ``images``."""
        return self.image_dir / image["file_name"]

    def __getitem__(self, index: int) -> dict[str, Any]:
        annotation = self.annotations[index]
        info = self.images[annotation["image_id"]]
        image_file, png = self.image_path(info), self.png_dir / annotation["file_name"]
        for kind, path in (("image", image_file), ("panoptic PNG", png)):
            if not path.is_file():
                raise FileNotFoundError(f"data={self.dataset}: {kind} {path} not found")
        fix = f"replace it or remove image id {info['id']!r} from {self.source}"
        try:  # decoding the whole files here: a truncated one fails at its first read
            image = read_image(image_file, f"data={self.dataset}:")
            segment_ids = rgb_to_id(read_image(png, f"data={self.dataset}:"))
        except ValueError as err:
            raise ValueError(f"{err}; {fix}") from err
        size = (int(info["height"]), int(info["width"]))
        for path, shape in ((image_file, image.shape[:2]), (png, segment_ids.shape)):
            if shape != size:
                raise ValueError(
                    f"data={self.dataset}: {path} is {shape[0]}x{shape[1]} but {self.source} "
                    f"says {size[0]}x{size[1]}; {fix}"
                )
        segments = []
        for segment in annotation["segments_info"]:
            cls = self.categories.to_class.get(segment["category_id"])
            if cls is None:
                raise ValueError(
                    f"data={self.dataset}: segment {segment['id']} of {png} has category "
                    f"{segment['category_id']}, which the 'categories' of {self.source} do not list"
                )
            crowd = int(bool(segment.get("iscrowd", 0)))
            segments.append({"id": int(segment["id"]), "class": cls, "iscrowd": crowd})
        image_id = annotation["image_id"]
        return {
            "image": image,
            "name": str(image_file),
            "image_id": image_id if isinstance(image_id, int) else index,
            "file_image_id": image_id,  # Cityscapes' are strings: the writer exports this one
            "segment_ids": segment_ids,
            "segments": segments,
            "panoptic_file": str(png),
        }


COCO_PANOPTIC = DatasetInfo(name="coco_panoptic", views={"panoptic": None}, how_to_get=HOW_TO_GET)


class CocoPanopticDataModule(SegmentationDataModule):
    """``data=coco_panoptic``: COCO panoptic annotations, panoptic view (``task=panoptic``).

    Args:
        data_dir: the root the paths of ``split_files`` are relative to.
        split_files: ``{split: {"images": folder, "annotations": JSON, "panoptic": PNG folder}}``;
            default COCO 2017 train and val. Add ``test`` to have a test split.
        class_names: ``["void", *things, *stuff]`` (checked against the files), or None to take
            them from the first split's JSON; so are ``num_things`` and ``num_stuff``.
        **kwargs: ``SegmentationDataModule``'s arguments.
    """

    info = COCO_PANOPTIC

    def __init__(
        self,
        *,
        data_dir: str,
        split_files: Mapping[str, Mapping[str, str]] | None = None,
        class_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        files = {k: dict(v) for k, v in (split_files or COCO_2017).items()}
        if not files:
            raise ValueError("data.split_files is empty: give at least one split")
        for split, entry in files.items():
            if set(entry) != {"images", "annotations", "panoptic"}:
                raise ValueError(
                    f"data.split_files.{split}={entry}: expected the keys 'images', "
                    "'annotations' and 'panoptic'"
                )
        self.split_files, self.first = files, next(iter(files))
        self.data_dir = data_dir
        self._json: dict[str, dict[str, Any]] = {}
        self._categories: dict[str, PanopticCategories] = {}
        if class_names is None:
            class_names = self.categories(self.first).names
        super().__init__(class_names=class_names, data_dir=data_dir, **kwargs)
        self.splits = tuple(files)

    def _path(self, split: str, key: str) -> Path:
        return Path(self.data_dir or "").expanduser() / self.split_files[split][key]

    def categories(self, split: str) -> PanopticCategories:
        """The panoptic classes of the split's JSON (read once)."""
        if split not in self._categories:
            source = self._path(split, "annotations")
            self._json[split] = read_panoptic_json(source, self.info.name)
            self._categories[split] = PanopticCategories(
                self._json[split]["categories"], source=str(source)
            )
        return self._categories[split]

    def panoptic_categories(self) -> tuple[int, list[int], str]:
        categories, source = self.categories(self.first), self._path(self.first, "annotations")
        if list(self.class_names) != categories.names:
            raise ValueError(
                f"data.class_names differ from the categories of {source} (void, things, stuff: "
                f"{categories.names}): set data.class_names=null to take them from the file"
            )
        return categories.num_things, categories.category_ids, str(source)

    def source(self, split: str) -> PanopticImages:
        categories = self.categories(split)
        first = self.categories(self.first)
        if (categories.num_things, categories.category_ids) != (
            first.num_things,
            first.category_ids,
        ):
            raise ValueError(
                f"data={self.info.name}: {self._path(split, 'annotations')} has the classes "
                f"{categories.names}, but {self._path(self.first, 'annotations')} has "
                f"{first.names}"
            )
        return PanopticImages(
            self._json[split],
            source=self._path(split, "annotations"),
            image_dir=self.require_dir(self._path(split, "images"), "image folder"),
            png_dir=self.require_dir(self._path(split, "panoptic"), "panoptic PNG folder"),
            categories=categories,
            dataset=self.info.name,
        )
