"""Hydra multirun support: a summary of the sweep's jobs, and DDP ranks that stay in their job.

``SweepSummary`` is a Hydra callback (conf/hydra/default.yaml). After every job of a multirun it
writes the job's record (``sweep_job.json``) in the job folder and rebuilds ``summary.csv`` and
``summary.md`` in the sweep folder from the records of all jobs. Rebuilding on every job end,
not only at the end of the multirun, is what keeps the summary when a job fails: Hydra's basic
sweeper re-raises the failure, so its ``on_multirun_end`` is never reached.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, read_write

from seglab.utils.io import atomic_write_text, write_json

__all__ = [
    "RECORD_NAME",
    "SUMMARY_CSV",
    "SUMMARY_MD",
    "SweepSummary",
    "job_environment",
    "pin_spawned_ranks_to_job",
    "summary_rows",
    "write_summary",
]

log = logging.getLogger(__name__)

RECORD_NAME = "sweep_job.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
_LOCK_NAME = ".summary.lock"
# Hydra's own command-line flags that choose the config; a spawned rank needs them too
_CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")


class SweepSummary(Callback):
    """Writes each multirun job's record and the sweep's ``summary.csv`` / ``summary.md``.

    Rows are sorted by the best value of the monitored metric (its mode's way round), jobs
    without one after them and failed jobs last. Single runs write nothing.
    """

    def __init__(self) -> None:
        self._started: float | None = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._started = time.perf_counter()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or _launcher_rank() != 0:
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        elapsed = None if self._started is None else time.perf_counter() - self._started
        record = job_record(job_return, int(config.hydra.job.num), run_dir, elapsed)
        write_json(run_dir / RECORD_NAME, record)
        _rebuild(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _rebuild(Path(config.hydra.sweep.dir))


def job_record(
    job_return: JobReturn, num: int, run_dir: Path, elapsed: float | None
) -> dict[str, Any]:
    """One job's row: its overrides and status, and from its ``metrics.json`` (when it wrote
    one) the monitored metric's best value and epoch, final metrics and best checkpoint."""
    failed = job_return.status != JobStatus.COMPLETED
    record: dict[str, Any] = {
        "job": num,
        "overrides": [str(o) for o in job_return.overrides or []],
        "status": "failed" if failed else "completed",
        "error": _first_line(job_return._return_value) if failed else None,
        "run_dir": str(run_dir),
        "wall_time_s": None if elapsed is None else round(elapsed, 3),
        "monitor": None,
        "final": {},
        "epochs": None,
        "best_checkpoint": None,
    }
    metrics_file = run_dir / "metrics.json"
    if failed or not metrics_file.is_file():
        return record
    metrics = json.loads(metrics_file.read_text())
    monitor = metrics.get("monitor") or {}
    name = monitor.get("name")
    final = {}
    if name:
        stem = name.split("/", 1)[-1]
        for stage in ("val", "test"):
            value = (metrics.get(stage) or {}).get(f"{stage}/{stem}")
            if value is not None:
                final[f"{stage}/{stem}"] = value
    record.update(
        monitor=monitor or None,
        final=final,
        epochs=metrics.get("epochs"),
        best_checkpoint=metrics.get("best_checkpoint"),
        wall_time_s=metrics.get("wall_time_s", record["wall_time_s"]),
    )
    return record


