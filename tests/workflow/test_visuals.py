"""The Visuals callback and the W&B run settings: overlays, confusion matrix and per-class IoU in
the run folder, TensorBoard and an offline W&B run; group, job type, tags, name, config and best
summary of the W&B run; resuming a run continues its W&B run id."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from support import compose_config

from seglab.callbacks import WANDB_RUN_KEY, Visuals
from seglab.train import train

wandb = pytest.importorskip("wandb")
pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = ["callbacks.rich_progress_bar=null", "callbacks.model_summary=null"]
_BLOCK = 32 * 1024  # the .wandb log's block size (LevelDB's log format)


def wandb_records(path: Path) -> Iterator[pb.Record]:
    """The records of an offline run's ``run-<id>.wandb`` transaction log.

    wandb 0.31 has no Python reader of its own (its Go core writes and reads the file): the log
    is a 7-byte ``:W&B`` header, then LevelDB-log chunks (CRC, length, type) in 32 KiB blocks,
    each record a ``wandb_internal_pb2.Record``.
    """
    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a chunk header: padding
            pos += _BLOCK - pos % _BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            record = pb.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def offline_run(run_dir: Path) -> Path:
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    return folder


def finish_wandb() -> None:
    """Finish the W&B run and stop wandb's service process: ``finish`` alone may return before
    the service has written the whole transaction log (seen on a loaded machine)."""
    wandb.finish()
    wandb.teardown()


def run_train(tmp: Path, overrides: list[str]):
    cfg = compose_config("train", [*QUIET, *overrides], tmp)
    try:
        return cfg, *train(cfg)
    finally:
        finish_wandb()


def test_semantic_visuals_in_files_tensorboard_and_wandb(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, _, objects = run_train(
        tmp_path, ["logger=many", "trainer.max_epochs=2", "callbacks.visuals.num_images=3"]
    )
    run = Path(cfg.paths.output_dir)
    names = list(objects["model"].class_names)
    for epoch in ("epoch_000", "epoch_001"):
        folder = run / "visuals" / epoch
        overlays = sorted(p.name for p in folder.glob("0*.png"))
        assert overlays == ["00_000000.png", "01_000001.png", "02_000002.png"], overlays
        panels = np.asarray(Image.open(folder / overlays[0]))
        # image | ground truth | prediction, 32 px enlarged to 128, 4-pixel gaps
        assert panels.shape == (128, 3 * 128 + 2 * 4, 3)
        assert not np.array_equal(panels[:, :128], panels[:, -128:])  # the prediction is drawn
        assert Image.open(folder / "confusion_matrix.png").size[0] > 200
        with open(folder / "per_class_iou.csv") as f:
            rows = list(csv.DictReader(f))
        assert [r["class"] for r in rows] == names
    # the last epoch's IoU is the one the task logged for that epoch
    with open(run / "csv" / "metrics.csv") as f:
        (logged,) = [r for r in csv.DictReader(f) if r["epoch"] == "1" and r["val/miou"]]
    for row in rows:
        assert float(row["iou"]) == pytest.approx(float(logged[f"val/iou_{row['class']}"]))

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    images = events.Tags()["images"]
    assert "val/confusion_matrix" in images and "val/predictions/00_000000" in images
    # at the global step of each epoch's end (2 batches an epoch)
    assert [e.step for e in events.Images("val/predictions/02_000002")] == [2, 4]
    assert "val/per_class_iou/text_summary" in events.Tags()["tensors"]

    # the LOGS helper's train() logs the resolved config; here the test does it
    (wandb_logger,) = [lg for lg in objects["trainer"].loggers if "Wandb" in type(lg).__name__]
    offline = offline_run(run)
    media = offline / "files" / "media"
    assert len(list((media / "images" / "val").glob("predictions_*.png"))) == 2 * 3
    assert len(list((media / "images" / "mask" / "val").glob("predictions_*.mask.png"))) == 2 * 6
    assert len(list((media / "images" / "val").glob("confusion_matrix_*.png"))) == 2
    (table, *_) = sorted((media / "table" / "val").glob("per_class_iou_*.table.json"))
    assert [row[0] for row in json.loads(table.read_text())["data"]] == names

    records = list(wandb_records(offline / f"run-{wandb_logger.version}.wandb"))
    (start,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert start.display_name == cfg.run_name
    assert cfg.run_name.startswith("unet_small-shapes-")  # then the test's overrides
    assert start.job_type == "semantic" and start.run_group == ""
    assert list(start.tags) == ["unet_small", "shapes", "dev"]
    summary = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            summary.update(
                {"/".join(u.nested_key) or u.key: u.value_json for u in record.summary.update}
            )
    best = float(objects["trainer"].checkpoint_callback.best_model_score)
    assert json.loads(summary["val/miou"]) == {"max": pytest.approx(best)}
    masks = [r for r in records if r.WhichOneof("record_type") == "config"]
    assert any("mask/class_labels" in u.value_json for r in masks for u in r.config.update)


def test_resolved_config_reaches_the_wandb_run(tmp_path):
    """What LOGS' train() does with every logger (log_hyperparams of the resolved config) lands
    in the offline run's config."""
    cfg = compose_config("train", ["logger=wandb"], tmp_path)
    from seglab.utils.instantiate import build_list

    (logger,) = build_list(cfg.logger, "logger")
    try:
        resolved = OmegaConf.to_container(cfg, resolve=False)
        resolved = {k: OmegaConf.select(cfg, k) for k in resolved if k != "hydra"}
        logger.log_hyperparams(OmegaConf.to_container(OmegaConf.create(resolved), resolve=True))
        run_id = logger.version
    finally:
        finish_wandb()
    records = wandb_records(offline_run(tmp_path) / f"run-{run_id}.wandb")
    config = {
        u.key: json.loads(u.value_json)
        for r in records
        if r.WhichOneof("record_type") == "config"
        for u in r.config.update
    }
    assert config["model"]["net"]["_target_"] == "seglab.models.UNet"
    assert config["run_name"] == cfg.run_name and config["optimizer"]["lr"] == cfg.optimizer.lr


