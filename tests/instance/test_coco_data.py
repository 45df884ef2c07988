"""data=coco: the COCO-format loader on a tiny written tree and on the real VOC sample."""

import json
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from coco_tree import write_edge_case_tree
from support import require_data

from seglab.data.coco import CocoDataModule, annotation_mask, read_coco
from seglab.utils.instantiate import build_datamodule

VOC_COCO = ("voc_labelme_examples", "instance_segmentation", "data_dataset_coco")


def module(root: Path, task: str = "instance", **kwargs) -> CocoDataModule:
    files = {"images": "images", "annotations": "annotations.json"}
    options = {
        "task": task,
        "data_dir": str(root),
        "split_files": {"train": files, "val": files},
        "num_classes": 3,
        "class_names": None,
    }
    return CocoDataModule(**{**options, **kwargs})


@pytest.fixture
def tree(tmp_path):
    write_edge_case_tree(tmp_path)
    return tmp_path


def by_id(dataset):
    return {t["image_id"]: (image, t) for image, t in (dataset[i] for i in range(len(dataset)))}


def test_labels_names_and_inverse_mapping(tree):
    dm = module(tree)
    assert dm.class_names == ["background", "square", "blob"]
    assert dm.label_to_category == {1: 3, 2: 7}


def test_polygon_rle_crowd_and_empty_images(tree):
    dm = module(tree)
    val = by_id(dm.dataset("val"))
    assert sorted(val) == [1, 2, 3, 4]  # every image, the empty and crowd-only ones too
    image, t = val[1]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32 and image.max() <= 1
    assert t["labels"].tolist() == [1, 2, 1] and t["iscrowd"].tolist() == [0, 0, 1]
    # polygon [4, 20] x [4, 20]: pycocotools rasterises the pixels 4..19
    assert t["boxes"][0].tolist() == [4, 4, 20, 20] and t["area"][0] == 256
    assert t["boxes"][1].tolist() == [30, 25, 60, 40]
    _, t = val[2]  # odd size: uncompressed RLE, one pixel, the whole image
    assert t["masks"].shape == (3, 37, 53)
    assert t["boxes"].tolist() == [[2, 5, 12, 30], [52, 36, 53, 37], [0, 0, 53, 37]]
    assert t["area"].tolist() == [250, 1, 37 * 53]
    _, t = val[3]
    assert t["boxes"].shape == (0, 4) and t["masks"].shape == (0, 40, 40)
    _, t = val[4]
    assert t["iscrowd"].tolist() == [1]
    # images without a non-crowd annotation are left out of train by default
    assert sorted(by_id(dm.dataset("train"))) == [1, 2]
    assert sorted(by_id(module(tree, filter_empty_train=False).dataset("train"))) == [1, 2, 3, 4]


def test_collate_gives_lists_with_empty_and_non_empty(tree):
    dm = module(tree, eval_batch_size=4)
    images, targets = next(iter(dm.val_dataloader()))
    assert isinstance(images, list) and [len(t["labels"]) for t in targets] == [3, 3, 0, 1]
    assert [tuple(i.shape[-2:]) for i in images] == [(48, 64), (37, 53), (40, 40), (32, 48)]


def test_transforms_keep_masks_and_boxes_together_and_drop_degenerate(tree):
    flip = A.Compose([A.HorizontalFlip(p=1.0)])
    _, t = by_id(module(tree, eval_transforms=flip).dataset("val"))[1]
    assert t["boxes"][0].tolist() == [64 - 20, 4, 64 - 4, 20]
    for box, mask in zip(t["boxes"], t["masks"]):
        ys, xs = np.nonzero(mask.numpy())
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    # A crop that leaves the 1-pixel object and most of the others outside: they are dropped.
    crop = A.Compose([A.Crop(x_min=0, y_min=0, x_max=20, y_max=20)])
    _, t = by_id(module(tree, eval_transforms=crop).dataset("val"))[2]
    assert t["masks"].shape[1:] == (20, 20)
    assert t["labels"].tolist() == [2, 1]  # the blob (cut) and the image-sized square
    assert t["boxes"].tolist() == [[2, 5, 12, 20], [0, 0, 20, 20]]
    assert ((t["boxes"][:, 2:] - t["boxes"][:, :2]) > 0).all()


