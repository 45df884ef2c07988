import re
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image
from support import require_data

from seglab.data.base import default_palette
from seglab.data.voc import VOC, VOCDataModule
from seglab.train import train
from seglab.utils.instantiate import build_datamodule

SAMPLE_IDS = ("2011_000003", "2011_000006", "2011_000025")
PALETTE = [v for colour in default_palette(256) for v in colour]


@pytest.fixture
def voc_sample() -> Path:
    return require_data("voc_labelme_examples", "instance_segmentation", "data_dataset_voc")


def _lists(root: Path, **lists: list[str]) -> None:
    folder = root / "ImageSets" / "Segmentation"
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in lists.items():
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")


def _sample_tree(sample: Path, base: Path) -> Path:
    """``base/VOCdevkit/VOC2012`` linking the sample's files, 2 ids in train and 1 in val."""
    root = base / "VOCdevkit" / "VOC2012"
    for folder, suffix in (("JPEGImages", "jpg"), ("SegmentationClass", "png")):
        (root / folder).mkdir(parents=True)
        for image_id in SAMPLE_IDS:
            (root / folder / f"{image_id}.{suffix}").symlink_to(
                sample / folder / f"{image_id}.{suffix}"
            )
    _lists(root, train=list(SAMPLE_IDS[:2]), val=[SAMPLE_IDS[2]])
    return root


def _ids(dataset) -> list[str]:
    return [image.stem for image, _ in dataset.pairs]


def _write_mask(path: Path, mask: np.ndarray, palette: bool = True) -> None:
    img = Image.fromarray(mask.astype(np.uint8), mode="L")
    if palette:
        img = img.convert("P")
        img.putpalette(PALETTE)
    img.save(path)


