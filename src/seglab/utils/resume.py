"""Continuing a run in its own folder: which run (``resume=RUN_DIR``, ``ckpt_path=last``, a
requeued SLURM job), the command line that recomposes its config there, its logs continued
without duplicated rows, and the ``metrics.json`` of a run stopped by a signal."""

from __future__ import annotations

import csv
import io
import logging
import os
import signal
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from seglab.callbacks.resume import Interruption
from seglab.utils.config import project_root, task_overrides
from seglab.utils.io import atomic_write_text, write_json

__all__ = [
    "SLURM_MARKER",
    "continue_logs",
    "find_run",
    "note_slurm_job",
    "resume_arguments",
    "same_folder_step",
    "stop_on_signal",
]

log = logging.getLogger(__name__)

# a run folder's file naming the SLURM job that wrote it, found again when the job is requeued
SLURM_MARKER = "slurm_job_id"
# keys a resumed run takes from its own folder: overriding them would make another run
_FIXED_KEYS = (
    "model",
    "data",
    "optimizer",
    "scheduler",
    "seed",
    "task_name",
    "experiment",
    "hparams_search",
    "debug",
)
# the overrides of the resume itself, never carried from a run's saved overrides
_RESUME_KEYS = ("resume", "ckpt_path", "hydra.run.dir")
_EXPECTED_RUN = "expected the folder of a `python src/train.py` run (logs/train/runs/<time>)"


def _key(override: str) -> str:
    """``trainer.max_epochs`` of ``+trainer.max_epochs=3``; ``model`` of ``model=unet``."""
    return override.split("=", 1)[0].lstrip("+~")