def test_annotation_ids_renumbered_and_background_category(tree, caplog):
    data = json.loads((tree / "annotations.json").read_text())
    for a in data["annotations"]:
        a["id"] -= 1  # ids from 0, as labelme writes them
    data["categories"].append({"id": 0, "name": "_background_"})
    (tree / "annotations.json").write_text(json.dumps(data))
    coco = read_coco(tree / "annotations.json")
    assert sorted(coco.anns) == list(range(1, 8))
    assert "renumbered" in caplog.text
    dm = module(tree)
    assert dm.class_names == ["background", "square", "blob"]
    data["annotations"][0]["category_id"] = 0
    (tree / "annotations.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="named like the background"):
        module(tree)


def test_clear_errors(tree):
    with pytest.raises(ValueError, match=r"data.num_classes=5 .* set data.num_classes=3"):
        module(tree, num_classes=5)
    names = ["background", "square", "blob", "more"]
    with pytest.raises(ValueError, match=r"data.num_classes=4 .* set data.num_classes=3"):
        module(tree, num_classes=4, class_names=names).dataset("val")
    with pytest.raises(ValueError, match="data.class_names=null"):
        module(tree, class_names=["background", "a", "b"]).dataset("val")
    with pytest.raises(FileNotFoundError, match=r"annotation file .*nope.json"):
        module(tree, split_files={"val": {"images": "images", "annotations": "nope.json"}})
    (tree / "images" / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"2.png \(image id 2\)"):
        by_id(module(tree).dataset("val"))
    with pytest.raises(ValueError, match="RLE of size"):
        annotation_mask({"id": 9, "segmentation": {"size": [2, 2], "counts": "04"}}, 3, 3)
    with pytest.raises(ValueError, match="split=.test."):
        module(tree).dataset("test")


def test_semantic_view(tree):
    dm = module(tree, task="semantic")
    sample = dm.dataset("val")[0]  # image 1
    mask = sample["mask"].numpy()
    assert sample["image"].shape == (3, 48, 64)
    assert (mask[4:20, 4:20] == 1).all() and (mask[25:40, 30:60] == 2).all()
    assert (mask[0:4, 40:64] == 255).all()  # crowd, covered by nothing else
    assert set(np.unique(mask)) == {0, 1, 2, 255}


def test_real_voc_sample(tmp_path, compose_cfg):
    folder = require_data(*VOC_COCO)
    files = "{images: ., annotations: annotations.json}"
    cfg = compose_cfg(
        overrides=[
            "model=maskrcnn",
            "data=coco",
            f"data.data_dir={folder}",
            f"data.split_files={{train: {files}, val: {files}}}",
            "data.class_names=null",
            "data.num_classes=21",
            "data.num_workers=0",
        ],
        quick=False,
    )
    dm = build_datamodule(cfg.data)
    assert dm.class_names[0] == "background" and dm.class_names[15] == "person"
    assert len(dm.class_names) == 21 and "_background_" not in dm.class_names
    assert dm.label_to_category == {k: k for k in range(1, 21)}
    dataset = dm.dataset("val")
    assert len(dataset) == 3
    coco = dm.coco("val")
    assert min(coco.anns) == 1  # the file's annotation id 0 was renumbered
    total = 0
    for image, target in (dataset[i] for i in range(3)):
        info = coco.imgs[target["image_id"]]
        assert image.shape == (3, info["height"], info["width"])
        assert len(target["labels"]) == len(coco.imgToAnns[target["image_id"]])
        file_areas = [a["area"] for a in coco.imgToAnns[target["image_id"]]]
        # rasterised polygons: within a few percent of the file's polygon areas
        assert np.allclose(target["area"].numpy(), file_areas, rtol=0.1)
        total += len(target["labels"])
    assert total == 12
    assert sorted({int(v) for t in (dataset[i][1] for i in range(3)) for v in t["labels"]}) == [
        5,
        6,
        7,
        9,
        15,
        18,
    ]
