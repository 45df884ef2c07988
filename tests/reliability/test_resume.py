"""Runs that survive: a run stopped by SIGTERM, SIGINT or SIGKILL and resumed ends with the
uninterrupted run's weights, bit for bit, and its logged metrics, in its own folder.

One uninterrupted reference run (module fixture) of 3 epochs x 4 steps; the stops are
``stopper.StopAt`` callbacks that signal their own process after a given step.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from support import QUICK_TRAIN, ROOT, compose_config

from seglab.train import train
from seglab.utils.resume import resume_arguments

HERE = Path(__file__).resolve().parent

# 8 samples in batches of 2: 4 steps an epoch, 12 in all; every row logged and on disk
RUN = [
    "data.num_samples={train: 8, val: 2, test: 2}",
    "data.batch_size=2",
    "trainer.max_epochs=3",
    "trainer.log_every_n_steps=1",
    "callbacks.visuals=null",
    "callbacks.early_stopping=null",
    "callbacks.rich_progress_bar=null",
    "callbacks.model_summary=null",
    "validate=false",
]


def stop_at(step: int, signal_name: str) -> list[str]:
    return [
        "+callbacks.stop._target_=stopper.StopAt",
        f"+callbacks.stop.step={step}",
        f"+callbacks.stop.signal_name={signal_name}",
    ]


def train_cli(log: Path, *args: str) -> int:
    """Exit status of ``src/train.py args`` in a fresh process, its output in ``log``: a file,
    not a pipe, since loader workers outliving a killed run would hold a pipe open."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    with log.open("w") as out:
        command = [sys.executable, str(ROOT / "src" / "train.py"), *args]
        done = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env, timeout=600
        )
    return done.returncode


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@dataclass
class Reference:
    weights: dict[str, torch.Tensor]
    rows: list[dict[str, str]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Reference:
    """The uninterrupted run (in-process, ``num_workers=0``)."""
    run_dir = tmp_path_factory.mktemp("reference")
    _, objects = train(compose_config("train", RUN, run_dir))
    weights = {k: v.detach().clone() for k, v in objects["model"].state_dict().items()}
    return Reference(weights, csv_rows(run_dir))


def assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    differ = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not differ, f"{len(differ)} tensors differ from the uninterrupted run: {differ[:5]}"


@pytest.mark.slow
def test_a_run_repeats_to_every_digit_for_its_seed(reference: Reference, tmp_path: Path) -> None:
    """The README's claim, as stated: the same command, seed, machine, thread count and
    library versions give the same weights and every logged figure, to the last bit."""
    _, objects = train(compose_config("train", RUN, tmp_path))
    assert_same_weights(objects["model"].state_dict(), reference.weights)
    assert csv_rows(tmp_path) == reference.rows


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signal_name", "step", "code"),
    [
        ("SIGTERM", 5, 143),  # mid-epoch: the 1st of the 2nd epoch's 4 steps
        ("SIGTERM", 4, 143),  # the end of the 1st epoch
        ("SIGINT", 10, 130),  # mid-epoch, Ctrl+C
    ],
)
def test_signal_saves_the_step_and_the_resumed_run_repeats_the_uninterrupted_one(
    reference: Reference, tmp_path: Path, signal_name: str, step: int, code: int
) -> None:
    with pytest.raises(SystemExit) as stopped:
        train(compose_config("train", RUN + stop_at(step, signal_name), tmp_path))
    assert stopped.value.code == code
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"
    assert metrics["signal"] == signal_name
    assert metrics["resume_from"] == str(tmp_path / "checkpoints" / "last.ckpt")
    # plain data only (common contract 2): RNG, loader position and metric states included
    checkpoint = torch.load(metrics["resume_from"], map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == step

    resumed = [*RUN, f"ckpt_path={metrics['resume_from']}"]
    result, objects = train(compose_config("train", resumed, tmp_path))
    assert result["status"] == "completed"
    assert_same_weights(objects["model"].state_dict(), reference.weights)
    assert csv_rows(tmp_path) == reference.rows  # continued, no row twice, none lost


@pytest.mark.slow
def test_sigkill_then_ckpt_path_last_continues_the_run_in_its_folder_exactly(
    reference: Reference, tmp_path: Path
) -> None:
    """SIGKILL leaves only the step-interval checkpoint (every 3 steps: killed after step 8,
    resumed from step 6); two loader workers, whose results equal the in-process loading."""
    logs = f"paths.log_dir={tmp_path}"
    every_3 = "callbacks.last_checkpoint.every_n_train_steps=3"
    args = [*QUICK_TRAIN, *RUN, logs, every_3, "data.num_workers=2", *stop_at(8, "SIGKILL")]
    assert train_cli(tmp_path / "killed.log", *args) == -signal.SIGKILL
    (run_dir,) = (tmp_path / "train" / "runs").iterdir()
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6

    # the stop is the run's own override: the resumed run sets it off
    resumed = tmp_path / "resumed.log"
    assert train_cli(resumed, "ckpt_path=last", logs, "callbacks.stop.step=-1") == 0, (
        resumed.read_text()[-3000:]
    )
    assert [p.name for p in (tmp_path / "train" / "runs").iterdir()] == [run_dir.name]
    assert f"Restored all states from the checkpoint at {last}" in resumed.read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["global_step"] == 12
    assert_same_weights(final["state_dict"], reference.weights)
    assert csv_rows(run_dir) == reference.rows


def _saved_run(run_dir: Path, overrides: list[str]) -> Path:
    """A run folder as ``src/train.py`` leaves it, for ``resume_arguments``."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    return run_dir


def test_resume_run_dir_recomposes_the_run_in_its_own_folder(tmp_path: Path) -> None:
    saved = ["model=fcn8s", "+callbacks.x.y=1", "trainer.max_epochs=3"]
    run_dir = _saved_run(tmp_path / "run", saved)
    new = ["trainer.max_epochs=5", "callbacks.x.y=2", "model=fcn8s"]  # the run's own model: kept
    argv = resume_arguments(["train.py", f"resume={run_dir}", *new])
    assert argv[0] == "train.py"
    assert argv.count("model=fcn8s") == 1
    assert "trainer.max_epochs=5" in argv and "trainer.max_epochs=3" not in argv
    # a key the run added keeps its "+", or Hydra would refuse the override
    assert "+callbacks.x.y=2" in argv and "+callbacks.x.y=1" not in argv
    assert argv[-3:] == [
        f"ckpt_path='{run_dir / 'checkpoints' / 'last.ckpt'}'",
        f"resume='{run_dir}'",
        f"hydra.run.dir='{run_dir}'",
    ]


def test_ckpt_path_last_picks_the_run_whose_last_checkpoint_is_newest(tmp_path: Path) -> None:
    old = _saved_run(tmp_path / "train" / "runs" / "b-old", ["seed=1"])
    new = _saved_run(tmp_path / "train" / "multiruns" / "x" / "0", ["seed=2"])
    os.utime(old / "checkpoints" / "last.ckpt", (1, 1))
    argv = resume_arguments(["train.py", "ckpt_path=last", f"paths.log_dir={tmp_path}"])
    assert "seed=2" in argv and argv[-1] == f"hydra.run.dir='{new}'"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["resume={run}", "model=unet"], "'model=unet' would change the run"),
        (["resume={run}", "optimizer.lr=0.1"], "'optimizer.lr=0.1' would change the run"),
        (["resume={run}/nothing"], "no .hydra/overrides.yaml"),
        (["ckpt_path=last", "paths.log_dir={run}/empty"], "no run under"),
    ],
)
def test_resume_refuses_what_would_not_continue_the_run(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    run_dir = _saved_run(tmp_path / "run", ["model=fcn8s"])
    with pytest.raises((ValueError, FileNotFoundError), match=message) as error:
        resume_arguments(["train.py", *(a.format(run=run_dir) for a in arguments)])
    assert "\n" not in str(error.value)


def test_resume_without_a_checkpoint_says_to_start_again(tmp_path: Path) -> None:
    run_dir = _saved_run(tmp_path / "run", [])
    (run_dir / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="no checkpoints/last.ckpt.*start it again"):
        resume_arguments(["train.py", f"resume={run_dir}"])


@pytest.mark.slow
def test_slurm_requeue_signal_saves_the_step_requeues_and_the_requeued_job_finds_its_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    """Under SLURM (Lightning's SLURMEnvironment, auto-requeue on), SIGUSR1 stops at the end
    of the step, saves it and runs ``scontrol requeue <job>`` (a fake on PATH that records its
    arguments); the requeued job (``SLURM_RESTART_COUNT=1``) resumes that folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "seglab"}
    slurm |= {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    slurm |= {"SLURM_NODELIST": "localhost"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    run_dir = tmp_path / "logs" / "train" / "runs" / "first"
    overrides = [*RUN, "trainer.max_epochs=2", *stop_at(6, "SIGUSR1")]
    with pytest.raises(SystemExit) as stopped:
        train(compose_config("train", overrides, run_dir))
    assert stopped.value.code == 128 + signal.SIGUSR1
    assert calls.read_text().split() == ["requeue", "4242"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["status"], metrics["signal"], metrics["requeued"]) == (
        "interrupted",
        "SIGUSR1",
        True,
    )
    saved = torch.load(metrics["resume_from"], map_location="cpu", weights_only=True)
    assert saved["global_step"] == 6

    _saved_run_config = run_dir / ".hydra"
    _saved_run_config.mkdir()
    (_saved_run_config / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    logs = f"paths.log_dir={tmp_path / 'logs'}"
    argv = resume_arguments([sys.argv[0], *overrides, logs])
    assert argv[-1] == f"hydra.run.dir='{run_dir}'"
    assert f"ckpt_path='{run_dir / 'checkpoints' / 'last.ckpt'}'" in argv
