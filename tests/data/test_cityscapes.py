"""Cityscapes on synthetic trees in the official layout (no real sample of it is stored)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.data.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    CityscapesDataModule,
    labelids_to_trainids,
    list_cityscapes,
    read_cityscapes_label,
    trainids_to_labelids,
)
from seglab.train import train
from seglab.utils.instantiate import build_datamodule

H, W = 32, 64
# labels.py: label id -> trainId of the 19 evaluated classes; every other id is void.
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
             25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _label_ids(seed: int) -> np.ndarray:
    """(H, W) uint8 label ids: every id 0..33 in the first row, random ids elsewhere."""
    ids = np.random.default_rng(seed).integers(0, 34, (H, W), dtype=np.uint8)
    ids[0, :34] = np.arange(34)
    return ids


def _expected(ids: np.ndarray) -> np.ndarray:
    out = np.full(ids.shape, 255, np.int64)
    for label_id, train_id in TRAIN_IDS.items():
        out[ids == label_id] = train_id
    return out


def _write_frame(
    root: Path, split: str, city: str, frame: int, *, train_ids: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Write one image and its labelIds (and, if asked, labelTrainIds) file; return both."""
    stem = f"{city}_{frame:06d}_{frame * 19:06d}"
    (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
    (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(frame)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    ids = _label_ids(frame)
    Image.fromarray(image).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
    gt = root / "gtFine" / split / city
    Image.fromarray(ids).save(gt / f"{stem}_gtFine_labelIds.png")
    Image.fromarray(ids).convert("RGB").save(gt / f"{stem}_gtFine_color.png")  # not read
    if train_ids:
        trainid = _expected(ids).astype(np.uint8)
        Image.fromarray(trainid).save(gt / f"{stem}_gtFine_labelTrainIds.png")
    return image, ids


def _tree(root: Path, *, train_ids: bool = False) -> dict[str, list]:
    frames = {"train": [], "val": []}
    for split, city, frame in (
        ("train", "aachen", 1),
        ("train", "aachen", 2),
        ("train", "bochum", 3),
        ("val", "frankfurt", 4),
        ("val", "lindau", 5),
    ):
        frames[split].append(_write_frame(root, split, city, frame, train_ids=train_ids))
    return frames


def _compose_data(compose_cfg, root: Path, *extra: str):
    cfg = compose_cfg(
        overrides=[
            "data=cityscapes",
            "trainer.accelerator=cpu",
            f"data.data_dir={root}",
            "data.num_workers=0",
            "data.batch_size=2",
            *extra,
        ],
        quick=False,
    )
    return cfg, build_datamodule(cfg.data)


def test_label_ids_map_to_train_ids():
    ids = np.arange(256, dtype=np.uint8)
    train = labelids_to_trainids(ids)
    assert train.dtype == np.uint8
    np.testing.assert_array_equal(train, _expected(ids))
    assert (train[7], train[26], train[0], train[33], train[34]) == (0, 13, 255, 18, 255)
    # license plate (id -1) and any other out-of-table id become void in signed arrays too
    signed = labelids_to_trainids(np.array([[-1, 7], [26, 1000]], np.int32))
    np.testing.assert_array_equal(signed, [[255, 0], [13, 255]])
    wide = labelids_to_trainids(np.array([0, 24, -1]), ignore_index=300)
    assert wide.dtype == np.int32 and wide.tolist() == [300, 11, 300]
    # and back, for server submissions
    back = trainids_to_labelids(np.array([0, 13, 18, 255]))
    assert back.tolist() == [7, 26, 33, 0]
    assert len(CITYSCAPES_CLASSES) == 19 and CITYSCAPES_CLASSES[13] == "car"
    assert CITYSCAPES_PALETTE[0] == (128, 64, 128) and CITYSCAPES_PALETTE[13] == (0, 0, 142)


def test_tree_pairs_masks_and_loaders(compose_cfg, tmp_path):
    root = tmp_path / "cityscapes"
    frames = _tree(root)
    pairs = list_cityscapes(root, "train")
    assert [p[0].name for p in pairs] == [
        "aachen_000001_000019_leftImg8bit.png",
        "aachen_000002_000038_leftImg8bit.png",
        "bochum_000003_000057_leftImg8bit.png",
    ]
    assert pairs[2][1] == root / "gtFine/train/bochum/bochum_000003_000057_gtFine_labelIds.png"

    # crop 130 > 2.0 x (32, 64): every train crop holds padding below row 64 and in at least
    # two columns on one side (the right, or the left after a flip)
    _, dm = _compose_data(compose_cfg, root, "data.crop_size=130")
    assert isinstance(dm, CityscapesDataModule) and dm.label_type == "labelIds"
    assert dm.class_names == list(CITYSCAPES_CLASSES) and dm.num_classes == 19
    assert [tuple(c) for c in dm.palette] == list(CITYSCAPES_PALETTE)
    assert dm.mean == pytest.approx(tuple(MEAN)) and dm.eval_batch_size == 1
    dm.setup("fit")
    assert len(dm.dataset("train")) == 3 and len(dm.dataset("val")) == 2

    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 130, 130) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 130, 130) and batch["mask"].dtype == torch.int64
    labels = set(batch["mask"].unique().tolist())
    assert labels <= set(range(19)) | {255} and len(labels) > 5
    for image, mask in zip(batch["image"], batch["mask"]):
        assert (mask[64:] == 255).all()
        assert (mask[:, :2] == 255).all() or (mask[:, -2:] == 255).all()
        assert image[:, 64:].abs().max() < 0.02  # mean-colour padding: ~0 once normalised

    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (1, 3, H, W) and val["mask"].shape == (1, H, W)
    image, ids = frames["val"][0]
    np.testing.assert_array_equal(val["mask"][0].numpy(), _expected(ids))
    restored = (val["image"][0].numpy().transpose(1, 2, 0) * STD + MEAN) * 255
    np.testing.assert_allclose(restored, image, atol=1e-3)
    assert val["name"][0].endswith(
        "leftImg8bit/val/frankfurt/frankfurt_000004_000076_leftImg8bit.png"
    )


