import math
import re
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
from PIL import Image
from support import require_data

from seglab.data.isbi import ISBI2012DataModule
from seglab.data.transforms import ElasticDeformation
from seglab.data.weight_maps import connected_components, unet_weight_map
from seglab.train import train
from seglab.utils.instantiate import build_datamodule


@pytest.fixture
def isbi_dir() -> Path:
    return require_data("isbi2012_em", "membrane")


def _stack(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random grey slices and labels in {0, 255} (cells: squares, membrane: a grid)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    labels = np.full((n, size, size), 255, np.uint8)
    labels[:, ::8] = 0
    labels[:, :, ::8] = 0
    return images, labels


def _write_tif(path: Path, slices: np.ndarray) -> None:
    pages = [Image.fromarray(s) for s in slices]
    pages[0].save(path, save_all=True, append_images=pages[1:])


def _write_png_layout(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    for sub in ("train/image", "train/label", "test"):
        (root / sub).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(root / "train/image" / f"{i}.png")
        Image.fromarray(label).save(root / "train/label" / f"{i}.png")
        Image.fromarray(image).save(root / "test" / f"{i}.png")
    Image.fromarray(labels[0]).save(root / "test" / "0_predict.png")  # not a slice


def _gap_pixels(cells: np.ndarray, max_gap: int = 6) -> list[tuple[np.ndarray, int]]:
    """Background runs of g <= ``max_gap`` pixels along rows, between two different objects:
    a boolean map per g marking the run pixels."""
    height, width = cells.shape
    out = []
    for g in range(1, max_gap + 1):
        left, right = cells[:, : width - g - 1], cells[:, g + 1 :]
        between = np.ones_like(left, dtype=bool)
        for k in range(1, g + 1):
            between &= cells[:, k : width - g - 1 + k] == 0
        starts = (left > 0) & (right > 0) & (left != right) & between
        run = np.zeros((height, width), bool)
        for k in range(1, g + 1):
            run[:, k : width - g - 1 + k] |= starts
        out.append((run, g))
    return out


@pytest.mark.realdata
def test_real_slices_counts_labels_and_splits(isbi_dir):
    layout = ISBI2012DataModule(data_dir=str(isbi_dir)).layout
    assert layout.kind == "png"
    assert len(layout.images) == len(layout.labels) == 30 and len(layout.test) == 30
    assert [s.path.name for s in layout.images[:3]] == ["0.png", "1.png", "2.png"]

    dm = ISBI2012DataModule(data_dir=str(isbi_dir))
    train, val, test = (dm.dataset(s) for s in ("train", "val", "challenge"))
    assert (len(train), len(val), len(test)) == (25, 5, 30)
    assert val.images[0].path.name == "25.png" and train.images[-1].path.name == "24.png"

    raw = np.asarray(Image.open(isbi_dir / "train/label/0.png"))
    mask = train.load_mask(0)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    np.testing.assert_array_equal(mask == 1, raw == 255)
    np.testing.assert_array_equal(mask == 0, raw == 0)

    sample = train[0]
    assert sample["image"].shape == (1, 512, 512) and sample["mask"].shape == (512, 512)
    assert sample["name"].endswith("train/image/0.png") and "weight" not in sample
    item = test[3]  # unlabelled: every pixel ignored
    assert (item["mask"] == 255).all() and item["name"].endswith("test/3.png")

    custom = ISBI2012DataModule(data_dir=str(isbi_dir), train_slices=[0, 1], val_slices=[7])
    assert len(custom.dataset("train")) == 2 and len(custom.dataset("val")) == 1


@pytest.mark.realdata
def test_real_batches_and_weight_maps(isbi_dir):
    dm = ISBI2012DataModule(data_dir=str(isbi_dir), weight_map=True, batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 512, 512) and batch["mask"].shape == (2, 512, 512)
    assert batch["weight"].shape == (2, 512, 512) and batch["weight"].dtype.is_floating_point

    train = dm.dataset("train")
    weight, mask = train.load_weight(0), train.load_mask(0)
    assert train.load_weight(0) is weight  # computed once, cached
    cells = connected_components(mask, foreground=1, connectivity=4)
    np.testing.assert_array_equal(weight, unet_weight_map(cells, class_weights="balanced"))
    w_c = unet_weight_map(cells, w0=0.0, class_weights="balanced")
    membrane = mask == 0
    assert w_c[membrane][0] == pytest.approx(mask.size / (2 * membrane.sum()))
    np.testing.assert_array_equal(weight[~membrane], w_c[~membrane])
    assert (weight >= w_c).all()
    checked = 0
    for run, g in _gap_pixels(cells):
        # inside a gap of g pixels between two cells, d1 + d2 <= g
        bound = w_c[run] + 10.0 * math.exp(-(g**2) / 50.0) - 1e-4
        assert (weight[run] >= bound).all(), g
        checked += int(run.sum())
    assert checked > 1000

    test = dm.dataset("challenge")
    assert (test[0]["weight"] == 1).all()


def test_tiff_stacks(tmp_path):
    images, labels = _stack(6)
    _write_tif(tmp_path / "train-volume.tif", images)
    _write_tif(tmp_path / "train-labels.tif", labels)
    _write_tif(tmp_path / "test-volume.tif", images[:4])

    layout = ISBI2012DataModule(data_dir=str(tmp_path)).layout
    assert layout.kind == "tif" and len(layout.images) == 6 and len(layout.test) == 4
    dm = ISBI2012DataModule(data_dir=str(tmp_path), val_slices=[4, 5], weight_map=True)
    train, val, test = (dm.dataset(s) for s in ("train", "val", "challenge"))
    assert (len(train), len(val), len(test)) == (4, 2, 4)
    sample = val.load_sample(1)
    np.testing.assert_array_equal(sample["image"][..., 0], images[5])
    np.testing.assert_array_equal(sample["mask"], labels[5] // 255)
    assert sample["name"] == f"{tmp_path / 'train-volume.tif'}[page 5]"
    assert val.load_weight(1).shape == (32, 32) and val[1]["weight"].shape == (32, 32)
    assert test[3]["image"].shape == (1, 32, 32) and (test[3]["mask"] == 255).all()

    # Both layouts present: auto prefers the PNG slices, layout=tif picks the stacks.
    _write_png_layout(tmp_path, images[:3], labels[:3])
    assert ISBI2012DataModule(data_dir=str(tmp_path)).layout.kind == "png"
    assert (
        len(ISBI2012DataModule(data_dir=str(tmp_path)).layout.test) == 3
    )  # 0_predict.png is not a slice
    assert ISBI2012DataModule(data_dir=str(tmp_path), layout="tif").layout.kind == "tif"


def test_bad_label_value_names_the_file(tmp_path):
    images, labels = _stack(3)
    labels[2, 5, 5] = 128
    _write_png_layout(tmp_path / "png", images, labels)
    dm = ISBI2012DataModule(data_dir=str(tmp_path / "png"), val_slices=[2])
    bad = str(tmp_path / "png/train/label/2.png")
    with pytest.raises(ValueError, match=rf"{re.escape(bad)}.*\[128\]"):
        dm.dataset("val")[0]

    _write_tif(tmp_path / "train-volume.tif", images)
    _write_tif(tmp_path / "train-labels.tif", labels)
    dm = ISBI2012DataModule(data_dir=str(tmp_path), val_slices=[2])
    with pytest.raises(ValueError, match=r"train-labels\.tif\[page 2\]"):
        dm.dataset("val").load_mask(0)


def test_missing_data_and_bad_config(tmp_path):
    missing = tmp_path / "nowhere"
    dm = ISBI2012DataModule(data_dir=str(missing))
    with pytest.raises(
        FileNotFoundError, match=rf"{re.escape(str(missing))}.*zhixuhao/unet.*train-volume\.tif"
    ):
        dm.setup("fit")
    with pytest.raises(FileNotFoundError, match="found neither"):
        ISBI2012DataModule(data_dir=str(tmp_path)).setup("fit")
    with pytest.raises(FileNotFoundError, match=r"no N\.png slice in .*train/image"):
        ISBI2012DataModule(data_dir=str(tmp_path), layout="png").setup("fit")

    images, labels = _stack(4)
    _write_tif(tmp_path / "train-volume.tif", images)
    _write_tif(tmp_path / "train-labels.tif", labels[:3])
    with pytest.raises(ValueError, match="4 pages but .*train-labels.tif has 3"):
        ISBI2012DataModule(data_dir=str(tmp_path)).setup("fit")
    _write_tif(tmp_path / "train-labels.tif", labels)
    with pytest.raises(FileNotFoundError, match=r"test-volume\.tif"):
        ISBI2012DataModule(data_dir=str(tmp_path), val_slices=[3]).dataset("challenge")
    with pytest.raises(ValueError, match=r"data.val_slices holds \[25\]"):
        ISBI2012DataModule(data_dir=str(tmp_path), val_slices=[25]).setup("fit")
    with pytest.raises(ValueError, match=r"share the slice\(s\) \[1\]"):
        ISBI2012DataModule(data_dir=str(tmp_path), train_slices=[0, 1], val_slices=[1]).setup("fit")
    with pytest.raises(ValueError, match="data.layout"):
        ISBI2012DataModule(data_dir=str(tmp_path), layout="zarr")
    with pytest.raises(ValueError, match="data.task"):
        ISBI2012DataModule(data_dir=str(tmp_path), task="instance")
    with pytest.raises(ValueError, match="data.ignore_index=1"):
        ISBI2012DataModule(data_dir=str(tmp_path), ignore_index=1)


@pytest.mark.realdata
def test_hydra_config_builds_the_datamodule(compose_cfg, isbi_dir):
    cfg = compose_cfg(
        overrides=[
            "data=isbi2012",
            "trainer.accelerator=cpu",
            "data.weight_map=true",
            f"data.data_dir={isbi_dir}",
        ],
        quick=False,
    )
    dm = build_datamodule(cfg.data)
    assert isinstance(dm, ISBI2012DataModule)
    assert dm.in_channels == 1 and dm.num_classes == 2 and dm.class_names == ["membrane", "cell"]
    assert cfg.model.net.in_channels == 1
    names = [type(t) for t in dm.train_transforms.transforms]
    assert ElasticDeformation in names and A.RandomBrightnessContrast in names
    elastic = next(t for t in dm.train_transforms.transforms if isinstance(t, ElasticDeformation))
    assert (elastic.grid, elastic.sigma) == (3, 10.0)
    dm.setup("fit")
    assert len(dm.dataset("train")) == 23 and len(dm.dataset("val")) == 2

    # The paper's pipeline moves the weight map with the mask: cell pixels keep the cell's w_c.
    train_set = dm.dataset("train")
    for i in (0, 1, 2):
        mask = train_set.load_mask(i)
        w_cell = mask.size / (2 * mask.sum())
        item = train_set[i]
        assert item["image"].shape == (1, 256, 256) and item["weight"].shape == (256, 256)
        cells = item["mask"] == 1
        assert cells.any() and (item["mask"] != 1).any()
        np.testing.assert_allclose(item["weight"][cells].numpy(), w_cell, rtol=1e-6)
        assert (item["weight"][~cells] > w_cell).all()
    assert dm.dataset("val")[0]["image"].shape == (1, 512, 512)


@pytest.mark.realdata
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weight_map"])
def test_fast_dev_run(compose_cfg, isbi_dir, weighted):
    overrides = [
        "model=unet_small",
        "data=isbi2012",
        "debug=fast_dev_run",
        "data.batch_size=2",
        # the data path is under test, not the net: a slim one keeps the run short
        "model.net.base_channels=8",
        "data.eval_batch_size=1",
        f"data.data_dir={isbi_dir}",
    ]
    if weighted:
        overrides += ["data.weight_map={_target_: seglab.data.weight_maps.UNetWeightMap, w0: 5}"]
    metrics, _ = train(compose_cfg(overrides=overrides, quick=False))
    assert np.isfinite(metrics["fit"]["train/loss"])
    assert 0.0 <= metrics["val"]["val/pixel_acc"] <= 1.0
