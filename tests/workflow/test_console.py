"""A clean console and honest logs: the run config in every logger, run names that say what ran,
debug runs that keep their loggers, the best checkpoint's scores under best/, train rows in every
epoch, no warning a user cannot act on, eval's and predict's own --help, and a last line naming
the run folder and the best checkpoint."""

from __future__ import annotations

import csv
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from support import DDP_TINY, run_cli

from seglab.train import train
from seglab.utils.config import RUN_NAME_MAX, make_run_name


def read_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def epochs_with(rows: list[dict[str, str]], column: str) -> list[int]:
    """The ``epoch`` of every CSV row that holds a value of ``column``."""
    return [int(row["epoch"]) for row in rows if row.get(column)]


# ------------------------------------------------------------------------------------ run names


def test_run_name_keeps_what_ran_and_only_that():
    assert make_run_name("unet_small", "shapes", ["optimizer.lr=0.003"]) == (
        "unet_small-shapes-optimizer.lr=0.003"
    )
    # the group choices in the name, where the run writes and how it logs are not repeated
    noise = ["model=fcn8s", "data=shapes", "paths.log_dir=/tmp/x", "logger=[csv,tensorboard]"]
    assert make_run_name("fcn8s", "shapes", [*noise, "seed=1"]) == "fcn8s-shapes-seed=1"
    # sorted: the same run gets the same name whatever the order on the command line
    assert make_run_name("a", "b", ["y=1", "x=2"]) == make_run_name("a", "b", ["x=2", "y=1"])

    name = make_run_name("unet", "isbi2012", ["data.data_dir=/data/isbi", "x={a: 1, b: [2]}"])
    assert "/" not in name and " " not in name and "{" not in name
    assert name == "unet-isbi2012-data.data_dir=_data_isbi-x=a_1,b_2"

    long = [f"model.net.option_{i}={i}" for i in range(20)]
    first, second = make_run_name("m", "d", long), make_run_name("m", "d", long[:-1])
    assert len(first) == len(second) == RUN_NAME_MAX
    assert first != second and first.startswith("m-d-model.net.option_0=0")


def test_run_name_and_debug_loggers_in_the_composed_config(compose_cfg):
    cfg = compose_cfg(overrides=["model=fcn8s", "optimizer.lr=0.003"], quick=False)
    assert cfg.run_name == "fcn8s-shapes-optimizer.lr=0.003"
    for debug in ("limit", "overfit", "fast_dev_run"):
        cfg = compose_cfg(overrides=[f"debug={debug}", "logger=[csv,tensorboard]"])
        assert set(cfg.logger) == {"csv", "tensorboard"}, debug


# ------------------------------------------------------------------ what the loggers are given


def test_semantic_logs_config_epoch_rows_and_best_scores(compose_cfg):
    """debug=limit keeps the loggers; 2 epochs of 2 batches with log_every_n_steps=50 still have
    train rows; the best checkpoint's val and test are one best/ row each, not a third epoch."""
    overrides = [
        "debug=limit",
        "trainer.max_epochs=2",  # debug=limit's, over QUICK_TRAIN's 1
        "trainer.log_every_n_steps=50",
        "logger=[csv,tensorboard]",
        "optimizer.lr=0.003",
        "test=true",
    ]
    metrics, objects = train(compose_cfg(overrides=overrides))
    cfg, trainer = objects["cfg"], objects["trainer"]
    run = Path(cfg.paths.output_dir)
    rows = read_rows(run)

    assert trainer.max_epochs == 2 and trainer.num_training_batches < 50
    assert epochs_with(rows, "train/loss_epoch") == [0, 1]
    assert epochs_with(rows, "train/miou") == [0, 1]
    assert epochs_with(rows, "val/miou") == [0, 1]
    (best_val,) = [row for row in rows if row.get("best/val/miou")]
    (best_test,) = [row for row in rows if row.get("best/test/miou")]
    assert not best_val["val/miou"] and not best_test.get("test/miou")
    assert float(best_val["best/val/miou"]) == pytest.approx(metrics["val"]["val/miou"])
    assert float(best_test["best/test/miou"]) == pytest.approx(metrics["test"]["test/miou"])
    best_score = trainer.checkpoint_callback.best_model_score.item()
    assert metrics["val"]["val/miou"] == pytest.approx(best_score, abs=1e-7)
    assert not [k for k in (*metrics["val"], *metrics["test"]) if k.startswith("best/")]

    for logger in ("csv", "tensorboard"):
        logged = yaml.safe_load((run / logger / "hparams.yaml").read_text())
        assert "hydra" not in logged
        for key in ("model", "data", "optimizer", "scheduler", "trainer", "seed", "tags"):
            assert key in logged, (logger, key)
        assert logged["optimizer"]["lr"] == 0.003
        assert logged["trainer"]["log_every_n_steps"] == 50
        assert logged["data"]["num_classes"] == cfg.data.num_classes
        assert logged["run_name"] == cfg.run_name  # cut (QUICK_TRAIN's overrides), see above
        assert cfg.run_name.startswith("unet_small-shapes-data.batch_size=4-")
        assert "optimizer.lr=0.003" in logged["overrides"]


