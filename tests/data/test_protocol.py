"""The held-out protocol (#14): every dataset an experiment reports on has a labelled split that
chooses the checkpoint (``val``) and another one that is reported (``test``); ISBI 2012's
unlabelled test stack is the split ``challenge``, predicted but never scored; and
``experiment=segnet_camvid_cpu`` is SegNet on CamVid with median-frequency balancing."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from support import require_data

from seglab.callbacks.config import CONFIG_KEY
from seglab.data.camvid import CamVidDataModule
from seglab.data.dsb2018 import DSB2018DataModule, split_dsb2018_ids
from seglab.data.isbi import ISBI2012DataModule
from seglab.data.prediction import prediction_dataset
from seglab.predict import predict
from seglab.utils.instantiate import build_datamodule, build_task

LEGACY = Path(__file__).parents[1] / "fixtures" / "legacy"


def _datamodule(compose_cfg, data: str, *overrides: str):
    """``data=<data>`` as ``conf/data`` composes it (the defaults under test)."""
    cfg = compose_cfg(
        overrides=[f"data={data}", "trainer.accelerator=cpu", *overrides], quick=False
    )
    return build_datamodule(cfg.data)


def _disjoint(*splits: list) -> bool:
    return sum(len(s) for s in splits) == len(set().union(*splits))


@pytest.mark.realdata
def test_isbi_trains_on_0_22_chooses_on_23_24_and_reports_25_29(compose_cfg):
    require_data("isbi2012_em", "membrane")
    dm = _datamodule(compose_cfg, "isbi2012")
    names = {s: [p.path.stem for p in dm.dataset(s).images] for s in ("train", "val", "test")}
    assert names["train"] == [str(i) for i in range(23)]
    assert names["val"] == ["23", "24"] and names["test"] == ["25", "26", "27", "28", "29"]
    assert _disjoint(*names.values())
    assert set(np.unique(dm.dataset("test").load_mask(0))) == {0, 1}  # labelled: scored

    challenge = prediction_dataset(dm, "challenge")  # what predict.py input=challenge reads
    assert len(challenge) == 30 and challenge[0]["name"].endswith("test/0.png")
    assert (challenge[0]["mask"] == dm.ignore_index).all()
    with pytest.raises(ValueError, match=r"split 'challenge' has no labels to score: .*split=test"):
        dm.loader("challenge")


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("lists", "message"),
    [
        ({"val_slices": [24, 25]}, r"data.val_slices and data.test_slices share the slice\(s\) \[25\]"),
        ({"train_slices": [0, 23]}, r"data.train_slices and data.val_slices share the slice\(s\) \[23\]"),
        ({"test_slices": [25, 30]}, r"data.test_slices holds \[30\], outside the 30 labelled slices"),
        ({"test_slices": [26, 26]}, r"data.test_slices=\[26, 26\] lists a slice twice"),
        (
            {"val_slices": list(range(15)), "test_slices": list(range(15, 30))},
            "data.train_slices=null leaves no slice to train on",
        ),
    ],
    ids=["val-test", "train-val", "outside", "twice", "none-left"],
)  # fmt: skip
def test_isbi_bad_slice_lists_name_the_key(lists, message):
    root = require_data("isbi2012_em", "membrane")
    lists = {"val_slices": [23, 24], "test_slices": [25, 26, 27, 28, 29], **lists}
    with pytest.raises(ValueError, match=message):
        ISBI2012DataModule(data_dir=str(root), **lists).setup("fit")


@pytest.mark.realdata
def test_an_old_isbi_checkpoint_keeps_its_splits_and_predicts_the_challenge_stack(
    compose_cfg, tmp_path
):
    root = require_data("isbi2012_em", "membrane")
    old = ISBI2012DataModule(data_dir=str(root), val_slices=[25, 26, 27, 28, 29])  # no test key
    assert (len(old.dataset("train")), len(old.dataset("val"))) == (25, 5)
    with pytest.raises(ValueError, match="data.test_slices is empty"):
        old.setup("test")

    # predict.py input=challenge with a checkpoint written before the key (two test slices)
    data = tmp_path / "isbi"
    (data / "test").mkdir(parents=True)
    os.symlink(root / "train", data / "train")
    for name in ("0.png", "1.png"):
        (data / "test" / name).write_bytes((root / "test" / name).read_bytes())
    checkpoint = torch.load(LEGACY / "tiny_unet_isbi.ckpt", map_location="cpu", weights_only=False)
    checkpoint[CONFIG_KEY]["data"]["data_dir"] = str(data)
    torch.save(checkpoint, ckpt := tmp_path / "old.ckpt")
    out = tmp_path / "pred"
    overrides = [f"ckpt_path={ckpt}", "input=challenge", f"output={out}", "overlay=false"]
    written, _ = predict(compose_cfg("predict", overrides=overrides))
    assert sorted(p.name for p in written) == ["0.png", "1.png"]
    # the same prediction as that checkpoint's of the image file test/0.png
    expected = np.asarray(Image.open(LEGACY / "tiny_unet_isbi_test_0.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "0.png")), expected)


@pytest.mark.realdata
def test_dsb2018_chooses_on_val_and_reports_the_earlier_held_out_15(compose_cfg):
    require_data("dsb2018_nuclei")
    dm = _datamodule(compose_cfg, "dsb2018")
    ids = dm.split_ids
    assert [len(ids[s]) for s in ("train", "val", "test")] == [52, 7, 15]
    assert _disjoint(ids["train"], ids["val"], ids["test"])
    every = sorted(ids["train"] + ids["val"] + ids["test"])
    assert ids["test"] == split_dsb2018_ids(every, val_fraction=0.2, seed=0)["val"]
    assert len(dm.dataset("test")) == 15 and dm.dataset("test").labels(0)["instances"].max() > 0

    old = DSB2018DataModule(data_dir=dm.folder.parent)  # a config saved before test_fraction
    assert old.split_ids["val"] == ids["test"]
    with pytest.raises(ValueError, match="split='test' holds no image .*data.test_fraction"):
        old.dataset("test")
    with pytest.raises(ValueError, match=r"data.val_fraction=0.5 \+ data.test_fraction=0.5"):
        DSB2018DataModule(data_dir="x", val_fraction=0.5, test_fraction=0.5)


@pytest.mark.realdata
def test_camvid_chooses_on_val_and_reports_on_test(compose_cfg):
    root = require_data("camvid", "CamVid")
    dm = _datamodule(compose_cfg, "camvid", "data.test_list=test_subset.txt")
    val, test = ({image for image, _ in dm.pairs(s)} for s in ("val", "test"))
    assert (len(val), len(test)) == (101, 59) and _disjoint(val, test)
    with pytest.raises(ValueError, match="data.val_list and data.test_list are both 'val.txt'"):
        CamVidDataModule(data_dir=str(root), test_list="val.txt")


@pytest.mark.realdata
def test_segnet_camvid_cpu_is_segnet_with_median_frequency_balancing(compose_cfg, tmp_path):
    root = require_data("camvid", "CamVid")
    few = tmp_path / "few.txt"  # three training frames: the weights, not the data, are tested
    few.write_text("\n".join((root / "train.txt").read_text().splitlines()[:3]) + "\n")
    cfg = compose_cfg(
        overrides=["experiment=segnet_camvid_cpu", f"data.train_list={few}"], quick=False
    )
    assert cfg.model.net._target_ == "seglab.models.SegNet" and cfg.test
    assert cfg.model.loss.class_weights == "median_frequency"
    dm = build_datamodule(cfg.data)
    assert dm.class_names[:4] == ["Sky", "Building", "Pole", "Road"] and dm.num_classes == 11
    assert dm.ignore_index == 11  # Unlabelled: out of the loss and the metrics, as in SegNet
    task = build_task(cfg, dm)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=0,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, datamodule=dm)  # no step: the weights are set up for fitting
    weights = task.class_weights.numpy()
    np.testing.assert_allclose(weights, dm.median_frequency_weights(), rtol=1e-6)
    assert weights.shape == (11,) and weights.max() > 2 * weights[weights > 0].min()
