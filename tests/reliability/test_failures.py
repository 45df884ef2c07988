"""Runs that fail say so: a NaN loss stops (or skips its step) naming the step and the last good
checkpoint, a DDP rank's exception ends every rank with its message printed once, a failed run's
metrics.json says "failed", and an error is one line at the end of the console, its traceback in
the run's log. Also the trainer group: GPU options on a CPU machine, every Trainer argument."""

from __future__ import annotations

import inspect
import json
from datetime import datetime
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from support import CONF, ROOT, run_cli

from seglab.callbacks import NonFiniteLossError, NonFiniteWeightsError
from seglab.train import train
from seglab.utils.instantiate import SEGLAB_TRAINER_KEYS, build_trainer

HERE = Path(__file__).resolve().parent
# 8 training images in batches of 4: two optimizer steps per epoch
STEPS_PER_EPOCH = 2
TWO_EPOCHS = [
    "trainer.max_epochs=2",
    "trainer.num_sanity_val_steps=0",
    "data.num_samples={train: 8, val: 2, test: 2}",
    "callbacks.early_stopping=null",
    "callbacks.visuals=null",
]


def fault(kind: str, **kwargs: object) -> list[str]:
    """Overrides that add ``faults.<kind>(**kwargs)`` (tests/reliability/faults.py) as a callback."""
    return [f"+callbacks.fault._target_=faults.{kind}"] + [
        f"+callbacks.fault.{key}={value}" for key, value in kwargs.items()
    ]


def load_weights_only(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def all_finite(checkpoint: dict) -> bool:
    return all(
        bool(torch.isfinite(v).all())
        for v in checkpoint["state_dict"].values()
        if v.is_floating_point()
    )


# ------------------------------------------------------------------------------- NaN loss


def test_nan_loss_stops_naming_the_step_and_the_last_good_checkpoint(compose_cfg, tmp_path):
    """The weights turn NaN at the second step of epoch 1: the run stops there, the message
    names the step and the checkpoint of epoch 0, which holds good weights, and metrics.json
    says the run failed with that message."""
    step = STEPS_PER_EPOCH + 1
    cfg = compose_cfg(overrides=[*TWO_EPOCHS, *fault("NanAt", step=step, where="weights")])
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg)
    message = str(info.value)
    assert f"at global step {step} (epoch 1, batch 1): stopped (on_nan_loss=stop)" in message
    good = message.split("Last good checkpoint: ")[1].split(". ")[0]
    assert Path(good).parent == tmp_path / "checkpoints"
    checkpoint = load_weights_only(good)
    assert checkpoint["epoch"] == 0 and all_finite(checkpoint)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["status"] == "failed"
    assert saved["error"] == f"NonFiniteLossError: {message}"


def test_nan_loss_skip_skips_the_step_and_goes_on(compose_cfg, tmp_path):
    """on_nan_loss=skip: the NaN batch's optimizer step is skipped and counted; the run ends
    normally with finite weights."""
    cfg = compose_cfg(overrides=["on_nan_loss=skip", *fault("NanAt", step=1, where="input")])
    metrics, objects = train(cfg)
    assert metrics["status"] == "completed"
    assert metrics["fit"]["train/skipped_steps"] == 1
    assert objects["trainer"].global_step == STEPS_PER_EPOCH
    assert all(bool(torch.isfinite(p).all()) for p in objects["model"].parameters())
    assert all_finite(load_weights_only(tmp_path / "checkpoints" / "last.ckpt"))


def test_nan_weights_are_never_saved_over_a_good_checkpoint(compose_cfg, tmp_path):
    """Weights that went NaN in epoch 1 (every step of it skipped) are refused at the epoch's
    checkpoint: last.ckpt and the best checkpoint stay those of epoch 0."""
    cfg = compose_cfg(
        overrides=[
            "on_nan_loss=skip",
            *TWO_EPOCHS,
            *fault("NanAt", step=STEPS_PER_EPOCH, where="weights"),
        ]
    )
    with pytest.raises(NonFiniteWeightsError, match=r"checkpoint not saved\. Last good checkpoint"):
        train(cfg)
    checkpoints = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in checkpoints] == ["epoch_000.ckpt", "last.ckpt"]
    for path in checkpoints:
        checkpoint = load_weights_only(path)
        assert checkpoint["epoch"] == 0 and all_finite(checkpoint)
        assert checkpoint["callbacks"]["NanGuard"] == {"skipped": 0}
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed"


def test_on_nan_loss_takes_stop_or_skip(compose_cfg):
    with pytest.raises(ValueError, match=r"on_nan_loss='ignore': expected one of stop, skip"):
        train(compose_cfg(overrides=["on_nan_loss=ignore"]))


# ------------------------------------------------------------------------------------ DDP