def test_wandb_group_is_the_experiment_else_the_sweep(compose_cfg):
    cfg = compose_cfg(overrides=["logger=wandb", "experiment=unet_isbi_cpu"], quick=False)
    assert cfg.logger.wandb.group == "unet_isbi_cpu"
    assert cfg.logger.wandb.tags == [
        "unet",
        "isbi2012",
        *[t for t in cfg.tags if t not in ("unet", "isbi2012")],
    ]
    cfg = compose_cfg(
        overrides=["logger=wandb", "hydra.mode=MULTIRUN", "hydra.sweep.dir=/x/sweep_7"]
    )
    assert cfg.logger.wandb.group == "sweep_7" and cfg.logger.wandb.job_type == "semantic"


def test_resume_continues_the_wandb_run(tmp_path):
    first, _, objects = run_train(tmp_path / "a", ["logger=wandb", "callbacks.visuals=null"])
    run_id = objects["trainer"].loggers[0].version
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)[WANDB_RUN_KEY] == run_id

    second, _, objects = run_train(
        tmp_path / "b",
        ["logger=wandb", "callbacks.visuals=null", "trainer.max_epochs=2", f"ckpt_path={last}"],
    )
    assert objects["trainer"].loggers[0].version == run_id
    assert offline_run(tmp_path / "b").name.endswith(f"-{run_id}")
    (start,) = [
        r.run
        for r in wandb_records(offline_run(tmp_path / "b") / f"run-{run_id}.wandb")
        if r.WhichOneof("record_type") == "run"
    ]
    assert start.run_id == run_id
    resumed = Path(second.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(resumed, weights_only=False)[WANDB_RUN_KEY] == run_id


def test_visuals_leave_training_and_metrics_alone_and_follow_every_n_epochs(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="seglab.callbacks.visuals")
    common = ["trainer.max_epochs=3", "callbacks.early_stopping=null"]
    _, drawn, _ = run_train(
        tmp_path / "a",
        [*common, "callbacks.visuals.every_n_epochs=2", "callbacks.visuals.num_images=1"],
    )
    _, plain, _ = run_train(tmp_path / "b", [*common, "callbacks.visuals=null"])
    assert drawn["fit"] == plain["fit"] and drawn["val"] == plain["val"]
    folders = sorted(p.name for p in (tmp_path / "a" / "visuals").iterdir())
    assert folders == ["epoch_000", "epoch_002"]
    assert not (tmp_path / "b" / "visuals").exists()
    assert not [r for r in caplog.records if "no validation set" in r.getMessage()]


def test_no_validation_set_is_said_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="seglab.callbacks.visuals")
    run_train(
        tmp_path,
        [
            "trainer.limit_val_batches=0",
            "trainer.max_epochs=2",
            "validate=false",
            "callbacks.model_checkpoint.monitor=null",
            "callbacks.early_stopping=null",
        ],
    )
    said = [r for r in caplog.records if "no validation set" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    assert not (tmp_path / "visuals").exists()


def test_bad_settings_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="callbacks.visuals.every_n_epochs=0"):
        Visuals(dirpath=tmp_path, every_n_epochs=0)
    with pytest.raises(ValueError, match="callbacks.visuals.num_images=-1"):
        Visuals(dirpath=tmp_path, num_images=-1)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["maskrcnn", "panoptic_fpn"])