def _synthetic_tree(root: Path, sizes: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """A VOC2012 folder of random JPEGs with palette masks; each mask holds its image's index
    + 1 as the object class, 0 around it and a 255 border. Returns the masks by id."""
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    masks = {}
    for k, (image_id, (h, w)) in enumerate(sizes.items()):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{image_id}.jpg"
        )
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
        mask[h // 4 + 1 : 3 * h // 4 - 1, w // 4 + 1 : 3 * w // 4 - 1] = k + 1
        _write_mask(root / "SegmentationClass" / f"{image_id}.png", mask)
        masks[image_id] = mask
    return masks


@pytest.mark.realdata
def test_real_sample_in_a_voc_tree(voc_sample, tmp_path):
    root = _sample_tree(voc_sample, tmp_path)
    for data_dir in (tmp_path, tmp_path / "VOCdevkit", root):  # every accepted data_dir
        assert VOCDataModule(data_dir=str(data_dir)).voc_root == root
    dm = VOCDataModule(data_dir=str(tmp_path))
    train_set, val = dm.dataset("train"), dm.dataset("val")
    assert (len(train_set), len(val)) == (2, 1) and _ids(train_set) == list(SAMPLE_IDS[:2])

    # the class order of the sample's class_names.txt is ours (spelling aside)
    names = (voc_sample / "class_names.txt").read_text().split("\n")[:21]
    assert [re.sub(r"[^a-z]", "", n.lower()) for n in names] == [
        "background",
        *VOC.views["semantic"][1:],
    ]

    png = Image.open(voc_sample / "SegmentationClass" / f"{SAMPLE_IDS[0]}.png")
    assert png.mode == "P" and png.getpalette()[: 3 * 21] == [v for c in dm.palette for v in c]
    mask = train_set.load_mask(0)  # the indices, not the colours
    np.testing.assert_array_equal(mask, np.asarray(png))
    assert set(np.unique(mask)) == {0, 5, 15, 255}  # bottle, person, void
    assert [dm.class_names[c] for c in (5, 15)] == ["bottle", "person"]
    assert set(np.unique(val.load_mask(0))) == {0, 6, 7}  # bus, car

    sample = train_set.load_sample(1)
    jpeg = np.asarray(Image.open(voc_sample / "JPEGImages" / f"{SAMPLE_IDS[1]}.jpg"))
    np.testing.assert_array_equal(sample["image"], jpeg)
    assert sample["name"] == str(root / "JPEGImages" / f"{SAMPLE_IDS[1]}.jpg")
    item = train_set[0]
    assert item["image"].shape == (3, 338, 500) and item["mask"].dtype == torch.int64
    assert set(item["mask"].unique().tolist()) == {0, 5, 15, 255}

    # another ignore_index: void pixels move there, classes stay
    moved = VOCDataModule(data_dir=str(root), ignore_index=100).dataset("train").load_mask(0)
    np.testing.assert_array_equal(moved == 100, mask == 255)
    np.testing.assert_array_equal(moved[mask != 255], mask[mask != 255])


def test_augmented_train_set_and_median_frequency(tmp_path):
    root = tmp_path / "VOC2012"
    masks = _synthetic_tree(root, {"a": (20, 24), "b": (16, 16), "c": (12, 20)})
    _lists(root, train=["a", "b"], val=["c"])
    (root / "SegmentationClassAug").mkdir()
    aug = {}
    for image_id, mask in masks.items():  # SBD-style: plain indices, class 20, no void border
        aug[image_id] = np.where(mask == 0, 0, 20).astype(np.uint8)
        _write_mask(root / "SegmentationClassAug" / f"{image_id}.png", aug[image_id], False)
    _lists(
        root,
        train_aug=["b", "/JPEGImages/c.jpg /SegmentationClassAug/c.png", "a"],  # both line forms
    )

    plain = VOCDataModule(data_dir=str(tmp_path))
    assert _ids(plain.dataset("train")) == ["a", "b"]
    np.testing.assert_array_equal(plain.dataset("train").load_mask(1), masks["b"])
    # pixels of a class / labelled pixels of the images holding it, over a and b
    labelled = {i: int((masks[i] != 255).sum()) for i in "ab"}
    freq = np.array(
        [
            sum((masks[i] == 0).sum() for i in "ab") / sum(labelled.values()),
            (masks["a"] == 1).sum() / labelled["a"],
            (masks["b"] == 2).sum() / labelled["b"],
        ]
    )
    expected = np.zeros(21)
    expected[:3] = np.median(freq) / freq
    np.testing.assert_allclose(plain.median_frequency_weights(), expected, rtol=1e-6)

    dm = VOCDataModule(data_dir=str(tmp_path), augmented=True)
    train_set, val = dm.dataset("train"), dm.dataset("val")
    assert _ids(train_set) == ["b", "c", "a"]
    assert train_set.pairs[0][1].parent.name == "SegmentationClassAug"
    np.testing.assert_array_equal(train_set.load_mask(1), aug["c"])
    assert set(train_set[2]["mask"].unique().tolist()) == {0, 20}
    np.testing.assert_array_equal(val.load_mask(0), masks["c"])  # val keeps the official masks

    moved = tmp_path / "sbd"
    (root / "SegmentationClassAug").rename(moved)
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"folder {root}/SegmentationClassAug does not exist")
    ):
        VOCDataModule(data_dir=str(tmp_path), augmented=True).dataset("train")
    absolute = VOCDataModule(data_dir=str(root), augmented=True, aug_mask_folder=str(moved))
    np.testing.assert_array_equal(absolute.dataset("train").load_mask(0), aug["b"])


