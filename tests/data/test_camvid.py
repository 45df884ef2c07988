import re
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
from PIL import Image
from support import require_data

from seglab.data.camvid import CAMVID, CamVidDataModule
from seglab.train import train
from seglab.utils.instantiate import build_datamodule

FIRST_TRAIN = "0001TP_006690"


@pytest.fixture
def camvid_dir() -> Path:
    return require_data("camvid", "CamVid")


def _subset_list(camvid_dir: Path, out: Path, n: int) -> Path:
    """A list file of the first ``n`` pairs of train.txt (docker paths kept)."""
    lines = (camvid_dir / "train.txt").read_text().splitlines()[:n]
    out.write_text("\n".join(lines) + "\n")
    return out


@pytest.mark.realdata
def test_real_lists_splits_and_labels(camvid_dir):
    dm = CamVidDataModule(data_dir=str(camvid_dir), test_list="test_subset.txt")
    train_set, val, test = (dm.dataset(s) for s in ("train", "val", "test"))
    assert (len(train_set), len(val), len(test)) == (367, 101, 59)
    image_path, label_path = train_set.pairs[0]
    assert image_path == camvid_dir / "train" / f"{FIRST_TRAIN}.png"
    assert label_path == camvid_dir / "trainannot" / f"{FIRST_TRAIN}.png"
    assert val.pairs[0][1].parent.name == "valannot" and test.pairs[0][0].parent.name == "test"

    raw = np.asarray(Image.open(label_path))
    mask = train_set.load_mask(0)  # SegNet's ignore label 11 (Unlabelled) is the default
    assert (raw == 11).any() and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, raw)
    moved = CamVidDataModule(data_dir=str(camvid_dir), ignore_index=255).dataset("train")
    np.testing.assert_array_equal(moved.load_mask(0) == 255, raw == 11)
    np.testing.assert_array_equal(moved.load_mask(0)[raw != 11], raw[raw != 11])

    item = train_set[0]
    assert item["image"].shape == (3, 360, 480) and item["mask"].shape == (360, 480)
    assert item["name"] == str(image_path)
    values = set(item["mask"].unique().tolist())
    assert values <= set(range(12)) and 11 in values and len(values) > 5
    rgb = np.asarray(Image.open(image_path), np.float32)[200, 300] / 255
    expected = (rgb - np.array(dm.mean)) / np.array(dm.std)  # the defaults = the yaml's
    np.testing.assert_allclose(item["image"][:, 200, 300].numpy(), expected, rtol=1e-4)

    # test.txt lists all 233 test pairs; the sample holds 59 of them
    listed = [line.split()[0] for line in (camvid_dir / "test.txt").read_text().splitlines()]
    missing = next(
        camvid_dir / "test" / Path(p).name
        for p in listed
        if not (camvid_dir / "test" / Path(p).name).is_file()
    )
    full = CamVidDataModule(data_dir=str(camvid_dir))
    with pytest.raises(
        FileNotFoundError, match=rf"test\.txt line \d+ lists {re.escape(str(missing))}"
    ):
        full.setup("test")


@pytest.mark.realdata
def test_median_frequency_on_a_train_subset(camvid_dir, tmp_path):
    subset = _subset_list(camvid_dir, tmp_path / "few.txt", 5)
    dm = CamVidDataModule(data_dir=str(camvid_dir), train_list=str(subset))
    assert len(dm.dataset("train")) == 5

    counts = np.zeros(11)
    image_counts = np.zeros(11)
    for _, label in dm.dataset("train").pairs:
        raw = np.asarray(Image.open(label)).astype(np.int64)
        for c in range(11):
            n = (raw == c).sum()
            counts[c] += n
            image_counts[c] += (raw != 11).sum() if n else 0
    present = counts > 0
    assert (~present).any() and present.sum() > 5  # a class absent from the subset gets 0
    freq = counts[present] / image_counts[present]
    expected = np.zeros(11)
    expected[present] = np.median(freq) / freq

    weights = dm.median_frequency_weights()
    assert len(weights) == 11
    np.testing.assert_allclose(weights, expected, rtol=1e-5)
    # another ignore_index gives the same weights
    same = CamVidDataModule(data_dir=str(camvid_dir), train_list=str(subset), ignore_index=255)
    assert (same.dataset("train").load_mask(0) == 255).any()
    np.testing.assert_allclose(same.median_frequency_weights(), expected, rtol=1e-5)