@pytest.mark.slow
def test_instance_train_rows_every_epoch(compose_cfg, small_maskrcnn_overrides):
    """Mask R-CNN, 2 batches an epoch and log_every_n_steps=50: no step row, and each loss has
    its epoch row (training only: checkpoints and validation are the semantic test's)."""
    overrides = [
        "model=maskrcnn",
        *small_maskrcnn_overrides,
        "data.image_size=64",
        "data.num_samples={train: 4, val: 1, test: 1}",
        "data.batch_size=2",
        "trainer.log_every_n_steps=50",
        "callbacks=none",
        "trainer.enable_checkpointing=false",
        "trainer.limit_val_batches=0",
        "validate=false",
    ]
    _, objects = train(compose_cfg(overrides=overrides))
    assert objects["trainer"].num_training_batches == 2
    rows = read_rows(Path(objects["cfg"].paths.output_dir))
    assert epochs_with(rows, "train/loss") == []
    names = ("loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness")
    for name in names:
        assert epochs_with(rows, f"train/{name}_epoch") == [0], name


# ---------------------------------------------------------------------------------- the console

# Lines of the console that read as warnings: Python's and Lightning's warning format
# (file.py:LINE: message), a warning category, a logged WARNING, and Lightning's INFO notices that
# are warnings or advertisements in all but level.
WARNING_LINE = re.compile(
    r"\.py:\d+: |Warning\b|\bWARN|💡|\bTip:|deprecat|recommended|Skipping", re.IGNORECASE
)
# Warnings the default job may print, each a regex with why no setting of a run avoids it.
# Empty today: seglab.utils.console filters the known ones at their source.
ALLOWED: tuple[str, ...] = ()


def assert_clean_and_ends_with_the_run(result: subprocess.CompletedProcess, logs: Path) -> None:
    """No warning outside ALLOWED in ``result``'s console, and its last line says where the run
    folder under ``logs`` and the best checkpoint are."""
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    warned = [
        line
        for line in lines
        if WARNING_LINE.search(line) and not any(re.search(a, line) for a in ALLOWED)
    ]
    assert not warned, "\n".join(warned)

    (run,) = (logs / "train" / "runs").iterdir()
    (best,) = (run / "checkpoints").glob("epoch_*.ckpt")
    # Hydra's console handler writes the log to stdout; Lightning writes its notices to stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.endswith(f"[seglab.train][INFO] - Run folder: {run}; best checkpoint: {best}")


def test_default_job_console_is_clean_and_ends_with_the_run(tmp_path):
    """`python src/train.py` (tiny, one process): a clean console ending with the run."""
    tiny = [o for o in DDP_TINY if not o.startswith("trainer=")]
    result = run_cli(
        "train.py", "trainer=default", *tiny, f"paths.log_dir={tmp_path}", timeout=300,
        warnings=True,
    )  # fmt: skip
    assert_clean_and_ends_with_the_run(result, tmp_path)


@pytest.mark.slow
def test_ddp_cpu_job_console_is_clean_and_ends_with_the_run(ddp_cpu_run):
    """The same job on 2 processes (the session's shared run): the per-rank notices of values
    logged unsynced stay quiet, and no rank hangs at an epoch end."""
    assert_clean_and_ends_with_the_run(ddp_cpu_run.result, ddp_cpu_run.logs)


@pytest.mark.parametrize(
    ("script", "own", "other"),
    [
        ("eval.py", ["seglab eval", "ckpt_path=PATH", "split=val|test", "split: val"], []),
        (
            "predict.py",
            ["seglab predict", "input=PATH|SPLIT", "output=DIR", "overlay: true"],
            ["split: val"],
        ),
    ],
)
def test_eval_and_predict_help_are_their_own(script, own, other):
    result = run_cli(script, "--help")
    assert result.returncode == 0, result.stderr
    for text in own:
        assert text in result.stdout, text
    assert f"python src/{script} ckpt_path=" in result.stdout  # its own examples
    # not training's help: its examples and its groups (optimizer, scheduler, experiment, ...)
    for text in ("python src/train.py model=", "== Configuration groups ==", "optimizer:", *other):
        assert text not in result.stdout, text