def test_errors_name_the_list_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"VOCdevkit/VOC2012; .*VOCtrainval_11-May-2012"):
        VOCDataModule(data_dir=str(tmp_path)).setup("fit")
    root = tmp_path / "VOCdevkit" / "VOC2012"
    masks = _synthetic_tree(root, {"a": (8, 8), "b": (8, 8)})
    expected_list = re.escape(str(root / "ImageSets" / "Segmentation" / "train.txt"))
    with pytest.raises(FileNotFoundError, match=rf"list file {expected_list} not found"):
        VOCDataModule(data_dir=str(tmp_path)).setup("fit")
    _lists(root, train=["a", "b", "x"], val=[""])
    with pytest.raises(
        FileNotFoundError, match=r"image .*JPEGImages/x\.jpg of the pair x\.jpg not found"
    ):
        VOCDataModule(data_dir=str(tmp_path)).dataset("train")
    with pytest.raises(ValueError, match=r"val\.txt lists nothing"):
        VOCDataModule(data_dir=str(tmp_path)).dataset("val")

    _lists(root, train=["a", "b"])
    bad = masks["b"].copy()
    bad[0, 0] = 21
    _write_mask(root / "SegmentationClass" / "b.png", bad)
    dm = VOCDataModule(data_dir=str(tmp_path))
    path = re.escape(str(root / "SegmentationClass" / "b.png"))
    with pytest.raises(ValueError, match=rf"voc label file {path} holds label\(s\) \[21\]"):
        dm.dataset("train")[1]
    with pytest.raises(ValueError, match=path):
        dm.median_frequency_weights()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "SegmentationClass" / "b.png")
    with pytest.raises(ValueError, match=rf"{path} has Pillow mode 'RGB'"):
        dm.dataset("train").load_mask(1)

    with pytest.raises(ValueError, match="split 'test' has no labels to score: VOC 2012 test"):
        dm.setup("test")
    # DeepLab's list lines name the image and the mask: the id is the first path's stem
    _lists(root, train=["/JPEGImages/a.jpg /SegmentationClass/a.png", "b"])
    assert _ids(VOCDataModule(data_dir=str(tmp_path)).dataset("train")) == ["a", "b"]


def test_hydra_config_train_pipeline(compose_cfg, tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    _synthetic_tree(root, {"a": (30, 40), "b": (28, 36), "c": (44, 30)})
    _lists(root, train=["a", "b"], val=["c", "a"])
    cfg = compose_cfg(
        overrides=["data=voc", "trainer.accelerator=cpu", f"data.data_dir={tmp_path}"],
        quick=False,
    )
    assert cfg.data.crop_size == 512 and cfg.data.eval_batch_size == 1
    dm = build_datamodule(
        compose_cfg(
            overrides=[
                "data=voc",
                "trainer.accelerator=cpu",
                "data.crop_size=64",
                "data.batch_size=2",
                f"data.data_dir={tmp_path}",
            ],
            quick=False,
        ).data
    )
    assert isinstance(dm, VOCDataModule) and dm.class_names == list(VOC.views["semantic"])
    assert dm.palette == default_palette(21) and dm.palette[15] == [192, 128, 128]
    assert dm.mean == pytest.approx((0.485, 0.456, 0.406))
    kinds = [type(t) for t in dm.train_transforms.transforms]
    assert kinds == [A.RandomScale, A.PadIfNeeded, A.RandomCrop, A.HorizontalFlip]
    assert dm.train_transforms.transforms[0].scale_limit == pytest.approx((-0.5, 1.0))

    dm.setup("fit")
    dm.train_transforms.set_random_seed(0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["mask"].shape == (2, 64, 64)
    train_set = dm.dataset("train")
    for _ in range(4):
        item = train_set[0]  # 30x40 scaled by at most 2: the crop always holds padding
        mask, image = item["mask"], item["image"]
        assert set(mask.unique().tolist()) <= {0, 1, 255}
        pad = (mask == 255).all(dim=1)  # whole padded rows (bottom)
        assert pad.any() and (mask == 1).any()
        assert image[:, pad].abs().max() < 0.03  # the mean colour: zero after normalisation

    sizes = [tuple(b["image"].shape) for b in dm.val_dataloader()]
    assert sizes == [(1, 3, 44, 30), (1, 3, 30, 40)]  # whole, one image a batch


def test_fast_dev_run(compose_cfg, tmp_path):
    root = tmp_path / "VOC2012"
    _synthetic_tree(root, {"a": (30, 40), "b": (28, 36), "c": (44, 30)})
    _lists(root, train=["a", "b"], val=["c", "a"])
    overrides = [
        "model=unet_small",
        "data=voc",
        "debug=fast_dev_run",
        "data.batch_size=2",
        "data.crop_size=32",
        "model.net.base_channels=8",
        "model.loss.class_weights=median_frequency",
        f"data.data_dir={root}",
    ]
    metrics, objects = train(compose_cfg(overrides=overrides, quick=False))
    assert np.isfinite(metrics["fit"]["train/loss"])
    assert 0.0 <= metrics["val"]["val/pixel_acc"] <= 1.0
    weights = objects["model"].class_weights
    assert weights.shape == (21,) and (weights[:3] > 0).all() and (weights[3:] == 0).all()
