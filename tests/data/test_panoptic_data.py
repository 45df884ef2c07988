"""The panoptic view (``PanopticDataset``) over shapes, COCO panoptic and Cityscapes panoptic data."""

from __future__ import annotations

import json
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic
from PIL import Image
from support import require_data

from seglab.data.coco_panoptic import CocoPanopticDataModule
from seglab.data.shapes import ShapesDataModule
from seglab.utils.instantiate import build_datamodule

SAMPLE = ("coco_panoptic_sample", "sample_data")
SAMPLE_FILES = "{val: {images: input_images, annotations: panoptic_examples.json, panoptic: panoptic_examples}}"  # fmt: skip
# pads with the ignore label, as conf/data/transforms/scale_crop_flip.yaml does
PAD_CROP = A.Compose(
    [
        A.Affine(rotate=(20, 20), scale=(0.8, 0.8), p=1),
        A.PadIfNeeded(min_height=40, min_width=40, position="top_left", fill_mask=255),
        A.RandomCrop(height=40, width=40),
    ]
)


def check_target(image: torch.Tensor, target: dict, num_things: int, ignore: int = 255) -> None:
    """The contract's invariants of one panoptic sample."""
    h, w = image.shape[1:]
    assert image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1
    classes, instance = target["panoptic"].unbind(-1)
    masks, labels = target["masks"].bool(), target["labels"]
    n = len(labels)
    assert target["panoptic"].shape == (h, w, 2) and target["panoptic"].dtype == torch.int64
    assert masks.shape == (n, h, w) and target["boxes"].shape == (n, 4)
    assert target["semantic"].dtype == torch.int64 and target["crowd"].dtype == torch.bool
    assert ((labels >= 1) & (labels <= num_things)).all()
    for k in range(n):  # the k-th thing is instance id k + 1, of its label; boxes fit the masks
        assert torch.equal(instance == k + 1, masks[k]) and (classes[masks[k]] == labels[k]).all()
        ys, xs = torch.nonzero(masks[k], as_tuple=True)
        box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert target["boxes"][k].tolist() == [float(v) for v in box]
        assert target["area"][k] == masks[k].sum()
        assert target["crowd"][masks[k]].all() == bool(target["iscrowd"][k])
    thing = (classes >= 1) & (classes <= num_things)
    assert torch.equal(thing, instance > 0) and torch.equal(thing, masks.any(0))
    assert (target["semantic"][thing] == 0).all()
    stuff = classes > num_things
    assert torch.equal(target["semantic"][stuff], classes[stuff] - num_things)
    assert (target["semantic"][classes == 0] == ignore).all()


# ----------------------------------------------------------------- shapes


def shapes(**kwargs) -> ShapesDataModule:
    return ShapesDataModule(
        task="panoptic", image_size=48, num_samples={"train": 4, "val": 6}, batch_size=3, **kwargs
    )


def test_shapes_panoptic_view_agrees_with_the_scenes():
    dm = shapes()
    assert dm.class_names == ["void", "disk", "square", "triangle", "flat", "speckle", "stripes"]
    assert (dm.num_classes, dm.num_things, dm.num_stuff) == (7, 3, 3)
    assert dm.category_ids == [1, 2, 3, 4, 5, 6] and dm.palette[0] == [0, 0, 0]
    semantic = ShapesDataModule(task="semantic", image_size=48, num_samples={"val": 6})
    for i in range(6):
        image, target = dm.dataset("val")[i]
        check_target(image, target, num_things=3)
        classes = target["panoptic"][..., 0]
        assert (classes > 0).all() and not target["crowd"].any()  # every pixel one segment
        # the semantic view's classes (stuff 0..2, things 3..5) in the panoptic order
        mask = semantic.dataset("val")[i]["mask"]
        assert torch.equal(classes, torch.where(mask >= 3, mask - 2, mask + 4))


def test_shapes_panoptic_augmentation_and_batches():
    dm = shapes(train_transforms=PAD_CROP)
    images, targets = next(iter(dm.train_dataloader()))
    assert len(images) == len(targets) == 3
    voids = 0
    for image, target in zip(images, targets):
        assert image.shape == (3, 40, 40)
        check_target(image, target, num_things=3)
        voids += int((target["panoptic"][..., 0] == 0).sum())
    assert voids > 0  # rotation corners: void, not the segment the padding value would name