def _newest_checkpoint(run_dir: Path) -> Path | None:
    """The run's newest resumable checkpoint: ``checkpoints/last.ckpt`` or a SLURM requeue's
    ``hpc_ckpt_<n>.ckpt`` (Lightning writes those in the run folder)."""
    found = [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")]
    found = [p for p in found if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def find_run(log_dir: Path, task_name: str) -> Path:
    """``ckpt_path=last``: the run folder under ``<log_dir>/<task_name>`` (runs and multirun
    jobs) whose ``checkpoints/last.ckpt`` was written last."""
    found = list((log_dir / task_name).glob("**/checkpoints/last.ckpt"))
    if not found:
        raise FileNotFoundError(
            f"ckpt_path=last: no run under {log_dir / task_name} holds checkpoints/last.ckpt; "
            "expected a run started with `python src/train.py` (or resume=RUN_DIR to name one)"
        )
    return max(found, key=lambda p: p.stat().st_mtime).parent.parent


def _slurm_run(log_dir: Path, task_name: str, job_id: str) -> Path | None:
    """The run folder this SLURM job wrote before it was requeued, if any."""
    for marker in (log_dir / task_name).glob(f"**/{SLURM_MARKER}"):
        if marker.read_text().strip() == job_id and _newest_checkpoint(marker.parent):
            return marker.parent
    return None


def _slurm_job_id() -> str | None:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job:
        return f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID") or None


def note_slurm_job(output_dir: Path) -> None:
    """Under SLURM, write the job id in the run folder, so that the requeued job finds it."""
    job = _slurm_job_id()
    if job:
        atomic_write_text(output_dir / SLURM_MARKER, job + "\n")


def _compose_paths(overrides: Sequence[str]) -> tuple[Path, str]:
    """``paths.log_dir`` and ``task_name`` of ``conf/train.yaml`` with ``overrides``."""
    kept = [o for o in overrides if _key(o).split(".")[0] in ("paths", "task_name")]
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(project_root() / "conf")):
        cfg = compose("train", overrides=kept)
    GlobalHydra.instance().clear()
    return Path(cfg.paths.log_dir), str(cfg.task_name)


def resume_arguments(argv: Sequence[str]) -> list[str]:
    """The command line of ``src/train.py`` with a resume spelled out: ``resume=RUN_DIR`` (or
    ``ckpt_path=last``: the newest run, ``find_run``; or, in a requeued SLURM job, the folder
    this job wrote) becomes that run's saved overrides (``RUN_DIR/.hydra/overrides.yaml``), the
    new ones on top, ``ckpt_path`` its newest checkpoint and ``hydra.run.dir`` the folder itself.

    A new override of a key that defines the run (``_FIXED_KEYS``: model, data, optimizer, seed,
    ...) is refused; others (``trainer.max_epochs``, callbacks, loggers) apply. Other command
    lines come back unchanged.

    Raises:
        ValueError / FileNotFoundError: one line naming the folder and what to do.
    """
    program, args = argv[0], list(argv[1:])
    requested = {_key(a): a.split("=", 1)[1] for a in args if "=" in a and _key(a) in _RESUME_KEYS}
    target = requested.get("resume")
    if target in (None, "", "null") and requested.get("ckpt_path") == "last":
        target = "last"
    requeued = _slurm_job_id() and int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
    if target in (None, "", "null") and not requeued:
        return list(argv)
    if any(a in ("-m", "--multirun") or a.startswith("hydra.sweep") for a in args):
        raise ValueError("resume: a multirun cannot be resumed as one; resume each job's folder")
    new = [a for a in args if "=" not in a or _key(a) not in _RESUME_KEYS]
    if target in (None, "", "null"):  # a requeued SLURM job: its own run, if it wrote one
        log_dir, task_name = _compose_paths(new)
        run_dir = _slurm_run(log_dir, task_name, str(_slurm_job_id()))
        if run_dir is None:
            return list(argv)
    elif target == "last":
        run_dir = find_run(*_compose_paths(new))
    else:
        run_dir = Path(str(target).strip("'\"")).expanduser().resolve()
    where = f"resume={run_dir}"
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise FileNotFoundError(f"{where}: no .hydra/overrides.yaml; {_EXPECTED_RUN}")
    checkpoint = _newest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(
            f"{where}: no checkpoints/last.ckpt to resume from (the run stopped before its "
            "first checkpoint); start it again instead"
        )
    original = yaml.safe_load(saved.read_text()) or []
    fixed = [a for a in new if "=" in a and _key(a).split(".")[0] in _FIXED_KEYS]
    fixed = [a for a in fixed if a not in original]  # the run's own value is no change
    if fixed:
        raise ValueError(
            f"{where}: {fixed[0]!r} would change the run; a resumed run keeps its own model, "
            "data, optimizer, scheduler and seed (start a new run to change them)"
        )
    overridden = {_key(a) for a in new if "=" in a}
    carried = [o for o in original if _key(o) not in overridden and _key(o) not in _RESUME_KEYS]
    added = {_key(o) for o in original if o.startswith("+")}  # keys the run added to the config
    new = [f"+{a}" if "=" in a and a[0] not in "+~" and _key(a) in added else a for a in new]
    log.info("Resuming %s from %s", run_dir, checkpoint.name)
    return [
        program,
        *carried,
        *new,
        f"ckpt_path='{checkpoint}'",
        f"resume='{run_dir}'",
        f"hydra.run.dir='{run_dir}'",
    ]


def same_folder_step(ckpt_path: Any, output_dir: Path) -> int | None:
    """The global step of ``ckpt_path`` when it is a checkpoint of the run folder ``output_dir``
    (a run continued in its own folder), else None."""
    if ckpt_path is None:
        return None
    path = Path(str(ckpt_path)).resolve()
    if output_dir.resolve() not in path.parents or not path.is_file():
        return None
    # mmap: only the pickled header is read, not the weights
    checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    return int(checkpoint.get("global_step", 0))


def continue_logs(loggers: Sequence[Any], step: int) -> None:
    """Continue the run's logs from a checkpoint at ``step`` (``global_step``) of its own folder:
    the CSV keeps the rows logged up to that step (Lightning's CSV writer would delete the file)
    and TensorBoard hides the events logged after it (``purge_step``)."""
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            _continue_csv(logger, step)
        elif isinstance(logger, TensorBoardLogger) and logger._experiment is None:
            logger._kwargs["purge_step"] = step


def quiet_own_folder() -> None:
    """Drop Lightning's warnings that a run continued in its own folder finds its folder not
    empty: the checkpoints there are the run's own, and ``continue_logs`` keeps the CSV rows
    that Lightning's writer says it deletes."""
    for message in (
        r"Checkpoint directory .* exists and is not empty",
        r"Experiment logs directory .* exists and is not empty",
    ):
        warnings.filterwarnings("ignore", message=message)


def _continue_csv(logger: CSVLogger, step: int) -> None:
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = [row for row in reader if row.get("step") and int(float(row["step"])) < step]
    writer = logger.experiment  # Lightning's writer deletes an existing metrics.csv here
    text = io.StringIO()
    table = csv.DictWriter(text, fieldnames=header)
    table.writeheader()
    table.writerows(rows)
    atomic_write_text(path, text.getvalue())
    writer.metrics_keys = header


@contextmanager
def stop_on_signal(trainer: L.Trainer, output_dir: Path, start: float) -> Iterator[None]:
    """Around ``trainer.fit``: a run stopped by SIGTERM / SIGINT (``Interruption`` saved its
    step) writes ``metrics.json`` with ``"status": "interrupted"`` and ``resume_from``, then
    exits 128 + the signal's number (143 / 130), as a shell reports a process killed by it."""
    try:
        yield
    except SIGTERMException:
        stop = next((c for c in trainer.callbacks if isinstance(c, Interruption)), None)
        name = (stop.signal_name if stop else None) or "SIGTERM"
        checkpoint = stop.checkpoint if stop else None
        if trainer.is_global_zero:
            write_json(
                output_dir / "metrics.json",
                {
                    "status": "interrupted",
                    "signal": name,
                    "resume_from": str(checkpoint) if checkpoint else None,
                    "requeued": bool(stop and stop.requeued),
                    "epochs": trainer.current_epoch,
                    "global_step": trainer.global_step,
                    "overrides": task_overrides(),
                    "run_dir": str(output_dir),
                    "wall_time_s": round(time.perf_counter() - start, 3),
                },
            )
            log.warning(
                "Interrupted by %s; resume with: python src/train.py resume=%s",
                name,
                output_dir,
            )
        raise SystemExit(128 + signal.Signals[name].value) from None