def summary_rows(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """The records of every job under ``sweep_dir``, best first (failed jobs last)."""
    records = [json.loads(p.read_text()) for p in Path(sweep_dir).rglob(RECORD_NAME)]
    return sorted(records, key=_rank_key)


def write_summary(sweep_dir: str | Path) -> Path | None:
    """(Re)write ``summary.csv`` and ``summary.md`` in ``sweep_dir`` from its job records.

    Returns the CSV's path, or None when no job has a record yet."""
    sweep_dir = Path(sweep_dir)
    rows = summary_rows(sweep_dir)
    if not rows:
        return None
    finals = sorted({key for row in rows for key in row["final"]}, key=_stage_first)
    header = [
        "job",
        "status",
        "monitor",
        "best",
        "best_epoch",
        *finals,
        "epochs",
        "wall_time_s",
        "overrides",
        "run_dir",
        "best_checkpoint",
        "error",
    ]
    table = [_flat(row, finals) for row in rows]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(sweep_dir / SUMMARY_CSV, buffer.getvalue())
    atomic_write_text(sweep_dir / SUMMARY_MD, _markdown(sweep_dir, header, table, rows))
    return sweep_dir / SUMMARY_CSV


def _rebuild(sweep_dir: Path) -> None:
    """``write_summary`` under a lock: jobs of a parallel launcher end at the same time."""
    if not sweep_dir.is_dir():
        return
    with _locked(sweep_dir / _LOCK_NAME):
        written = write_summary(sweep_dir)
    if written is not None:
        log.info("sweep summary: %s", written)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _rank_key(row: dict[str, Any]) -> tuple[int, float, int]:
    monitor = row.get("monitor") or {}
    best = monitor.get("best")
    if row["status"] != "completed":
        return (2, 0.0, row["job"])
    if best is None or not math.isfinite(best):
        return (1, 0.0, row["job"])
    return (0, -best if monitor.get("mode", "max") == "max" else best, row["job"])


def _stage_first(key: str) -> tuple[int, str]:
    stage, _, name = key.partition("/")
    return (0 if stage == "val" else 1, name)


def _flat(row: dict[str, Any], finals: list[str]) -> dict[str, Any]:
    monitor = row.get("monitor") or {}
    return {
        "job": row["job"],
        "status": row["status"],
        "monitor": monitor.get("name", ""),
        "best": _cell(monitor.get("best")),
        "best_epoch": _cell(monitor.get("best_epoch")),
        **{key: _cell(row["final"].get(key)) for key in finals},
        "epochs": _cell(row.get("epochs")),
        "wall_time_s": _cell(row.get("wall_time_s")),
        "overrides": " ".join(row["overrides"]),
        "run_dir": row["run_dir"],
        "best_checkpoint": row.get("best_checkpoint") or "",
        "error": row.get("error") or "",
    }


def _cell(value: Any) -> Any:
    return "" if value is None else value


def _markdown(
    sweep_dir: Path, header: list[str], table: list[dict[str, Any]], rows: list[dict[str, Any]]
) -> str:
    """A GitHub-flavoured table: the overrides every job shares said once above it, folders
    relative to the sweep folder, numbers to 4 digits."""
    common = [o for o in rows[0]["overrides"] if all(o in row["overrides"] for row in rows)]
    if len(rows) > 1:
        table = [
            {**flat, "overrides": " ".join(o for o in row["overrides"] if o not in common)}
            for flat, row in zip(table, rows, strict=True)
        ]

    def show(key: str, value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if key != "wall_time_s" else f"{value:.1f}"
        if key in ("run_dir", "best_checkpoint") and value:
            with contextlib.suppress(ValueError):
                value = Path(value).relative_to(sweep_dir)
        if key == "overrides" and value:
            value = f"`{value}`"
        return str(value).replace("|", "\\|").replace("\n", " ")

    done = sum(row["status"] == "completed" for row in table)
    lines = [
        f"# Sweep summary: {sweep_dir}",
        "",
        f"{len(table)} jobs, {done} completed, {len(table) - done} failed; best first.",
        "",
    ]
    if common and len(rows) > 1:
        lines += [f"Overrides of every job: `{' '.join(common)}`", ""]
    lines += [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(show(k, row[k]) for k in header) + " |" for row in table]
    return "\n".join(lines) + "\n"


def _first_line(error: Any) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _launcher_rank() -> int:
    """The process's global rank when a launcher (SLURM via submitit, torchrun) started several."""
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def pin_spawned_ranks_to_job() -> None:
    """In a multirun job, make the ranks that Lightning's DDP starts re-run this job, here.

    Lightning's subprocess launcher starts each extra rank as ``sys.argv`` plus
    ``hydra.run.dir=<hydra.run.dir>``. In a multirun job that would be the whole sweep again
    (``-m`` and its comma lists) in a new ``runs/`` folder. So ``sys.argv`` becomes this job's
    own overrides in run mode, and ``hydra.run.dir`` this job's folder. Nothing changes in a
    single run or without Hydra.
    """
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    overrides = [str(o) for o in hydra_cfg.overrides.task]
    sys.argv = [sys.argv[0], *_config_flags(sys.argv[1:]), *overrides, "hydra.mode=RUN"]
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


def _config_flags(args: list[str]) -> list[str]:
    kept: list[str] = []
    rest = iter(args)
    for arg in rest:
        if arg.split("=", 1)[0] in _CONFIG_FLAGS:
            kept.append(arg)
            if "=" not in arg:
                kept.append(next(rest, ""))
    return kept


@contextlib.contextmanager
def job_environment() -> Iterator[None]:
    """Restore ``os.environ`` after a job and end its torch.distributed group, so that the
    next job of a sweep in the same process starts its own DDP ranks.

    Lightning's launcher leaves ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_PORT`` ... in the
    launching process, and with ``LOCAL_RANK`` set it takes the next job's ranks as started
    by someone else and waits for them."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
