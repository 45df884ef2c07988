"""Training entry: ``train(cfg)`` is what ``src/train.py`` calls, and what tests call in-process."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ModelSummary
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from seglab.callbacks import EmbedConfig, ExactResume, Interruption, wandb_callbacks, wandb_resume
from seglab.callbacks.nan_guard import NanGuard
from seglab.callbacks.rank_failure import EndRanksOnFailure
from seglab.compare import log_hparams
from seglab.models.backbones import skip_pretrained_files
from seglab.utils.checkpoint import load_weights
from seglab.utils.config import run_config, task_overrides
from seglab.utils.console import quiet_known_noise
from seglab.utils.failure import recorded_failure
from seglab.utils.instantiate import (
    build_datamodule,
    build_list,
    build_task,
    build_trainer,
    saved_config,
)
from seglab.utils.io import load_checkpoint, move_aside, write_json
from seglab.utils.memory import tune_malloc
from seglab.utils.resume import (
    continue_logs,
    note_slurm_job,
    quiet_own_folder,
    same_folder_step,
    stop_on_signal,
)
from seglab.utils.safe_load import TRUST_KEY, read_torch_file

__all__ = ["train"]

log = logging.getLogger(__name__)

# ckpt_path values Lightning resolves itself rather than reading a file
_LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")
# the metric names of the best checkpoint's validation and test after fitting
BEST_PREFIX = "best/"
# what Lightning needs, besides the weights, to resume fitting
_TRAINING_STATE = ("pytorch-lightning_version", "epoch", "global_step", "loops", "optimizer_states")


@recorded_failure
def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit ``cfg.model`` on ``cfg.data``, then validate (and test) the best checkpoint.

    With ``cfg.ckpt_path`` set, fitting resumes from that checkpoint, which is checked (readable,
    plain data unless ``cfg.trust_checkpoint``, weights of this model, training state present)
    before anything is written. A
    ``metrics.json`` already in the run folder (a reused folder) is moved aside first, so that a
    failed run never leaves an earlier run's metrics looking like its own.

    ``metrics.json`` also records what a sweep summary needs: the job's ``overrides``,
    ``status``, ``wall_time_s`` (the whole of this function), ``run_dir``, ``epochs`` run and
    ``monitor`` (the monitored metric's name, mode, best value and its 0-based epoch).

    Every logger gets the resolved run config (``seglab.utils.config.run_config``) before fitting.
    The best checkpoint's validation and test are logged as ``best/val/<name>`` and
    ``best/test/<name>``; ``metrics.json`` keeps them under ``val`` and ``test`` without the
    ``best/``. The last line logged names the run folder and the best checkpoint.

    Returns:
        ``(metrics, objects)``: the final metrics (also written to ``metrics.json`` in the run
        folder) and the objects built (``cfg``, ``datamodule``, ``model``, ``trainer``).
    """
    start = time.perf_counter()
    quiet_known_noise()
    if cfg.get("malloc_tuning"):
        tune_malloc()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)

    datamodule = build_datamodule(cfg.data)
    ckpt_path = cfg.get("ckpt_path")
    # resuming: the checkpoint replaces every weight, so the pretrained files are not read again
    with skip_pretrained_files() if ckpt_path is not None else nullcontext():
        model = build_task(cfg, datamodule)
    trust = bool(cfg.get(TRUST_KEY, False))  # load checkpoints in full, not as data only
    if ckpt_path is not None and str(ckpt_path) not in _LIGHTNING_CKPT_NAMES:
        _check_resume(model, str(ckpt_path), trust)
    callbacks = [*build_list(cfg.get("callbacks"), "callbacks"), EmbedConfig(saved_config(cfg))]
    callbacks += [NanGuard(cfg.get("on_nan_loss", "stop")), EndRanksOnFailure()]
    callbacks += [ExactResume(), Interruption()]  # exact resume; a resumable stop on signals
    # W&B: a resumed run continues the checkpoint's W&B run; the summary keeps the best value
    wandb_resume(cfg.get("logger"), ckpt_path, trust=trust)
    loggers = build_list(cfg.get("logger"), "logger")
    callbacks += wandb_callbacks(loggers)
    if not loggers:  # Lightning refuses a learning-rate monitor without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    summary = {}
    if any(isinstance(c, ModelSummary) for c in callbacks):
        # the callbacks group prints the summary; Lightning's flag would only say it skips its own
        summary["enable_model_summary"] = False
    trainer = build_trainer(cfg, callbacks=callbacks, logger=loggers or False, **summary)
    objects = {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer}
    if rank_zero_only.rank == 0:
        move_aside(output_dir / "metrics.json")
    resumed_step = same_folder_step(ckpt_path, output_dir)
    if rank_zero_only.rank == 0:
        note_slurm_job(output_dir)
        if resumed_step is not None:  # a run continued in its own folder
            quiet_own_folder()
            continue_logs(trainer.loggers, resumed_step)
    if trainer.loggers:  # the tasks save their hyperparameters for checkpoints, not loggers
        params = run_config(cfg)
        for logger in trainer.loggers:
            logger.log_hyperparams(params)

    with stop_on_signal(trainer, output_dir, start):  # SIGTERM / SIGINT: exit 143 / 130
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=not trust)
    metrics: dict[str, Any] = {"fit": _scalars(trainer.callback_metrics)}

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt = best if best else None
    if cfg.get("validate", True):
        metrics["val"] = _score_best(trainer.validate, model, datamodule, ckpt, trust)
    if cfg.get("test", False):
        metrics["test"] = _score_best(trainer.test, model, datamodule, ckpt, trust)
    metrics["best_checkpoint"] = best or None
    metrics["monitor"] = _monitor_summary(cfg, trainer)
    metrics["epochs"] = trainer.current_epoch
    metrics["overrides"] = task_overrides()
    metrics["run_dir"] = str(output_dir)
    metrics["status"] = "completed"
    metrics["wall_time_s"] = round(time.perf_counter() - start, 3)
    log_hparams(trainer, cfg, metrics)  # TensorBoard's HParams view: settings vs results

    if trainer.is_global_zero:
        write_json(output_dir / "metrics.json", metrics)
        log.info(
            "Run folder: %s; best checkpoint: %s",
            output_dir,
            best or "none (no checkpoint saved)",
        )
    return metrics, objects


