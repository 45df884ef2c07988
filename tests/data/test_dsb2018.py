import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import require_data

from seglab.data.dsb2018 import (
    DSB2018DataModule,
    DSB2018Images,
    list_dsb2018_ids,
    load_dsb2018_instances,
    split_dsb2018_ids,
)
from seglab.data.transforms import ElasticDeformation
from seglab.data.weight_maps import unet_weight_map
from seglab.train import train
from seglab.utils.instantiate import build_datamodule

CROWDED = "0402a81e75262469925ea893b6706183832e85324f7b1e08e634129f5d522cdd"  # 347x260, 125 nuclei
OVERLAP = "1609b1b8480ee52652a644403b3f7d5511410a016750aa3b9a4c8ddb3e893e8e"  # 2 masks share 1 px


@pytest.fixture
def dsb_dir() -> Path:
    return require_data("dsb2018_nuclei")


def _write_id(root: Path, image_id: str, image: np.ndarray, masks: list[np.ndarray]) -> None:
    (root / image_id / "images").mkdir(parents=True)
    (root / image_id / "masks").mkdir()
    Image.fromarray(image).save(root / image_id / "images" / f"{image_id}.png")
    for k, mask in enumerate(masks):
        Image.fromarray(mask).save(root / image_id / "masks" / f"m{k:02d}.png")


def _gap_runs(ids: np.ndarray, max_gap: int = 6) -> list[tuple[np.ndarray, int]]:
    """Per g <= ``max_gap``: the background pixels of row runs of g pixels between two
    different objects."""
    height, width = ids.shape
    out = []
    for g in range(1, max_gap + 1):
        left, right = ids[:, : width - g - 1], ids[:, g + 1 :]
        starts = (left > 0) & (right > 0) & (left != right)
        for k in range(1, g + 1):
            starts &= ids[:, k : width - g - 1 + k] == 0
        run = np.zeros((height, width), bool)
        for k in range(1, g + 1):
            run[:, k : width - g - 1 + k] |= starts
        out.append((run, g))
    return out


@pytest.mark.realdata
def test_real_ids_images_instances_and_split(dsb_dir):
    folder = dsb_dir / "stage1_train"
    ids = list_dsb2018_ids(folder)
    assert len(ids) == 74 and ids == sorted(ids)
    assert sum(len(list((folder / i / "masks").glob("*.png"))) for i in ids) == 3900

    split = split_dsb2018_ids(ids, val_fraction=0.2, seed=0)
    assert (len(split["train"]), len(split["val"])) == (59, 15)
    assert sorted(split["train"] + split["val"]) == ids
    assert split == split_dsb2018_ids(list(reversed(ids)), val_fraction=0.2, seed=0)
    assert split["val"] != split_dsb2018_ids(ids, val_fraction=0.2, seed=1)["val"]

    sample = DSB2018Images(folder, [CROWDED])[0]
    image, instances = sample["image"], sample["instances"]
    assert image.shape == (260, 347, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 1]).all()  # a grey RGBA image, alpha dropped
    assert instances.dtype == np.int32 and instances.max() == 125
    masks = sorted((folder / CROWDED / "masks").glob("*.png"))
    for k in (0, 60, 124):
        np.testing.assert_array_equal(instances == k + 1, np.asarray(Image.open(masks[k])) > 0)

    instances = load_dsb2018_instances(folder, OVERLAP)
    stacked = np.stack(
        [np.asarray(Image.open(p)) > 0 for p in sorted(folder.glob(f"{OVERLAP}/masks/*"))]
    )
    assert (stacked.sum(0) > 1).sum() == 1 and instances.max() == len(stacked)
    np.testing.assert_array_equal(instances > 0, stacked.any(0))


@pytest.mark.realdata
def test_real_weight_maps(dsb_dir):
    dm = DSB2018DataModule(data_dir=str(dsb_dir), weight_map=True)
    train_set = dm.dataset("train")
    index = train_set.ids.index(CROWDED)
    instances = load_dsb2018_instances(dm.folder, CROWDED)
    np.testing.assert_array_equal(train_set.load_mask(index), instances > 0)
    weight = train_set.load_weight(index)
    assert train_set.load_weight(index) is weight  # computed once, cached
    np.testing.assert_array_equal(weight, unet_weight_map(instances, class_weights="balanced"))
    w_c = unet_weight_map(instances, w0=0.0, class_weights="balanced")
    background = instances == 0
    assert w_c[background][0] == pytest.approx(instances.size / (2 * background.sum()))
    np.testing.assert_array_equal(weight[~background], w_c[~background])
    checked = 0
    for run, g in _gap_runs(instances):
        # inside a gap of g pixels between two nuclei, d1 + d2 <= g
        bound = w_c[run] + 10.0 * math.exp(-(g**2) / 50.0) - 1e-4
        assert (weight[run] >= bound).all(), g
        checked += int(run.sum())
    assert checked > 50