def test_list_files(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "trainannot").mkdir()
    for folder in ("train", "trainannot"):
        Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / folder / "a.png")
    (tmp_path / "train.txt").write_text(
        "/SegNet/CamVid/train/a.png /SegNet/CamVid/trainannot/a.png\n"
    )
    with pytest.raises(FileNotFoundError, match=re.escape(f"list file {tmp_path / 'val.txt'}")):
        CamVidDataModule(data_dir=str(tmp_path)).setup("fit")

    listed = tmp_path / "train" / "gone.png"
    lines = "/x/train/a.png /x/trainannot/a.png\n/x/train/gone.png /x/trainannot/a.png\n"
    (tmp_path / "val.txt").write_text(lines)
    with pytest.raises(
        FileNotFoundError,
        match=rf"{re.escape(str(tmp_path / 'val.txt'))} line 2 lists {re.escape(str(listed))}",
    ):
        CamVidDataModule(data_dir=str(tmp_path)).dataset("val")
    (tmp_path / "val.txt").write_text("train/a.png trainannot/a.png\n\n")  # relative paths work
    assert len(CamVidDataModule(data_dir=str(tmp_path)).dataset("val")) == 1
    (tmp_path / "val.txt").write_text("train/a.png\n")
    with pytest.raises(ValueError, match=r"line 1 of .*val\.txt is 'train/a\.png'"):
        CamVidDataModule(data_dir=str(tmp_path)).dataset("val")
    (tmp_path / "val.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"val\.txt lists nothing"):
        CamVidDataModule(data_dir=str(tmp_path)).dataset("val")


@pytest.mark.realdata
def test_hydra_config_builds_the_datamodule(compose_cfg, camvid_dir):
    cfg = compose_cfg(
        overrides=[
            "data=camvid",
            "trainer.accelerator=cpu",
            "data.batch_size=2",
            "data.test_list=test_subset.txt",
            f"data.data_dir={camvid_dir}",
        ],
        quick=False,
    )
    dm = build_datamodule(cfg.data)
    assert isinstance(dm, CamVidDataModule)
    assert dm.class_names == list(CAMVID.views["semantic"]) and dm.num_classes == 11
    assert dm.palette == [list(c) for c in CAMVID.palette] and dm.palette[4] == [60, 40, 222]
    assert dm.ignore_index == 11 and cfg.model.ignore_index == 11
    assert dm.mean == pytest.approx((0.412, 0.425, 0.433))
    assert [type(t) for t in dm.train_transforms.transforms] == [A.HorizontalFlip]
    dm.setup("fit")
    assert len(dm.dataset("train")) == 367 and len(dm.dataset("val")) == 101

    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 360, 480) and batch["mask"].shape == (2, 360, 480)
    # the flip moves image and mask together, and nothing else changes
    train_set = dm.dataset("train")
    dm.train_transforms.set_random_seed(0)
    flipped = 0
    for i in range(8):
        mask = train_set[i]["mask"].numpy()
        raw = train_set.load_mask(i)
        assert np.array_equal(mask, raw) or np.array_equal(mask, raw[:, ::-1])
        flipped += not np.array_equal(mask, raw)
    assert 0 < flipped < 8  # p = 0.5: with this seed both outcomes occur
    val_batch = next(iter(dm.val_dataloader()))
    np.testing.assert_array_equal(val_batch["mask"][0].numpy(), dm.dataset("val").load_mask(0))


@pytest.mark.realdata
def test_fast_dev_run_with_median_frequency(compose_cfg, camvid_dir, tmp_path):
    subset = _subset_list(camvid_dir, tmp_path / "few.txt", 4)
    overrides = [
        "model=unet_small",
        "data=camvid",
        "debug=fast_dev_run",
        "data.batch_size=2",
        "data.eval_batch_size=1",
        # the data path is under test, not the net: a slim one keeps the run short
        "model.net.base_channels=8",
        "model.loss.class_weights=median_frequency",
        f"data.train_list={subset}",
        f"data.data_dir={camvid_dir}",
    ]
    metrics, objects = train(compose_cfg(overrides=overrides, quick=False))
    assert np.isfinite(metrics["fit"]["train/loss"])
    assert 0.0 <= metrics["val"]["val/pixel_acc"] <= 1.0
    weights = objects["model"].class_weights.tolist()
    assert weights == pytest.approx(objects["datamodule"].median_frequency_weights())
    assert len(weights) == 11 and max(weights) > 1.0 > min(w for w in weights if w > 0)
