"""Checkpoints written before the declarative data layer still evaluate and predict the same.

``tests/fixtures/legacy`` holds files written by commit f10dee7 (the last main before it):
two tiny U-Net checkpoints (``python src/train.py debug=limit trainer.max_epochs=1
model.net.base_channels=4 model.net.depth=2``, and the same with ``experiment=unet_isbi_cpu``,
whose config carries the old two weight-map switches ``data.weight_map: true`` + ``w0`` /
``sigma`` / ``w_c`` and ``model.loss.weight_map``), the metrics that commit's ``src/eval.py``
printed for them, its ``src/predict.py`` output for ISBI test slice 0 (``inference.mode=
overlap_tile +inference.tile_size=572``), and the config and state-dict shapes of a Mask R-CNN
(ResNet-18-FPN) checkpoint on ``data=shapes``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from support import require_data

from seglab.callbacks.config import CONFIG_KEY
from seglab.eval import evaluate
from seglab.predict import predict
from seglab.utils.checkpoint import config_from_checkpoint
from seglab.utils.instantiate import build_datamodule, build_task

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
EXPECTED = json.loads((LEGACY / "expected_metrics.json").read_text())


def _relocated(name: str, tmp_path: Path) -> Path:
    """A copy of the legacy checkpoint ``name`` whose ISBI data root is this machine's (the
    checkpoint stores the absolute path of the machine that wrote it)."""
    checkpoint = torch.load(LEGACY / f"{name}.ckpt", map_location="cpu", weights_only=False)
    data = checkpoint[CONFIG_KEY]["data"]
    if data["_target_"].endswith("ISBI2012DataModule"):
        data["data_dir"] = str(require_data("isbi2012_em", "membrane"))
    path = tmp_path / f"{name}.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("name", ["tiny_unet_shapes", "tiny_unet_isbi"])
def test_legacy_checkpoint_evaluates_to_its_old_metrics(name, compose_cfg, tmp_path):
    ckpt = _relocated(name, tmp_path)
    metrics, objects = evaluate(compose_cfg("eval", overrides=[f"ckpt_path={ckpt}"]))
    # the metrics of that commit (later ones, val/class_acc, come on top)
    old = {key: metrics["val"][key] for key in EXPECTED[name]}
    assert old == pytest.approx(EXPECTED[name], rel=1e-6, abs=1e-7)
    if name == "tiny_unet_isbi":
        # the old two switches became the one data.weight_map object; the configured
        # overlap-tile inference is the default of eval and predict
        assert objects["datamodule"].weight_map is not None
        assert objects["model"].inference["mode"] == "overlap_tile"


def test_legacy_isbi_checkpoint_predicts_as_before(compose_cfg, tmp_path):
    ckpt = _relocated("tiny_unet_isbi", tmp_path)
    image = require_data("isbi2012_em", "membrane", "test", "0.png")
    out = tmp_path / "pred"
    written, _ = predict(
        compose_cfg(
            "predict",
            overrides=[f"ckpt_path={ckpt}", f"input={image}", f"output={out}", "overlay=false"],
        )
    )
    assert [p.name for p in written] == ["0.png"]
    old = np.asarray(Image.open(LEGACY / "tiny_unet_isbi_test_0.png"))
    assert np.array_equal(np.asarray(Image.open(out / "0.png")), old)


def test_legacy_maskrcnn_config_builds_the_same_weights():
    saved = json.loads((LEGACY / "maskrcnn_shapes.json").read_text())
    run_cfg = OmegaConf.create(saved["seglab_config"])
    datamodule = build_datamodule(run_cfg.data)
    model = build_task(run_cfg, datamodule)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == saved["state_dict_shapes"]


def test_legacy_config_is_upgraded_where_it_is_read(tmp_path, compose_cfg):
    ckpt = _relocated("tiny_unet_isbi", tmp_path)
    run_cfg, _ = config_from_checkpoint(compose_cfg("eval", overrides=[f"ckpt_path={ckpt}"]))
    for key in ("w0", "sigma", "w_c"):
        assert key not in run_cfg.data
    assert run_cfg.data.weight_map._target_.endswith("UNetWeightMap")
    assert run_cfg.data.weight_map.w0 == 10.0 and run_cfg.data.weight_map.sigma == 5.0


def test_plus_data_key_changes_one_key_of_the_checkpoints_data(tmp_path, compose_cfg):
    ckpt = _relocated("tiny_unet_shapes", tmp_path)
    saved, _ = config_from_checkpoint(compose_cfg("eval", overrides=[f"ckpt_path={ckpt}"]))
    run_cfg, _ = config_from_checkpoint(
        compose_cfg("eval", overrides=[f"ckpt_path={ckpt}", "+data.eval_batch_size=3"])
    )
    assert run_cfg.data.eval_batch_size == 3 != saved.data.eval_batch_size
    assert {k: v for k, v in run_cfg.data.items() if k != "eval_batch_size"} == {
        k: v for k, v in saved.data.items() if k != "eval_batch_size"
    }