def test_shapes_panoptic_config_keys(compose_cfg):
    cfg = compose_cfg(overrides=["data.task=panoptic"])
    dm = build_datamodule(cfg.data)
    assert (dm.num_things, dm.num_stuff, cfg.data.num_classes) == (3, 3, 7)
    assert cfg.data.class_names[:2] == ["void", "disk"]
    with pytest.raises(ValueError, match=r"data.num_things=2 \+ data.num_stuff=3"):
        shapes(num_things=2, num_stuff=3)
    with pytest.raises(ValueError, match="data.num_things=4 but .* has 3 thing categories"):
        shapes(num_classes=7, num_things=4, num_stuff=2).dataset("val")
    assert ShapesDataModule(task="semantic", num_things=3).num_things is None


# ----------------------------------------------------------------- COCO panoptic, the real sample


def test_real_coco_panoptic_sample(compose_cfg):
    folder = require_data(*SAMPLE)
    cfg = compose_cfg(
        overrides=[
            "data=coco_panoptic",
            "data.task=panoptic",
            f"data.data_dir={folder}",
            "~data.split_files",  # a dict override would merge with train2017's
            f"+data.split_files={SAMPLE_FILES}",
            "data.num_workers=0",
        ],
        quick=False,
    )
    dm = build_datamodule(cfg.data)  # the yaml's class names, checked against the JSON
    assert (dm.num_classes, dm.num_things, dm.num_stuff, dm.splits) == (134, 80, 53, ("val",))
    ids = dm.category_ids
    assert ids[:80] == sorted(ids[:80]) and ids[80:] == sorted(ids[80:]) and ids[79] < ids[80]
    annotations = json.loads((folder / "panoptic_examples.json").read_text())["annotations"]
    dataset = dm.dataset("val")
    assert len(dataset) == 2
    for k, annotation in enumerate(annotations):
        image, target = dataset[k]
        png = np.asarray(Image.open(folder / "panoptic_examples" / annotation["file_name"]))
        two = np.asarray(
            Image.open(folder / "panoptic_examples_2ch_format" / annotation["file_name"])
        )
        assert image.shape == (3, *png.shape[:2]) and target["image_id"] == annotation["image_id"]
        check_target(image, target, num_things=80)
        panoptic = target["panoptic"].numpy()
        # the category of every pixel, and its segment, as in the 2-channel format
        assert np.array_equal(np.array([0, *ids])[panoptic[..., 0]], two[..., 0])
        pairs = np.concatenate([panoptic.reshape(-1, 2), two[..., :2].reshape(-1, 2)], 1)
        count = [len(np.unique(p, axis=0)) for p in (pairs, pairs[:, :2], pairs[:, 2:])]
        assert count[0] == count[1] == count[2]  # one segment partition
        segment = png.astype(np.int64) @ [1, 256, 65536]
        crowd = [s["id"] for s in annotation["segments_info"] if s["iscrowd"]]
        assert torch.equal(target["crowd"], torch.from_numpy(np.isin(segment, crowd)))
        assert int(target["iscrowd"].sum()) == len(crowd) >= 1


# ----------------------------------------------------------------- COCO panoptic, written trees

H, W = 24, 32
# interleaved ids: classes are things (2, 9) then stuff (1, 5)
CATEGORIES = [
    {"id": 5, "name": "grass", "isthing": 0},
    {"id": 2, "name": "dog", "isthing": 1},
    {"id": 9, "name": "cat", "isthing": 1},
    {"id": 1, "name": "sky", "isthing": 0},
]


