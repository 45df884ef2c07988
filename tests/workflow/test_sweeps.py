"""Sweeps: what metrics.json records, the sweep summary a multirun writes (also when a job
fails), and an Optuna search whose objective is the monitored metric."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf
from support import CONF, compose_config, run_cli

from seglab.train import _saved_best_score, train
from seglab.utils.sweep import RECORD_NAME, SUMMARY_CSV, SUMMARY_MD, SweepSummary

# a tiny U-Net on 32 px scenes: about a second a job
TINY = [
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "data.num_samples={train: 8, val: 4, test: 2}",
    "data.image_size=32",
    "data.batch_size=4",
    "model.net.depth=2",
    "callbacks.rich_progress_bar=null",
    "logger=csv",
]


def read_summary(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / SUMMARY_CSV, newline="") as f:
        return list(csv.DictReader(f))


def only_sweep(logs: Path, task_name: str = "train") -> Path:
    (sweep,) = (logs / task_name / "multiruns").iterdir()
    return sweep


def test_metrics_json_records_the_run(tmp_path):
    overrides = ["trainer.max_epochs=3", "optimizer.lr=0.01", "model.net.depth=2"]
    train(compose_config("train", [*overrides, "callbacks.rich_progress_bar=null"], tmp_path))
    saved = json.loads((tmp_path / "metrics.json").read_text())

    assert "optimizer.lr=0.01" in saved["overrides"]
    assert saved["status"] == "completed" and saved["epochs"] == 3
    assert saved["run_dir"] == str(tmp_path) and saved["wall_time_s"] > 0
    # the best value and epoch, checked against the epoch rows the CSV logger wrote
    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/miou")]
    scores = [float(r["val/miou"]) for r in rows]
    best_row = rows[scores.index(max(scores))]
    monitor = saved["monitor"]
    assert (monitor["name"], monitor["mode"]) == ("val/miou", "max")
    assert monitor["best"] == pytest.approx(max(scores), abs=1e-6)
    assert monitor["best_epoch"] == int(best_row["epoch"])
    assert Path(saved["best_checkpoint"]).name == f"epoch_{monitor['best_epoch']:03d}.ckpt"
    # what a run resumed in another folder reads, where Lightning reloads only the best path
    checkpoint = torch.load(saved["best_checkpoint"], map_location="cpu", weights_only=False)
    assert float(_saved_best_score(checkpoint, "val/miou")) == monitor["best"]


def test_single_run_writes_no_summary(tmp_path):
    cfg = compose_config("train", [], tmp_path)  # hydra.mode: RUN
    ret = JobReturn(overrides=[], status=JobStatus.COMPLETED)
    callback = SweepSummary()
    callback.on_job_start(config=cfg)
    callback.on_job_end(config=cfg, job_return=ret)
    assert not list(tmp_path.rglob(RECORD_NAME)) and not list(tmp_path.rglob(SUMMARY_CSV))


# each search: the network it tunes and the metric it maximises
SEARCHES = {
    "unet_shapes_optuna": ("UNet", "val/miou"),
    "maskrcnn_shapes_optuna": ("MaskRCNN", "val/map_segm"),
    "panoptic_fpn_shapes_optuna": ("PanopticFPN", "val/pq"),
}


def test_every_search_is_checked():
    assert sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml")) == sorted(SEARCHES)


@pytest.mark.parametrize("search", sorted(SEARCHES))
def test_hparams_search_options_compose(tmp_path, search):
    cfg = compose_config("train", [f"hparams_search={search}"], tmp_path, quick=False)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.mode == RunMode.MULTIRUN
    net, metric = SEARCHES[search]
    assert cfg.model.net._target_.split(".")[-1] == net
    assert cfg.data._target_.endswith("ShapesDataModule") and cfg.data.task == cfg.model.task
    # Optuna's direction follows the mode of the metric the checkpoint callback keeps
    checkpoint = cfg.callbacks.model_checkpoint
    assert checkpoint.monitor == metric
    assert sweeper.direction == {"max": "maximize", "min": "minimize"}[checkpoint.mode]
    for key in sweeper.params:  # every searched key is a key of the run's config
        assert OmegaConf.select(cfg, key, default="absent") != "absent", key


@pytest.mark.slow
def test_ddp_multirun_summary_ranks_jobs_and_keeps_failures(tmp_path):
    """A multirun of DDP jobs (2 CPU processes each) with a failing job between them.

    The summary ranks the jobs and keeps the failure, and the sweep exits non-zero. Each job
    writes exactly one folder: Lightning restarts the script for the second rank, which without
    ``pin_spawned_ranks_to_job`` reruns the whole sweep into a second sweep folder, and without
    ``job_environment`` the job after a DDP job waits for ranks nobody starts.
    """
    logs = tmp_path / "logs"
    result = run_cli(
        "train.py",
        "-m",
        f"paths.log_dir={logs}",
        *TINY,
        "trainer=ddp_cpu",
        "optimizer.lr=0.01,-1,0.003",
    )
    assert result.returncode != 0, "a sweep with a failed job must exit non-zero"
    assert [p.name for p in (logs / "train").iterdir()] == ["multiruns"]  # no runs/ folder
    sweep = only_sweep(logs)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2"]
    assert "MEMBER: 2/2" in result.stdout + result.stderr  # the jobs did run 2 ranks

    rows = read_summary(sweep)
    assert [r["status"] for r in rows] == ["completed", "completed", "failed"]
    failed = rows[-1]
    assert failed["job"] == "1" and "optimizer.lr=-1" in failed["overrides"]
    assert "optimizer.lr" in failed["error"]
    assert json.loads((sweep / "1" / "metrics.json").read_text())["status"] == "failed"
    for row in rows[:2]:
        metrics = json.loads((sweep / row["job"] / "metrics.json").read_text())
        assert float(row["best"]) == metrics["monitor"]["best"]
        assert float(row["val/miou"]) == metrics["val"]["val/miou"]
        assert row["run_dir"] == str(sweep / row["job"])
        assert row["best_checkpoint"] == metrics["best_checkpoint"]
        assert row["overrides"].split() == metrics["overrides"]
    assert float(rows[0]["best"]) >= float(rows[1]["best"])

    table = (sweep / SUMMARY_MD).read_text()
    assert "3 jobs, 2 completed, 1 failed" in table
    assert table.count("\n| ") == 4  # header + 3 jobs


@pytest.mark.slow
def test_optuna_search_returns_the_monitored_metric(tmp_path):
    logs = tmp_path / "logs"
    result = run_cli(
        "train.py",
        "-m",
        "hparams_search=unet_shapes_optuna",
        "hydra.sweeper.n_trials=2",
        f"paths.log_dir={logs}",
        *TINY,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = only_sweep(logs, "unet_shapes_optuna")
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    rows = read_summary(sweep)
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows)

    optuna = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = rows[0]
    assert optuna["best_value"] == float(best["best"])
    assert max(float(r["best"]) for r in rows) == optuna["best_value"]
    chosen = dict(o.split("=", 1) for o in best["overrides"].split())
    for key, value in optuna["best_params"].items():
        assert float(chosen[key]) == pytest.approx(float(value)), key
