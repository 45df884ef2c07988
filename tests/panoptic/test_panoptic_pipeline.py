"""model=panoptic_fpn end to end: the used-by line, train -> eval -> predict on generated scenes
(predict's COCO panoptic files score the PQ eval logs), image files, DDP on an odd split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import require_data, run_cli

from seglab.callbacks.writers import CocoPanopticWriter
from seglab.eval import evaluate
from seglab.metrics.panoptic_quality import pq_compute
from seglab.models import PanopticFPN
from seglab.predict import predict
from seglab.train import train
from seglab.utils.instantiate import build_datamodule, build_task

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_panoptic(small_maskrcnn_overrides) -> list[str]:
    """model=panoptic_fpn on a small ResNet-18-FPN, stuff kept from 16 pixels (64 px scenes)."""
    return [
        "model=panoptic_fpn",
        *small_maskrcnn_overrides,
        "model.net.anchor_sizes=[8,16,32,64,128]",
        "model.net.stuff_area=16",
        "optimizer.lr=0.001",
    ]


# One stuff class: a few steps of training find it, so PQ is above 0 and comparisons of it bite.
ONE_STUFF = ["data.stuff_classes=[flat]"]


def test_used_by_line_composes(compose_cfg):
    """python src/train.py model=panoptic_fpn data=coco_panoptic trainer=ddp"""
    cfg = compose_cfg(
        overrides=["model=panoptic_fpn", "data=coco_panoptic", "trainer=ddp"], quick=False
    )
    assert cfg.trainer.strategy == "ddp" and cfg.data.task == cfg.model.task == "panoptic"
    assert cfg.callbacks.model_checkpoint.monitor == "val/pq"
    dm = build_datamodule(cfg.data)  # COCO's 133 categories are in the yaml: no file read
    task = build_task(cfg, dm)
    assert task.num_classes == dm.num_classes == 134 and task.num_things == 80
    assert isinstance(task.net, PanopticFPN) and task.net.backbone_name == "resnet50"
    assert task.net.roi_heads.box_predictor.cls_score.out_features == 81
    assert task.net.semantic_head.predictor.out_channels == 54


def ground_truth_files(dataset, output: Path) -> Path:
    """COCO panoptic files of a dataset's targets, written by the prediction writer itself."""
    dm = dataset
    writer = CocoPanopticWriter(
        output=output,
        stem="gt",
        category_ids=dm.category_ids,
        class_names=dm.class_names,
        num_things=dm.num_things,
        palette=dm.palette,
        overlay=False,
    )

    class Trainer:
        is_global_zero = True

    images, targets, outputs = [], [], []
    dataset = dm.dataset("val")
    for image, target in (dataset[i] for i in range(len(dataset))):
        pairs = torch.unique(target["panoptic"].reshape(-1, 2), dim=0).tolist()
        segments = [
            {"id": inst if cls <= dm.num_things else 1000 + cls, "category_id": cls,
             "isthing": cls <= dm.num_things}
            for cls, inst in pairs
            if cls > 0
        ]  # fmt: skip
        images.append(image)
        targets.append(target)
        outputs.append({"panoptic": target["panoptic"], "segments_info": segments})
    writer.on_predict_start(Trainer(), None)
    writer.write_on_batch_end(Trainer(), None, outputs, None, (images, targets), 0, 0)
    writer.write_on_epoch_end(Trainer(), None, [], [])
    writer.on_predict_end(Trainer(), None)  # puts the files in place
    return writer.json_path