def write_coco_panoptic(root: Path, edit=None) -> Path:
    """Two images: sky / grass halves, a dog (id 70000, all three PNG channels used), a crowd of
    cats and a void strip; ``edit(json, segment_maps)`` alters them before they are written."""
    images, annotations, maps = [], [], []
    for k in range(2):
        ids = np.full((H, W), 1000, np.int64)
        ids[H // 2 :] = 1001
        ids[4:10, 4 + k : 12] = 70000
        ids[14:20, 20:30] = 3
        ids[:, -2:] = 0
        maps.append(ids)
        segments = [
            {"id": 1000, "category_id": 1, "iscrowd": 0},
            {"id": 1001, "category_id": 5, "iscrowd": 0},
            {"id": 70000, "category_id": 2, "iscrowd": 0},
            {"id": 3, "category_id": 9, "iscrowd": 1},
        ]
        name = f"{k:012d}"
        images.append({"id": k + 7, "file_name": f"{name}.jpg", "height": H, "width": W})
        annotations.append(
            {"image_id": k + 7, "file_name": f"{name}.png", "segments_info": segments}
        )
    data = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    if edit is not None:
        edit(data, maps)
    for image, annotation, ids in zip(images, annotations, maps):
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        (root / "png").mkdir(parents=True, exist_ok=True)
        (root / "img").mkdir(exist_ok=True)
        Image.fromarray(rgb).save(root / "png" / annotation["file_name"])
        pixels = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "img" / image["file_name"])
    (root / "panoptic.json").write_text(json.dumps(data))
    return root


def coco_panoptic(root: Path, **kwargs) -> CocoPanopticDataModule:
    files = {"images": "img", "annotations": "panoptic.json", "panoptic": "png"}
    return CocoPanopticDataModule(
        task="panoptic", data_dir=str(root), split_files={"train": files, "val": files}, **kwargs
    )


def test_coco_panoptic_classes_targets_and_augmentation(tmp_path):
    dm = coco_panoptic(write_coco_panoptic(tmp_path), train_transforms=PAD_CROP)
    assert dm.class_names == ["void", "dog", "cat", "sky", "grass"]
    assert (dm.num_things, dm.num_stuff, dm.category_ids) == (2, 2, [2, 9, 1, 5])
    image, target = dm.dataset("val")[1]
    check_target(image, target, num_things=2)
    assert target["labels"].tolist() == [1, 2] and target["iscrowd"].tolist() == [0, 1]
    assert target["image_id"] == 8 and target["name"].endswith("img/000000000001.jpg")
    expected = torch.full((H, W), 3)  # sky above, grass below, a dog, a crowd of cats, void
    expected[H // 2 :] = 4
    expected[4:10, 5:12], expected[14:20, 20:30], expected[:, -2:] = 1, 2, 0
    classes = target["panoptic"][..., 0]
    assert torch.equal(classes, expected) and torch.equal(target["crowd"], classes == 2)
    assert (target["semantic"][0, 0], target["semantic"][-1, 0]) == (1, 2)
    image, target = dm.dataset("train")[0]  # rotated, scaled, padded with 255, cropped
    assert image.shape == (3, 40, 40)
    check_target(image, target, num_things=2)
    assert (target["panoptic"][-4:, :, 0] == 0).all()  # padding is void


def test_coco_panoptic_checks_the_config_against_the_file(tmp_path):
    write_coco_panoptic(tmp_path)
    with pytest.raises(ValueError, match="data.num_things=3 but .*panoptic.json has 2 thing"):
        coco_panoptic(tmp_path, num_things=3)
    names = ["void", "cat", "dog", "sky", "grass"]
    with pytest.raises(ValueError, match="data.class_names differ .*panoptic.json"):
        coco_panoptic(tmp_path, class_names=names, num_things=2, num_stuff=2).dataset("val")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d, m: d["annotations"][0]["segments_info"].pop(), r"png/000000000000.png holds segment id\(s\) \[3\] that"),
        (lambda d, m: m[0].__setitem__(m[0] == 3, 0), r"png/000000000000.png lists segment id\(s\) \[3\] absent"),
        (lambda d, m: d["annotations"][0]["segments_info"][0].update(category_id=4), "segment 1000 of .*000000000000.png has category 4, which the 'categories' of .*panoptic.json"),
        (lambda d, m: d["images"][0].update(height=H + 1), rf"img/000000000000.jpg is {H}x{W} but .*panoptic.json says {H + 1}x{W}"),
        (lambda d, m: m.__setitem__(0, m[0][:-1]), rf"png/000000000000.png is {H - 1}x{W} but .*panoptic.json says"),
    ],
    ids=["id-not-listed", "listed-not-in-png", "unknown-category", "json-size", "png-size"],
)  # fmt: skip
def test_coco_panoptic_bad_files_name_the_file(tmp_path, edit, message):
    dm = coco_panoptic(write_coco_panoptic(tmp_path, edit))
    with pytest.raises(ValueError, match=message):
        dm.dataset("val")[0]