@pytest.mark.realdata
def test_hydra_config_builds_the_datamodule_and_batches(compose_cfg, dsb_dir):
    cfg = compose_cfg(
        overrides=[
            "data=dsb2018",
            "trainer.accelerator=cpu",
            "data.batch_size=2",
            "data.weight_map=true",
            f"data.data_dir={dsb_dir}",
        ],
        quick=False,
    )
    dm = build_datamodule(cfg.data)
    assert isinstance(dm, DSB2018DataModule)
    assert dm.in_channels == 3 and dm.class_names == ["background", "nucleus"]
    assert dm.eval_batch_size == 1 and dm.crop_size == 256
    assert any(isinstance(t, ElasticDeformation) for t in dm.train_transforms.transforms)
    dm.setup("fit")
    assert len(dm.dataset("train")) == 52 and len(dm.dataset("val")) == 7

    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 256, 256) and batch["mask"].shape == (2, 256, 256)
    assert batch["weight"].shape == (2, 256, 256)
    # the weight map moved with the mask: nucleus pixels keep the nucleus class weight
    for mask, weight in zip(batch["mask"], batch["weight"]):
        if (mask == 1).any():
            assert weight[mask == 1].unique().numel() == 1
    val_sizes = set()
    for i, item in enumerate(dm.val_dataloader()):
        val_sizes.add(tuple(item["image"].shape[-2:]))
        assert (
            item["image"].shape[:2] == (1, 3)
            and item["mask"].shape[-2:] == item["image"].shape[-2:]
        )
        if i == 5:
            break
    assert len(val_sizes) > 1  # whole images of several sizes, one per batch


