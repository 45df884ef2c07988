"""What a checkpoint needs, besides Lightning's own state, for a resumed run to continue exactly,
and the stop on SIGTERM / SIGINT / SLURM's requeue signal that leaves such a checkpoint behind."""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import subprocess
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torchmetrics import MeanMetric, Metric

__all__ = ["ExactResume", "Interruption", "global_random_state", "set_global_random_state"]

log = logging.getLogger(__name__)


def global_random_state() -> dict[str, Any]:
    """The process's torch (CPU and CUDA), numpy and ``random`` states as plain data, which
    ``torch.load(weights_only=True)`` reads: tensors, ints, floats, strings and lists."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": [str(kind), keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }


def set_global_random_state(state: dict[str, Any]) -> None:
    """Restore what ``global_random_state`` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _epoch_metrics(module: L.LightningModule) -> dict[str, Metric]:
    """The torchmetrics objects a seglab task accumulates over a training epoch, by a stable
    name: the losses' means (``train_means``) and the ``train`` stage metrics."""
    found: dict[str, Metric] = {}
    for name, mean in getattr(module, "train_means", {}).items():
        found[f"train_means.{name}"] = mean
    for name, stage_module in getattr(module, "stage_metrics", {}).get("train", {}).items():
        for sub_name, metric in stage_module.named_modules():
            if isinstance(metric, Metric):
                found[f"train.{name}.{sub_name}"] = metric
    return found


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return [v.detach().cpu().clone() for v in value]
    return value.detach().cpu().clone()


class ExactResume(Callback):
    """What Lightning leaves out for a resumed run to repeat the uninterrupted one:

    - the global random states (dropout, Mask R-CNN's proposal sampling);
    - the epoch sums of the task's training metrics (torchmetrics states, which are not in the
      weights), so that an epoch interrupted half-way logs the values of the whole epoch;
    - the training loader's position: Lightning loads it when it builds the loader, unless it
      was built before the checkpoint was read (a scheduler asking for
      ``trainer.estimated_stepping_batches`` does that).

    The states go in every checkpoint as plain data and come back just before the next
    training step or the end of the epoch, after the sanity check and the loaders' start, which
    do not happen at that point of the uninterrupted run. The data's own randomness does not use
    the global states: see ``seglab.data.loaders``.
    """

    def __init__(self) -> None:
        self._module: L.LightningModule | None = None
        self._to_restore: dict[str, Any] | None = None
        # between an epoch's start and the task's on_train_epoch_end, which logs and resets
        # the sums (callbacks' hook runs just before the task's)
        self._epoch_open = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._module = pl_module

    def state_dict(self) -> dict[str, Any]:
        metrics = {}
        if self._module is not None and self._epoch_open:
            for name, metric in _epoch_metrics(self._module).items():
                state = {k: _copy(v) for k, v in metric.metric_state.items()}
                metrics[name] = {"state": state, "updates": int(metric._update_count)}
        return {"random": global_random_state(), "metrics": metrics}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fit_loop = trainer.fit_loop
        if fit_loop._combined_loader_states_to_load and fit_loop._data_fetcher is not None:
            fit_loop._load_combined_loader_states()
            iter(fit_loop._data_fetcher)  # the iterator again, from the loaded position

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_open = True

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any
    ) -> None:
        self._restore(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore(pl_module)
        self._epoch_open = False

    def _restore(self, pl_module: L.LightningModule) -> None:
        if self._to_restore is None:
            return
        state, self._to_restore = self._to_restore, None
        set_global_random_state(state["random"])
        means = getattr(pl_module, "train_means", None)
        for name in state["metrics"]:
            if name.startswith("train_means.") and means is not None:
                means.setdefault(name.split(".", 1)[1], MeanMetric().to(pl_module.device))
        metrics = _epoch_metrics(pl_module)
        for name, saved in state["metrics"].items():
            metric = metrics.get(name)
            if metric is None:
                continue
            for key, value in saved["state"].items():
                moved = [v.to(pl_module.device) for v in value] if isinstance(value, list) else None
                setattr(metric, key, moved if moved is not None else value.to(pl_module.device))
            metric._update_count = saved["updates"]
            metric._computed = None


class Interruption(Callback):
    """On SIGTERM, SIGINT or (under SLURM) the requeue signal, stop at the end of the current
    training step and save it to ``checkpoints/last.ckpt`` (``trainer.save_checkpoint``), to
    resume from exactly.

    SIGTERM goes through Lightning's own handler, which raises ``SIGTERMException`` at the next
    step boundary. SIGINT is routed the same way while fitting, so that a Ctrl+C does not stop
    a step half-way (a second Ctrl+C stops at once, Python's default). Under SLURM with
    Lightning's ``SLURMEnvironment(auto_requeue=True)``, the requeue signal (SIGUSR1) is routed
    the same way too, instead of Lightning's handler, which saves wherever the step is: after
    the step is saved, the job is requeued with ``scontrol requeue`` (rank 0), and the requeued
    job finds its run folder (``seglab.utils.resume.resume_arguments``).

    After fitting, ``signal_name`` is the signal received (``None`` without one), ``checkpoint``
    the file saved and ``requeued`` whether ``scontrol requeue`` succeeded.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.checkpoint: Path | None = None
        self.requeued = False
        self._trainer: L.Trainer | None = None
        self._previous: dict[int, Any] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trainer = trainer
        if threading.current_thread() is not threading.main_thread():
            return
        signals = [signal.SIGINT]
        environment = trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            signals.append(environment.requeue_signal or signal.SIGUSR1)
        for signum in signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name
        log.warning("%s: stopping after this step", self.signal_name)
        if signum == signal.SIGINT:  # a second Ctrl+C stops at once
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if self._trainer is not None:
            self._trainer._signal_connector.received_sigterm = True

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        requeue = self.signal_name not in (None, "SIGINT", "SIGTERM")
        self._restore_handlers()
        if not isinstance(exception, SIGTERMException):
            return
        self.signal_name = self.signal_name or "SIGTERM"
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # full: it must resume
        self.checkpoint = path
        log.warning("%s: saved step %d to %s", self.signal_name, trainer.global_step, path)
        if requeue and trainer.is_global_zero:
            self.requeued = _requeue_slurm_job()


def _requeue_slurm_job() -> bool:
    """``scontrol requeue`` this SLURM job (an array task as ``<job>_<task>``)."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else None
    job = job or os.environ.get("SLURM_JOB_ID", "")
    if not re.fullmatch(r"[0-9_]+", job):
        log.warning("SLURM job id %r: not requeued (expected digits)", job)
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job], check=False)
    except FileNotFoundError:
        log.warning("scontrol not found: SLURM job %s not requeued", job)
        return False
    if result.returncode != 0:
        log.warning("scontrol requeue %s failed (exit %d)", job, result.returncode)
    return result.returncode == 0


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where the run's ``last.ckpt`` goes: the folder of the checkpoint callback without a
    monitored metric (``callbacks.last_checkpoint``), else ``<run>/checkpoints``."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor is None and callback.dirpath:
            return Path(callback.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}.ckpt"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