# ----------------------------------------------------------------- Cityscapes panoptic


def write_cityscapes_instance_ids(root: Path) -> dict[str, np.ndarray]:
    """``gtFine/val/<city>/*_gtFine_instanceIds.png`` and their images, in the official naming:
    road / sky (stuff), two cars and a person (things: label id * 1000 + k), a car group (crowd:
    the label id), a caravan (ignored in evaluation) and unlabelled pixels (void)."""
    found = {}
    for k, city in enumerate(("frankfurt", "lindau")):
        stem = f"{city}_{k:06d}_000019"
        ids = np.full((H, W), 7, np.uint16)  # road
        ids[:8] = 23  # sky
        ids[10:16, 2:10] = 26000
        ids[10:16, 12:18] = 26001
        ids[2:12, 20:24] = 24000 + k
        ids[18:22, 2:12] = 26  # car group
        ids[18:22, 20:26] = 29  # caravan: ignoreInEval
        ids[:, -2:] = 0  # unlabeled
        for folder, name, array in (
            ("gtFine", f"{stem}_gtFine_instanceIds.png", ids),
            ("leftImg8bit", f"{stem}_leftImg8bit.png", np.full((H, W, 3), 9 * k, np.uint8)),
        ):
            (root / folder / "val" / city).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / folder / "val" / city / name)
        found[stem] = ids
    return found


@pytest.mark.parametrize("label_type", ["labelIds", "trainIds"])
def test_cityscapes_panoptic_from_create_panoptic_imgs(tmp_path, capsys, compose_cfg, label_type):
    instance_ids = write_cityscapes_instance_ids(tmp_path)
    convert2panoptic(
        str(tmp_path / "gtFine"), useTrainId=label_type == "trainIds", setNames=["val"]
    )
    capsys.readouterr()
    suffix = "_trainId" if label_type == "trainIds" else ""
    assert (tmp_path / f"gtFine/cityscapes_panoptic_val{suffix}.json").is_file()
    cfg = compose_cfg(
        overrides=[
            "data=cityscapes",
            "data.task=panoptic",
            f"data.data_dir={tmp_path}",
            f"data.label_type={label_type}",
            "data.crop_size=16",
            "data.num_workers=0",
        ],
        quick=False,
    )
    dm = build_datamodule(cfg.data)
    assert (dm.num_classes, dm.num_things, dm.num_stuff) == (20, 8, 11)
    assert dm.class_names[:4] == ["void", "person", "rider", "car"] and dm.class_names[9] == "road"
    assert len(dm.palette) == 20 and dm.palette[3] == [0, 0, 142]
    assert dm.category_ids[:3] == ([24, 25, 26] if label_type == "labelIds" else [11, 12, 13])
    dataset = dm.dataset("val")
    assert len(dataset) == 2
    for k, ids in enumerate(instance_ids.values()):
        image, target = dataset[k]
        check_target(image, target, num_things=8)
        classes = target["panoptic"][..., 0].numpy()
        expected = np.zeros((H, W), np.int64)  # void: unlabeled and caravan
        for label_id, cls in ((7, 9), (23, 19), (26, 3), (24, 1)):
            expected[np.where(ids >= 1000, ids // 1000, ids) == label_id] = cls
        assert np.array_equal(classes, expected)
        assert torch.equal(target["crowd"], torch.from_numpy(ids == 26))
        # createPanopticImgs lists segments by id: the car group 26, person, cars 26000, 26001
        assert target["labels"].tolist() == [3, 1, 3, 3]
        assert target["iscrowd"].tolist() == [1, 0, 0, 0]
        assert (target["semantic"][0, 0], target["semantic"][-1, 0]) == (11, 1)  # sky, road
        # the JSON's own image id (a string), which predictions are exported with
        name = Path(target["name"]).name.removesuffix("_leftImg8bit.png")
        assert target["file_image_id"] == name and target["image_id"] == k
    with pytest.raises(FileNotFoundError, match="cityscapes_panoptic_train.*csCreatePanopticImgs"):
        dm.dataset("train")