def test_train_eval_predict_and_pq_of_the_written_files(compose_cfg, tmp_path, small_panoptic):
    """The checkpoint evaluates to the PQ training logged; predict's files, scored against the
    ground truth by ``python -m seglab.metrics.panoptic_quality``'s ``pq_compute``, give it too."""
    cfg = compose_cfg(
        overrides=[
            *small_panoptic,
            "trainer.max_epochs=2",
            "data.num_samples={train: 16, val: 5, test: 3}",
            "data.image_size=64",
            *ONE_STUFF,
        ]
    )
    metrics, objects = train(cfg)
    val = metrics["val"]
    for key in ("loss", "loss_sem_seg", "loss_mask", "loss_classifier", "loss_objectness"):
        assert np.isfinite(metrics["fit"][f"train/{key}"]) and np.isfinite(val[f"val/{key}"])
    for key in ("pq", "sq", "rq", "pq_things", "pq_stuff", "map_segm", "miou", "pixel_acc"):
        assert 0 <= val[f"val/{key}"] <= 1, key
    assert val["val/pq"] > 0  # stuff found: the comparisons below have teeth

    best = metrics["best_checkpoint"]
    again, _ = evaluate(compose_cfg("eval", overrides=[f"ckpt_path={best}"]))
    for key, value in val.items():
        assert again["val"][key] == pytest.approx(value, abs=1e-6), key

    out = tmp_path / "pred"
    written, _ = predict(
        compose_cfg("predict", overrides=[f"ckpt_path={best}", "input=val", f"output={out}"])
    )
    pred_json = out / "val_panoptic.json"
    assert pred_json in written and len(written) == 1 + 2 * 5  # JSON, PNG + overlay per image
    gt_json = ground_truth_files(objects["datamodule"], tmp_path / "gt")
    files = pq_compute(gt_json, pred_json, workers=1)
    assert files["All"]["pq"] == pytest.approx(val["val/pq"], abs=1e-6)
    assert files["Things"]["pq"] == pytest.approx(val["val/pq_things"], abs=1e-6)
    assert files["Stuff"]["sq"] == pytest.approx(val["val/sq_stuff"], abs=1e-6)

    # image files: a PNG, a JSON entry and an overlay each, all void in the target
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 255, (40 + 8 * i, 48, 3), np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    out = tmp_path / "files"
    predict(
        compose_cfg("predict", overrides=[f"ckpt_path={best}", f"input={folder}", f"output={out}"])
    )
    annotations = json.loads((out / "images_panoptic.json").read_text())["annotations"]
    assert [a["file_name"] for a in annotations] == ["img0.png", "img1.png"]
    png = Image.open(out / "images_panoptic" / "img1.png")
    assert png.mode == "RGB" and png.size == (48, 48)
    assert (out / "images_panoptic_overlay" / "img0.png").is_file()


@pytest.mark.slow
def test_ddp_cpu_pq_equals_single_process(tmp_path, compose_cfg, small_panoptic):
    logs = tmp_path / "logs"
    result = run_cli(
        "train.py",
        *small_panoptic,
        "trainer=ddp_cpu",
        "trainer.max_epochs=2",
        "data.num_samples={train: 8, val: 5, test: 3}",  # 5: ranks get 3 and 2 scenes
        "data.image_size=64",
        *ONE_STUFF,
        "data.batch_size=2",
        "data.eval_batch_size=2",
        "callbacks.rich_progress_bar=null",
        f"paths.log_dir={logs}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (logs / "train" / "runs").iterdir()
    trained = json.loads((run / "metrics.json").read_text())
    ddp = trained["val"]  # the best checkpoint validated by 2 processes

    # the single process: evaluate() in this one (eval.py's function, without a second start)
    cfg = compose_cfg("eval", overrides=[f"ckpt_path={trained['best_checkpoint']}", "trainer=cpu"])
    single = evaluate(cfg)[0]["val"]
    assert single.keys() == ddp.keys() and single["val/pq"] > 0
    for key in ("pq", "sq", "rq", "pq_things", "pq_stuff", "sq_stuff", "rq_things", "miou"):
        assert ddp[f"val/{key}"] == single[f"val/{key}"], key  # exact: per-category sums


# heavy (python -m pytest -m heavy): 33 s, outside CI's 15 minutes; the PQ test above runs
# Panoptic FPN under DDP, and tests/data/test_panoptic_data.py reads this sample
@pytest.mark.heavy
def test_used_by_line_trains_on_the_coco_panoptic_sample_under_ddp(tmp_path, small_panoptic):
    """model=panoptic_fpn data=coco_panoptic trainer=ddp_cpu, on the real 2-image sample."""
    sample = require_data("coco_panoptic_sample", "sample_data")
    files = "{val: {images: input_images, annotations: panoptic_examples.json, panoptic: panoptic_examples}}"
    files = files.replace("{val:", "{train: {images: input_images, annotations: "
                          "panoptic_examples.json, panoptic: panoptic_examples}, val:")  # fmt: skip
    logs = tmp_path / "logs"
    result = run_cli(
        "train.py",
        *small_panoptic,
        "data=coco_panoptic",
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        f"data.data_dir={sample}",
        "~data.split_files",
        f"+data.split_files={files}",
        "data.num_workers=0",
        "data.batch_size=1",
        "data.eval_batch_size=1",
        "callbacks.rich_progress_bar=null",
        f"paths.log_dir={logs}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (logs / "train" / "runs").iterdir()
    val = json.loads((run / "metrics.json").read_text())["val"]
    for key in ("val/pq", "val/pq_things", "val/pq_stuff", "val/map_segm", "val/loss_sem_seg"):
        assert key in val and np.isfinite(val[key]), key