def _score_best(
    run: Callable[..., list[dict[str, float]]],
    model: L.LightningModule,
    datamodule: L.LightningDataModule,
    ckpt: str | None,
    trust: bool = False,
) -> dict[str, float]:
    """``run`` (``trainer.validate`` or ``trainer.test``) on ``ckpt``, its metrics logged under
    ``best/`` and returned without it; ``ckpt`` is read as data only unless ``trust``."""
    model.log_prefix = BEST_PREFIX
    try:
        scores = run(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=not trust)[0]
    finally:
        model.log_prefix = ""
    return {name.removeprefix(BEST_PREFIX): value for name, value in scores.items()}


def _check_resume(model: L.LightningModule, ckpt_path: str, trust: bool = False) -> None:
    """Fail with the file named, before fitting writes anything, when ``ckpt_path`` cannot
    resume this run: unreadable, not plain data (unless ``trust``), weights of another model,
    or no training state."""
    checkpoint = load_checkpoint(ckpt_path, trust=trust)
    load_weights(
        model,
        checkpoint,
        f"ckpt_path={ckpt_path!r}",
        "a checkpoint of this run's model: resume with the model=... and data=... it was "
        "trained with",
    )
    absent = [k for k in _TRAINING_STATE if k not in checkpoint]
    if absent:
        raise ValueError(
            f"ckpt_path={ckpt_path!r}: holds weights but no training state {absent}; expected a "
            "checkpoint saved while training (checkpoints/last.ckpt of a seglab train run)"
        )


def _monitor_summary(cfg: DictConfig, trainer: L.Trainer) -> dict[str, Any]:
    """The monitored metric's name and mode, with its best value and the 0-based epoch of the
    checkpoint that holds it (``None`` for both without a checkpoint on the metric)."""
    watching = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    callback = next((c for c in watching if c.monitor), None)
    if callback is None:
        name = OmegaConf.select(cfg, "model.monitor", default="val/miou")
        return {"name": name, "mode": "max", "best": None, "best_epoch": None}
    score = callback.best_model_score
    best_epoch = None
    if callback.best_model_path and Path(callback.best_model_path).is_file():
        # mmap: only the pickled header is read, not the weights
        checkpoint = read_torch_file(
            callback.best_model_path,
            f"the best checkpoint {callback.best_model_path!r}",
            trust=bool(cfg.get(TRUST_KEY, False)),
            mmap=True,
        )
        best_epoch = checkpoint.get("epoch")
        if score is None:  # resumed from another folder: Lightning reloads only the path
            score = _saved_best_score(checkpoint, callback.monitor)
    return {
        "name": callback.monitor,
        "mode": callback.mode,
        "best": None if score is None else float(score),
        "best_epoch": best_epoch,
    }


def _saved_best_score(checkpoint: dict[str, Any], monitor: str) -> float | None:
    """The best score a ModelCheckpoint on ``monitor`` stored in ``checkpoint``, if any."""
    for key, state in checkpoint.get("callbacks", {}).items():
        if str(key).startswith("ModelCheckpoint") and state.get("monitor") == monitor:
            return state.get("best_model_score")
    return None


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
