"""Every data module on a tiny tree in its official layout: one parametrized test of what the
shared base does for all of them (metadata, splits, masks, batches, errors naming the file or
the key), plus a new paired dataset declared in a few lines, trained end to end."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class
from omegaconf import open_dict
from PIL import Image
from trees import TREES, Tree

from seglab.data.base import IGNORE, DatasetInfo, SegmentationDataModule
from seglab.data.dsb2018 import load_dsb2018_instances
from seglab.train import train
from seglab.utils.instantiate import build_datamodule


def _compose(compose_cfg, tree: Tree, root: Path, *extra: str):
    overrides = [f"data={tree.data}", "trainer.accelerator=cpu", f"data.data_dir={root}"]
    overrides += ["data.num_workers=0", "data.batch_size=2", *tree.overrides, *extra]
    cfg = compose_cfg(overrides=overrides, quick=False)
    return cfg, build_datamodule(cfg.data)


@pytest.fixture(params=sorted(TREES))
def tree(request, tmp_path) -> tuple[Tree, Path]:
    root = tmp_path / request.param
    return TREES[request.param](root), root


def test_tree_splits_masks_and_batches(tree, compose_cfg):
    tree, root = tree
    cfg, dm = _compose(compose_cfg, tree, root)
    info = dm.info
    assert dm.num_classes == cfg.model.num_classes == len(dm.class_names) == cfg.data.num_classes
    if info.views[dm.task] is not None:
        assert dm.class_names == list(info.views[dm.task])
    assert len(dm.palette) >= dm.num_classes and dm.in_channels == info.in_channels
    assert dm.ignore_index == cfg.model.get("ignore_index", dm.ignore_index) == info.ignore_index
    for split, size in tree.sizes.items():
        assert len(dm.dataset(split)) == size, split
    dm.setup("fit")

    if dm.task == "instance":
        images, targets = next(iter(dm.val_dataloader()))
        assert isinstance(images, list) and len(targets) == min(len(images), dm.eval_batch_size)
        assert all(len(t["labels"]) == len(t["masks"]) == len(t["boxes"]) for t in targets)
        return
    batch = next(iter(dm.train_dataloader()))
    side = dm.crop_size or 24
    assert batch["image"].shape[:2] == (2, dm.in_channels) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, side, side if dm.crop_size else 32)
    values = set(batch["mask"].unique().tolist())
    assert values <= set(range(dm.num_classes)) | {dm.ignore_index} and len(values) > 1
    val = dm.dataset("val")[0]
    expected = tree.val_mask
    if "folder" in tree.extra:  # dsb2018: the seeded val id, read from its mask files
        expected = load_dsb2018_instances(tree.extra["folder"], dm.split_ids["val"][0]) > 0
    np.testing.assert_array_equal(val["mask"].numpy(), expected)
    assert val["mask"].dtype == torch.int64 and val["image"].shape[-2:] == (24, 32)


def test_missing_data_says_where_and_how(tree, compose_cfg, tmp_path):
    tree, _ = tree
    missing = tmp_path / "nowhere"
    info = get_class(_target(tree)).info
    # coco with data.class_names=null reads its first file when built, the others at setup
    with pytest.raises((FileNotFoundError, InstantiationException)) as err:
        _compose(compose_cfg, tree, missing)[1].setup("fit")
    assert f"data={info.name}: " in str(err.value) and str(missing) in str(err.value)
    assert info.how_to_get in str(err.value)


def test_overrides_are_checked_against_the_dataset(tree):
    tree, root = tree
    cls = get_class(_target(tree))
    declared = cls.info.views.get("semantic")
    if declared is None:  # classes from the files (coco)
        return
    k, name = len(declared), cls.info.name
    with pytest.raises(ValueError, match=rf"data.num_classes={k + 1} but data={name} has {k} "):
        cls(data_dir=str(root), num_classes=k + 1)
    with pytest.raises(ValueError, match=rf"data.class_names has 1 names but data.num_classes={k}"):
        cls(data_dir=str(root), class_names=["x"])
    with pytest.raises(ValueError, match=rf"data.ignore_index=1 collides .* data={name}"):
        cls(data_dir=str(root), ignore_index=1)
    missing = next(v for v in ("panoptic", "instance") if v not in cls.info.views)
    with pytest.raises(ValueError, match=rf"data.task='{missing}': data={name} offers"):
        cls(data_dir=str(root), task=missing)
    with pytest.raises(ValueError, match=rf"data.in_channels=4 but data={name} images have"):
        cls(data_dir=str(root), in_channels=4)
    with pytest.raises(ValueError, match="data.crop_size=0: expected a positive integer"):
        cls(data_dir=str(root), crop_size=0)


def _target(tree: Tree) -> str:
    return {
        "camvid": "seglab.data.camvid.CamVidDataModule",
        "voc": "seglab.data.voc.VOCDataModule",
        "cityscapes": "seglab.data.cityscapes.CityscapesDataModule",
        "ade20k": "seglab.data.ade20k.ADE20KDataModule",
        "isbi2012": "seglab.data.isbi.ISBI2012DataModule",
        "dsb2018": "seglab.data.dsb2018.DSB2018DataModule",
        "coco": "seglab.data.coco.CocoDataModule",
    }[tree.data]


def test_bad_label_files_are_named(tree, compose_cfg):
    tree, root = tree
    if tree.label_file is None:
        return
    _, dm = _compose(compose_cfg, tree, root)
    path = re.escape(str(tree.label_file))
    raw = np.asarray(Image.open(tree.label_file)).copy()
    raw[3, 3] = tree.bad_value
    Image.fromarray(raw).save(tree.label_file)
    with pytest.raises(
        ValueError, match=rf"{path} holds label\(s\) \[{tree.bad_value}\]; expected 0"
    ):
        dm.dataset("train")[1]
    with pytest.raises(ValueError, match=path):
        dm.median_frequency_weights()
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(tree.label_file)
    with pytest.raises(ValueError, match=rf"{path} has Pillow mode 'RGB'; expected a single"):
        dm.dataset("train").load_mask(1)


@pytest.mark.parametrize("data", ["voc", "cityscapes", "ade20k"])
def test_unscored_splits_are_refused(data, tmp_path, compose_cfg):
    tree = TREES[data](tmp_path)
    _, dm = _compose(compose_cfg, tree, tmp_path)
    with pytest.raises(ValueError, match=rf"data={data}: split 'test' has no labels to score: "):
        dm.setup("test")


# ------------------------------------------------------------------ a new dataset in a few lines


class TinyDataModule(SegmentationDataModule):
    """``<root>/<split>/<n>.png`` images with labels ``<root>/<split>/<n>_label.png`` (0: sea,
    1: land, 9: unknown)."""

    info = DatasetInfo(
        name="tiny",
        views={"semantic": ("sea", "land")},
        how_to_get="write it with the test",
        splits=("train", "val"),
        labels={0: 0, 1: 1, 9: IGNORE},
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )

    def pairs(self, split: str) -> list[tuple[Path, Path]]:
        images = sorted(self.require_dir(self.root / split).glob("[0-9].png"))
        return self.match_pairs(images, lambda image: image.with_name(f"{image.stem}_label.png"))


def test_a_declared_dataset_trains(compose_cfg, tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        for n in range(3):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).save(
                tmp_path / split / f"{n}.png"
            )
            label = rng.choice(np.array([0, 1, 9], np.uint8), (16, 16))
            Image.fromarray(label).save(tmp_path / split / f"{n}_label.png")
    cfg = compose_cfg(
        overrides=["model=unet_small", "debug=fast_dev_run", "model.net.base_channels=8"],
        quick=False,
    )
    with open_dict(cfg):  # what conf/data/tiny.yaml would hold
        cfg.data = {
            "_target_": f"{__name__}.TinyDataModule",
            "task": "${model.task}",
            "data_dir": str(tmp_path),
            "num_classes": "${dataset:num_classes}",
            "in_channels": "${dataset:in_channels}",
            "ignore_index": "${dataset:ignore_index}",
            "batch_size": 2,
        }
    assert cfg.model.num_classes == 2 and cfg.model.ignore_index == 255
    metrics, objects = train(cfg)
    dm = objects["datamodule"]
    assert dm.class_names == ["sea", "land"] and len(dm.dataset("val")) == 3
    mask = dm.dataset("val")[0]["mask"]
    assert set(mask.unique().tolist()) == {0, 1, 255}  # 9 read as ignore_index
    assert np.isfinite(metrics["fit"]["train/loss"]) and 0 <= metrics["val"]["val/pixel_acc"] <= 1
