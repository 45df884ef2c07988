"""Bad COCO input is refused with one line naming the file and the entry, and what to do.

The JSON checks run when the file is read (the data module's construction or setup: before any
training); a missing image file is found at setup (one stat per image); a truncated image or one
of another size than the JSON says is found when it is read (decoding every image at setup
would take minutes on COCO), the error naming the file.
"""

import json
from pathlib import Path

import pytest
from instance.coco_tree import write_edge_case_tree, write_panoptic_tree
from support import QUICK_TRAIN, run_cli

from seglab.data.coco import CocoDataModule
from seglab.data.coco_panoptic import CocoPanopticDataModule


def coco(root: Path) -> CocoDataModule:
    files = {"images": "images", "annotations": "annotations.json"}
    return CocoDataModule(
        task="instance",
        data_dir=str(root),
        split_files={"train": files, "val": files},
        num_classes=3,
        class_names=None,
    )


def panoptic(root: Path) -> CocoPanopticDataModule:
    files = {"images": "images", "annotations": "panoptic.json", "panoptic": "panoptic"}
    return CocoPanopticDataModule(task="panoptic", data_dir=str(root), split_files={"val": files})


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def rewrite(root: Path, name: str, edit) -> None:
    data = json.loads((root / name).read_text())
    edit(data)
    (root / name).write_text(json.dumps(data))


def polygon(points):
    return lambda d: d["annotations"][0].update(segmentation=[points])


JSON_CASES = {
    "image-id-not-listed": (
        lambda d: d["annotations"][1].update(image_id=99),
        r"annotations\[1\] \(id 2\) has image_id 99, which the file's 'images' do not list; fix",
    ),
    "polygon-of-4-numbers": (
        polygon([4.0, 4.0, 20.0, 4.0]),
        r"annotations\[0\] \(id 1\) has a polygon of 4 numbers: expected x, y pairs",
    ),
    "polygon-of-7-numbers": (polygon([4, 4, 20, 4, 20, 20, 4]), "a polygon of 7 numbers"),
    "polygon-outside": (
        polygon([4, 4, 90, 4, 20, 20]),
        r"annotations\[0\] \(id 1\) has a polygon outside its 48x64 image; fix or remove it",
    ),
    "bbox-outside": (
        lambda d: d["annotations"][1].update(bbox=[30, 25, 30, 40]),
        r"annotations\[1\] \(id 2\) has bbox \[30, 25, 30, 40\] outside its 48x64 image",
    ),
    "rle-of-another-size": (
        lambda d: d["annotations"][1]["segmentation"].update(size=[40, 64]),
        r"annotations\[1\] \(id 2\) has an RLE of size \[40, 64\] on its 48x64 image",
    ),
    "duplicate-image-id": (
        lambda d: d["images"][2].update(id=1),
        r"images\[2\] repeats image id 1: give each image its own id",
    ),
}


@pytest.mark.parametrize("case", JSON_CASES)
def test_bad_json_refused_before_training(tmp_path, case):
    data = write_edge_case_tree(tmp_path)
    edit, message = JSON_CASES[case]
    edit(data)
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=rf"^data=coco: .*annotations\.json: .*{message}") as err:
        coco(tmp_path)  # reads the first split's file to take the class names
    assert "\n" not in str(err.value)
    assert snapshot(tmp_path) == before


def test_missing_image_found_at_setup(tmp_path):
    write_edge_case_tree(tmp_path)
    (tmp_path / "images" / "3.png").unlink()
    dm = coco(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"images/3.png \(image id 3\) of .*annotations"):
        dm.dataset("val")  # no image is decoded: only their presence is checked


@pytest.mark.parametrize("case", ["truncated", "other-size"])
def test_bad_image_named_when_read(tmp_path, case):
    write_edge_case_tree(tmp_path)
    image = tmp_path / "images" / "3.png"  # 40x40, no annotation
    if case == "truncated":
        image.write_bytes(image.read_bytes()[:-200])
        message = r"images/3.png' could not be read \(.*\); replace it or remove image id 3 and"
    else:
        rewrite(tmp_path, "annotations.json", lambda d: d["images"][2].update(width=41))
        message = r"images/3.png is 40x40 but .*annotations.json says 40x41; replace it or"
    dataset = coco(tmp_path).dataset("val")
    dataset[1]  # the other images read
    with pytest.raises(ValueError, match=message):
        dataset[2]


PANOPTIC_CASES = {
    "image-id-not-listed": (
        lambda d: d["annotations"][1].update(image_id=99),
        r"annotates image id 99 \(2.png\) that its 'images' do not list; fix its image_id",
    ),
    "duplicate-image-id": (
        lambda d: d["images"][1].update(id=1),
        r"lists image id 1 twice in 'images': give each image its own id",
    ),
    "bbox-outside": (
        lambda d: d["annotations"][0]["segments_info"][1].update(bbox=[30, 4, 8, 8]),
        r"segment 9 of 1.png has bbox \[30, 4, 8, 8\] outside its 24x32 image",
    ),
}


@pytest.mark.parametrize("case", PANOPTIC_CASES)
def test_bad_panoptic_json_refused_at_setup(tmp_path, case):
    write_panoptic_tree(tmp_path)
    edit, message = PANOPTIC_CASES[case]
    rewrite(tmp_path, "panoptic.json", edit)
    with pytest.raises(ValueError, match=rf"^data=coco_panoptic: .*panoptic.json.* {message}"):
        panoptic(tmp_path).dataset("val")


def test_bad_panoptic_files(tmp_path):
    write_panoptic_tree(tmp_path)
    (tmp_path / "panoptic" / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"panoptic PNG .*panoptic/2.png of .*json not"):
        panoptic(tmp_path).dataset("val")
    write_panoptic_tree(tmp_path)
    image = tmp_path / "images" / "2.png"
    image.write_bytes(image.read_bytes()[:-100])
    dataset = panoptic(tmp_path).dataset("val")
    dataset[0]
    with pytest.raises(ValueError, match=r"images/2.png' could not be read .*; replace it or"):
        dataset[1]


def test_train_refuses_a_truncated_image_and_writes_no_checkpoint(tmp_path):
    """End to end: the run stops at the first read of the image, non-zero, naming it."""
    write_edge_case_tree(tmp_path / "coco")
    image = tmp_path / "coco" / "images" / "1.png"
    image.write_bytes(image.read_bytes()[:-200])
    files = "{images: images, annotations: annotations.json}"
    quick = [o for o in QUICK_TRAIN if not o.startswith(("data.num_samples", "data.image_size"))]
    result = run_cli(
        "train.py",
        *quick,
        "data=coco",  # its semantic view, with the default model=unet_small
        f"data.data_dir={tmp_path / 'coco'}",
        f"data.split_files={{train: {files}, val: {files}}}",
        "data.class_names=null",
        "data.num_classes=3",
        "data.num_workers=0",
        "data.batch_size=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode != 0
    assert "images/1.png' could not be read" in result.stderr
    assert "replace it or remove image id 1" in result.stderr
    assert not list((tmp_path / "run").rglob("*.ckpt"))