@pytest.mark.slow
def test_ddp_rank_failure_ends_every_rank_and_prints_once(tmp_path, monkeypatch):
    """Rank 1 raises at step 1 of a 2-process gloo run: both processes end within 60 s of the
    failure, non-zero, the message appears once, and rank 0's metrics.json carries it."""
    monkeypatch.setenv("PYTHONPATH", f"{ROOT / 'src'}:{HERE}")
    message = "rank one gives up"
    result = run_cli(
        "train.py",
        "trainer=ddp_cpu",
        "data.image_size=32",
        "data.num_samples={train: 8, val: 4, test: 2}",
        "data.batch_size=2",
        "trainer.max_epochs=1",
        "logger=csv",
        *fault("RaiseAt", rank=1, step=1, message=f"'{message}'"),
        f"hydra.run.dir={tmp_path}",
        timeout=300,
    )
    ended = datetime.now()
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert output.count(message) == 1, output[-3000:]
    assert "Traceback" not in output and "Error executing job" not in output
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["status"] == "failed"
    assert saved["error"] == f"rank 1: RuntimeError: {message}"
    # the first error logged (rank 1's, with its traceback) is the moment of the failure
    log = (tmp_path / "train.log").read_text()
    first_error = next(line for line in log.splitlines() if "][ERROR] - " in line)
    assert message in first_error
    failed_at = datetime.strptime(first_error[1:24], "%Y-%m-%d %H:%M:%S,%f")
    assert (ended - failed_at).total_seconds() < 60
    assert "Traceback" in log


# ------------------------------------------------------------------------ console and log


def test_train_error_is_one_line_at_the_end_and_the_run_is_marked_failed(tmp_path):
    """A bad value fails before the first epoch: exit 1, the message as the last line without a
    traceback, the traceback in train.log, metrics.json "failed" with the same line."""
    result = run_cli("train.py", "data.batch_size=0", f"hydra.run.dir={tmp_path}", timeout=300)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output
    line = result.stderr.strip().splitlines()[-1]
    assert line == "ValueError: data.batch_size=0: expected a positive integer"
    assert output.count("data.batch_size=0: expected") == 1
    assert "Traceback" in (tmp_path / "train.log").read_text()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["status"] == "failed" and saved["error"] == line


@pytest.mark.parametrize("script", ["eval.py", "predict.py"])
def test_eval_and_predict_errors_are_one_line_unless_full_errors_asked(
    script, tmp_path, monkeypatch
):
    """A missing checkpoint: eval says it in one line and exits 1, its traceback in eval.log;
    predict, asked for full errors (HYDRA_FULL_ERROR=1), shows the traceback too."""
    missing = tmp_path / "none.ckpt"
    args = [f"ckpt_path={missing}", f"hydra.run.dir={tmp_path / 'run'}"]
    if script == "predict.py":
        args += [f"input={tmp_path}", f"output={tmp_path / 'out'}"]
        monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    result = run_cli(script, *args, timeout=300)
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert f"ckpt_path='{missing}': no such checkpoint" in line
    log = (tmp_path / "run" / f"{script.removesuffix('.py')}.log").read_text()
    assert "Traceback" in log
    if script == "eval.py":
        assert line.startswith("FileNotFoundError: ckpt_path=")
        assert "Traceback" not in result.stdout + result.stderr
    else:
        assert "Traceback" in result.stderr


# -------------------------------------------------------------------------------- trainer


@pytest.mark.parametrize(
    ("option", "instead"), [("gpu", "trainer=cpu"), ("ddp", "trainer=ddp_cpu")]
)
def test_gpu_trainer_without_gpu_names_the_cpu_option(option, instead, compose_cfg, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_cfg(overrides=[f"trainer={option}"], quick=False)
    with pytest.raises(ValueError, match=rf"^trainer={option}: .* no GPU .* use {instead}"):
        build_trainer(cfg)


def test_every_trainer_argument_is_in_the_trainer_group(compose_cfg):
    """conf/trainer/default.yaml lists every argument of Lightning's Trainer (but the callbacks
    and loggers, built from their groups), with Lightning's default unless seglab chose one; so
    any is set without `+`, and reaches the Trainer."""
    listed = OmegaConf.to_container(OmegaConf.load(CONF / "trainer" / "default.yaml"))
    arguments = dict(inspect.signature(L.Trainer.__init__).parameters)
    for name in ("self", "callbacks", "logger"):
        arguments.pop(name)
    assert sorted(set(arguments) - set(listed)) == []
    assert sorted(set(listed) - set(arguments) - {"_target_", *SEGLAB_TRAINER_KEYS}) == []
    for name in SEGLAB_TRAINER_KEYS:
        listed.pop(name)
    seglab_choices = {
        "default_root_dir",
        "devices",
        "precision",
        "max_epochs",
        "min_epochs",
        "log_every_n_steps",
        "deterministic",
    }
    differ = {name for name, parameter in arguments.items() if listed[name] != parameter.default}
    assert differ == seglab_choices
    trainer = build_trainer(compose_cfg(overrides=["trainer.limit_train_batches=3"]))
    assert trainer.limit_train_batches == 3


def test_failed_run_keeps_an_earlier_runs_metrics_aside(compose_cfg, tmp_path):
    """A run failing in a reused folder moves the earlier metrics.json aside before marking its
    own as failed: nothing written before is lost."""
    (tmp_path / "metrics.json").write_text('{"status": "completed"}\n')
    with pytest.raises(ValueError):
        train(compose_cfg(overrides=["optimizer.lr=-1"]))
    (aside,) = tmp_path.glob("metrics.before-*.json")
    assert json.loads(aside.read_text()) == {"status": "completed"}
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed"