def test_train_ids_files(tmp_path):
    root = tmp_path / "cityscapes"
    _tree(root, train_ids=True)
    by_ids = CityscapesDataModule(data_dir=str(root)).dataset("val")
    by_train = CityscapesDataModule(data_dir=str(root), label_type="trainIds").dataset("val")
    assert by_train.pairs[0][1].name.endswith("_gtFine_labelTrainIds.png")
    for i in range(2):
        np.testing.assert_array_equal(by_ids.load_mask(i), by_train.load_mask(i))
        assert (by_train.load_mask(i) == 255).any()
    remapped = CityscapesDataModule(data_dir=str(root), label_type="trainIds", ignore_index=254)
    mask = remapped.dataset("val").load_mask(0)
    assert (mask == 254).any() and not (mask == 255).any()

    bad = by_train.pairs[1][1]
    Image.fromarray(np.full((H, W), 30, np.uint8)).save(bad)
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))}.*\[30\]"):
        by_train.load_mask(1)
    bad.unlink()
    with pytest.raises(
        FileNotFoundError, match=rf"{re.escape(str(bad))}.*csCreateTrainIdLabelImgs"
    ):
        CityscapesDataModule(data_dir=str(root), label_type="trainIds").setup("validate")


def test_missing_files_test_split_and_bad_config(tmp_path):
    root = tmp_path / "cityscapes"
    with pytest.raises(
        FileNotFoundError,
        match=rf"{re.escape(str(root / 'leftImg8bit' / 'train'))}.*gtFine_trainvaltest",
    ):
        CityscapesDataModule(data_dir=str(root)).setup("fit")
    _tree(root)
    (root / "leftImg8bit/test/berlin").mkdir(parents=True)
    (root / "gtFine/test/berlin").mkdir(parents=True)
    with pytest.raises(ValueError, match="split 'test' cannot be scored.*void everywhere"):
        CityscapesDataModule(data_dir=str(root)).setup("test")

    label = root / "gtFine/val/lindau/lindau_000005_000095_gtFine_labelIds.png"
    colour = np.zeros((H, W, 3), np.uint8)
    Image.fromarray(colour).save(label)
    with pytest.raises(ValueError, match=rf"{re.escape(str(label))} is a RGB image"):
        CityscapesDataModule(data_dir=str(root)).dataset("val")[1]
    label.unlink()
    with pytest.raises(
        FileNotFoundError, match=rf"label {re.escape(str(label))} of image .*lindau"
    ):
        CityscapesDataModule(data_dir=str(root)).setup("validate")
    with pytest.raises(ValueError, match="data.label_type"):
        read_cityscapes_label(label, "color")

    with pytest.raises(ValueError, match="data.task"):
        CityscapesDataModule(data_dir=str(root), task="instance")
    with pytest.raises(ValueError, match="data.num_classes=20"):
        CityscapesDataModule(data_dir=str(root), num_classes=20, class_names=None)
    with pytest.raises(ValueError, match="data.ignore_index=5"):
        CityscapesDataModule(data_dir=str(root), ignore_index=5)
    with pytest.raises(ValueError, match="data.label_type='labelTrainIds'"):
        CityscapesDataModule(data_dir=str(root), label_type="labelTrainIds")


def test_fast_dev_run(compose_cfg, tmp_path):
    root = tmp_path / "cityscapes"
    _tree(root)
    overrides = [
        "model=unet_small",
        "data=cityscapes",
        "debug=fast_dev_run",
        f"data.data_dir={root}",
        "data.crop_size=32",
        "data.batch_size=2",
        "model.net.base_channels=8",
    ]
    metrics, objects = train(compose_cfg(overrides=overrides, quick=False))
    assert isinstance(objects["datamodule"], CityscapesDataModule)
    assert objects["model"].num_classes == 19
    assert np.isfinite(metrics["fit"]["train/loss"])
    assert 0.0 <= metrics["val"]["val/pixel_acc"] <= 1.0