def test_synthetic_layout_modes_and_overlaps(tmp_path):
    root = tmp_path / "stage1_train"
    a = np.zeros((20, 30), np.uint8)
    a[2:6, 2:6] = 255
    b = np.zeros((20, 30), np.uint8)
    b[5:9, 5:12] = 255  # overlaps a at (5, 5): the first mask keeps it
    grey = np.arange(600, dtype=np.uint8).reshape(20, 30)
    _write_id(root, "grey", grey, [a, b, np.zeros_like(a)])  # the empty mask gets no id
    _write_id(root, "rgba", np.dstack([grey, grey // 2, grey // 3, np.full_like(grey, 255)]), [b])
    _write_id(root, "rgb", np.dstack([grey, grey, grey]), [])
    (root / "README.txt").write_text("not an id")

    assert list_dsb2018_ids(root) == ["grey", "rgb", "rgba"]
    sample = DSB2018Images(root, ["grey"])[0]
    image, instances = sample["image"], sample["instances"]
    assert image.shape == (20, 30, 3) and (image[..., 2] == grey).all()
    assert instances.max() == 2 and instances[5, 5] == 1 and instances[5, 6] == 2
    assert (instances == 1).sum() == 16 and (instances == 2).sum() == 27
    image = DSB2018Images(root, ["rgba"])[0]["image"]
    assert image.shape == (20, 30, 3) and (image[..., 1] == grey // 2).all()
    instances = load_dsb2018_instances(root, "rgb")
    assert instances.max() == 0

    dm = DSB2018DataModule(data_dir=str(tmp_path), val_fraction=0.3, weight_map=True)
    assert sorted(dm.split_ids["train"] + dm.split_ids["val"]) == ["grey", "rgb", "rgba"]
    assert len(dm.split_ids["val"]) == 1
    for split in ("train", "val"):
        for i in range(len(dm.dataset(split))):
            item = dm.dataset(split)[i]
            assert item["image"].shape == (3, 20, 30) and item["weight"].shape == (20, 30)
    with pytest.raises(ValueError, match="split='test'"):
        dm.dataset("test")


@pytest.mark.parametrize("task", ["semantic", "instance"])
def test_mask_files_are_read_once_with_the_cache(tmp_path, monkeypatch, task):
    import seglab.data.dsb2018 as dsb

    root = tmp_path / "stage1_train"
    a = np.zeros((20, 30), np.uint8)
    a[2:6, 2:6] = 255
    b = np.zeros((20, 30), np.uint8)
    b[5:9, 5:12] = 255
    grey = np.arange(600, dtype=np.uint8).reshape(20, 30)
    _write_id(root, "one", grey, [a, b])
    _write_id(root, "two", grey[::-1].copy(), [b])
    reads = []
    real = dsb.load_dsb2018_instances
    monkeypatch.setattr(
        dsb, "load_dsb2018_instances", lambda *args: reads.append(args[1]) or real(*args)
    )
    outputs = {}
    for cache in (True, False):
        reads.clear()
        dm = DSB2018DataModule(
            data_dir=str(tmp_path), val_fraction=0.0, cache_masks=cache, task=task
        )
        train_set = dm.dataset("train")
        epochs = [[train_set[i] for i in range(len(train_set))] for _ in range(3)]
        assert sorted(reads) == (["one", "two"] if cache else ["one"] * 3 + ["two"] * 3)
        outputs[cache] = epochs
    for cached, uncached in zip(outputs[True], outputs[False]):
        for x, y in zip(cached, uncached):
            if task == "semantic":
                assert torch.equal(x["mask"], y["mask"]) and torch.equal(x["image"], y["image"])
            else:
                assert torch.equal(x[1]["masks"], y[1]["masks"]) and x[1]["masks"].shape[0] > 0


def test_errors_name_the_folder_or_file(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(
        FileNotFoundError, match=rf"{re.escape(str(missing / 'stage1_train'))}.*kaggle"
    ):
        DSB2018DataModule(data_dir=str(missing)).setup("fit")
    root = tmp_path / "stage1_train"
    root.mkdir()
    with pytest.raises(FileNotFoundError, match="no <id>/ folder"):
        list_dsb2018_ids(root)
    (root / "x" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "x/images/x.png"))):
        list_dsb2018_ids(root)

    _write_id(tmp_path / "ok", "y", np.zeros((8, 8), np.uint8), [np.zeros((8, 9), np.uint8)])
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "ok/y/masks/m00.png"))):
        load_dsb2018_instances(tmp_path / "ok", "y")
    (tmp_path / "ok/y/masks/m00.png").unlink()
    (tmp_path / "ok/y/masks").rmdir()
    with pytest.raises(FileNotFoundError, match="mask folder"):
        load_dsb2018_instances(tmp_path / "ok", "y")

    with pytest.raises(ValueError, match="data.val_fraction"):
        DSB2018DataModule(data_dir=str(tmp_path), val_fraction=1.0)
    with pytest.raises(ValueError, match="data.task"):
        DSB2018DataModule(data_dir=str(tmp_path), task="panoptic")
    with pytest.raises(ValueError, match="data.num_classes=3"):
        DSB2018DataModule(data_dir=str(tmp_path), num_classes=3)


def test_split_rule():
    ids = [f"{i:03d}" for i in range(10)]
    split = split_dsb2018_ids(ids, val_fraction=0.25, seed=3)
    assert len(split["val"]) == 2 and len(split["train"]) == 8  # round(2.5) = 2
    assert split_dsb2018_ids(ids, val_fraction=0.0, seed=3)["val"] == []
    assert len(split_dsb2018_ids(ids, val_fraction=0.01, seed=3)["val"]) == 1
    assert split_dsb2018_ids(["a"], val_fraction=0.5, seed=0) == {
        "train": ["a"],
        "val": [],
        "test": [],
    }


@pytest.mark.realdata
def test_fast_dev_run(compose_cfg, dsb_dir):
    overrides = [
        "model=unet_small",
        "data=dsb2018",
        "debug=fast_dev_run",
        "data.batch_size=2",
        # the data path is under test, not the net: a slim one keeps the run short
        "model.net.base_channels=8",
        "data.weight_map=true",
        f"data.data_dir={dsb_dir}",
    ]
    metrics, _ = train(compose_cfg(overrides=overrides, quick=False))
    assert np.isfinite(metrics["fit"]["train/loss"])
    assert 0.0 <= metrics["val"]["val/pixel_acc"] <= 1.0