def test_instance_and_panoptic_overlays(tmp_path, model, small_maskrcnn_overrides):
    cfg, _, objects = run_train(
        tmp_path,
        [
            f"model={model}",
            *small_maskrcnn_overrides,
            "model.net.anchor_sizes=[8,16,32,64,128]",
            *(
                ["model.net.stuff_area=16", "data.stuff_classes=[flat]"]
                if model != "maskrcnn"
                else []
            ),
            "data.image_size=64",
            "data.num_samples={train: 4, val: 2, test: 2}",
            "data.batch_size=2",
            "callbacks.visuals.num_images=2",
            "callbacks.visuals.score_threshold=0.0",
            "validate=false",
            "logger=wandb",
        ],
    )
    # W&B: both overlays, each with prediction and ground truth boxes and class-labelled masks
    offline = offline_run(Path(cfg.paths.output_dir))
    (logger,) = objects["trainer"].loggers
    logged = {  # the history's val/predictions entry, one item per field
        item.nested_key[1]: json.loads(item.value_json)
        for record in wandb_records(offline / f"run-{logger.version}.wandb")
        if record.WhichOneof("record_type") == "history"
        for item in record.history.item
        if list(item.nested_key[:1]) == ["val/predictions"]
    }
    assert logged["count"] == 2 and logged["captions"] == ["000000", "000001"]
    assert len(logged["all_masks"]) == len(logged["all_boxes"]) == 2
    for masks, boxes in zip(logged["all_masks"], logged["all_boxes"]):
        assert set(masks) == {"prediction", "ground_truth"}
        assert set(boxes) == {"predictions", "ground_truth"}
    boxes = sorted((offline / "files" / "media" / "metadata" / "boxes2D" / "val").glob("*.json"))
    assert any(json.loads(b.read_text())["box_data"] for b in boxes)  # ground truth objects
    folder = Path(cfg.paths.output_dir) / "visuals" / "epoch_000"
    overlays = sorted(p.name for p in folder.glob("0*.png"))
    assert overlays == ["00_000000.png", "01_000001.png"], overlays
    panels = np.asarray(Image.open(folder / overlays[0]))
    assert panels.shape == (128, 3 * 128 + 2 * 4, 3)
    image, truth = panels[:, :128].astype(int), panels[:, 132:260].astype(int)
    assert np.abs(image - truth).sum() > 0  # the ground truth's masks are drawn
    assert (folder / "confusion_matrix.png").is_file() == (model == "panoptic_fpn")
    assert not (folder / "per_class_iou.csv").exists()


def test_each_train_call_gets_its_own_wandb_run(tmp_path):
    """As the jobs of a multirun do (one process): no job logs into the previous job's run."""
    overrides = ["logger=wandb", "callbacks.visuals=null"]
    try:
        ids = [
            train(compose_config("train", [*QUIET, *overrides], tmp_path / job))[1]["trainer"]
            .loggers[0]
            .version
            for job in ("0", "1")
        ]
    finally:
        finish_wandb()
    assert ids[0] != ids[1]
    for job, run_id in zip(("0", "1"), ids):
        assert offline_run(tmp_path / job).name.endswith(f"-{run_id}")
