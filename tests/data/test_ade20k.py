"""ADE20K SceneParsing on synthetic trees in the release's layout (no real sample is stored)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.data.ade20k import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    ADE20KDataModule,
    find_ade20k_root,
    list_ade20k,
    read_ade20k_label,
)
from seglab.train import train
from seglab.utils.instantiate import build_datamodule

SIZES = {
    ("training", 1): (32, 48),
    ("training", 2): (40, 32),
    ("training", 3): (24, 64),
    ("validation", 1): (32, 48),
    ("validation", 2): (36, 52),
}


def _annotation(shape: tuple[int, int], seed: int) -> np.ndarray:
    """(H, W) uint8 values 0..150 with 0, 1, 75 and 150 in the first row."""
    ann = np.random.default_rng(seed).integers(0, 151, shape, dtype=np.uint8)
    ann[0, :4] = (0, 1, 75, 150)
    return ann


def _tree(parent: Path, *, grey: tuple[str, int] | None = ("training", 2)) -> dict:
    """ADEChallengeData2016 under ``parent``; the image ``grey`` is a greyscale JPEG."""
    root = parent / "ADEChallengeData2016"
    written = {}
    for (folder, k), shape in SIZES.items():
        prefix = "ADE_train" if folder == "training" else "ADE_val"
        stem = f"{prefix}_{k:08d}"
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(k)
        image = np.repeat(np.linspace(0, 255, shape[1], dtype=np.uint8)[None], shape[0], 0)
        if (folder, k) == grey:
            Image.fromarray(image, "L").save(root / "images" / folder / f"{stem}.jpg")
        else:
            rgb = np.dstack([image, 255 - image, rng.integers(0, 256, shape, dtype=np.uint8)])
            Image.fromarray(rgb).save(root / "images" / folder / f"{stem}.jpg")
        ann = _annotation(shape, k)
        Image.fromarray(ann).save(root / "annotations" / folder / f"{stem}.png")
        written[(folder, k)] = ann
    (root / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n")
    return written


def test_class_names_palette_and_label_mapping(tmp_path):
    assert len(ADE20K_CLASSES) == len(set(ADE20K_CLASSES)) == 150
    assert ADE20K_CLASSES[:3] == ("wall", "building", "sky") and ADE20K_CLASSES[-1] == "flag"
    assert ADE20K_CLASSES[12] == "person" and ADE20K_CLASSES[44] == "chest of drawers"
    assert len(ADE20K_PALETTE) == 150 and ADE20K_PALETTE[0] == (120, 120, 120)

    path = tmp_path / "a.png"
    raw = np.array([[0, 1, 75, 150], [2, 0, 149, 3]], np.uint8)
    Image.fromarray(raw).save(path)
    mask = read_ade20k_label(path)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, [[255, 0, 74, 149], [1, 255, 148, 2]])
    wide = read_ade20k_label(path, ignore_index=300)
    assert wide.dtype == np.int32 and wide[0, 0] == 300 and wide[0, 3] == 149

    raw[1, 1] = 151
    Image.fromarray(raw).save(path)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} holds value\(s\) \[151\]"):
        read_ade20k_label(path)
    Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(path)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} is a RGB image"):
        read_ade20k_label(path)


def test_root_either_folder_pairs_and_greyscale(tmp_path):
    written = _tree(tmp_path)
    release = tmp_path / "ADEChallengeData2016"
    assert find_ade20k_root(tmp_path) == release == find_ade20k_root(release)
    pairs = list_ade20k(release, "val")
    assert [(i.name, a.name) for i, a in pairs] == [
        ("ADE_val_00000001.jpg", "ADE_val_00000001.png"),
        ("ADE_val_00000002.jpg", "ADE_val_00000002.png"),
    ]
    for data_dir in (tmp_path, release):
        dm = ADE20KDataModule(data_dir=str(data_dir))
        assert dm.root == release and len(dm.dataset("train")) == 3

    train_set = dm.dataset("train")
    sample = train_set.load_sample(1)  # the greyscale JPEG
    assert sample["image"].shape == (40, 32, 3) and sample["image"].dtype == np.uint8
    assert (sample["image"][..., 0] == sample["image"][..., 2]).all()
    with Image.open(train_set.pairs[1][0]) as img:
        assert img.mode == "L"
    np.testing.assert_array_equal(
        sample["mask"], np.where(written[("training", 2)] == 0, 255, written[("training", 2)] - 1)
    )
    item = train_set[1]
    assert item["image"].shape == (3, 40, 32) and item["mask"].dtype == torch.int64


def test_loaders_through_the_yaml(compose_cfg, tmp_path):
    written = _tree(tmp_path / "data")
    cfg = compose_cfg(
        overrides=[
            "data=ade20k",
            "trainer.accelerator=cpu",
            f"data.data_dir={tmp_path / 'data'}",
            "data.num_workers=0",
            "data.batch_size=2",
            "data.crop_size=48",
        ],
        quick=False,
    )
    dm = build_datamodule(cfg.data)
    assert isinstance(dm, ADE20KDataModule)
    assert dm.class_names == list(ADE20K_CLASSES) and dm.num_classes == 150
    assert [tuple(c) for c in dm.palette] == list(ADE20K_PALETTE)  # palette: null -> mmseg's
    assert dm.std == pytest.approx((0.229, 0.224, 0.225)) and dm.eval_batch_size == 1
    dm.setup("fit")
    assert len(dm.dataset("train")) == 3 and len(dm.dataset("val")) == 2

    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 48, 48) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 48, 48) and batch["mask"].dtype == torch.int64
    values = set(batch["mask"].unique().tolist())
    assert values <= set(range(150)) | {255} and len(values) > 10

    shapes = []
    for item, key in zip(dm.val_dataloader(), [("validation", 1), ("validation", 2)]):
        shapes.append(tuple(item["image"].shape))
        ann = written[key].astype(np.int64)
        np.testing.assert_array_equal(item["mask"][0].numpy(), np.where(ann == 0, 255, ann - 1))
    assert shapes == [(1, 3, 32, 48), (1, 3, 36, 52)]  # whole images, one per batch


def test_missing_files_test_split_and_bad_config(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(
        FileNotFoundError, match=rf"{re.escape(str(missing))}.*ADEChallengeData2016\.zip"
    ):
        ADE20KDataModule(data_dir=str(missing)).setup("fit")
    with pytest.raises(FileNotFoundError, match="found neither"):
        ADE20KDataModule(data_dir=str(tmp_path)).setup("fit")

    _tree(tmp_path)
    release = tmp_path / "ADEChallengeData2016"
    with pytest.raises(ValueError, match="split 'test' has no labels"):
        ADE20KDataModule(data_dir=str(tmp_path)).setup("test")
    annotation = release / "annotations/validation/ADE_val_00000002.png"
    annotation.unlink()
    with pytest.raises(
        FileNotFoundError,
        match=rf"annotation {re.escape(str(annotation))} of image .*ADE_val_00000002\.jpg",
    ):
        ADE20KDataModule(data_dir=str(tmp_path)).setup("validate")
    for path in (release / "images/training").iterdir():
        path.unlink()
    with pytest.raises(FileNotFoundError, match=r"no \.jpg image in .*images/training"):
        ADE20KDataModule(data_dir=str(tmp_path)).setup("fit")

    with pytest.raises(ValueError, match="data.task"):
        ADE20KDataModule(data_dir=str(tmp_path), task="panoptic")
    with pytest.raises(ValueError, match="data.num_classes=151"):
        ADE20KDataModule(data_dir=str(tmp_path), num_classes=151, class_names=None)
    with pytest.raises(ValueError, match="data.ignore_index=0"):
        ADE20KDataModule(data_dir=str(tmp_path), ignore_index=0)


def test_fast_dev_run(compose_cfg, tmp_path):
    _tree(tmp_path / "data")
    overrides = [
        "model=unet_small",
        "data=ade20k",
        "debug=fast_dev_run",
        f"data.data_dir={tmp_path / 'data'}",
        "data.crop_size=32",
        "data.batch_size=2",
        "model.net.base_channels=8",
    ]
    metrics, objects = train(compose_cfg(overrides=overrides, quick=False))
    assert isinstance(objects["datamodule"], ADE20KDataModule)
    assert objects["model"].num_classes == 150
    assert np.isfinite(metrics["fit"]["train/loss"])
    assert 0.0 <= metrics["val"]["val/pixel_acc"] <= 1.0
