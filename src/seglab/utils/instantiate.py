"""Building the run's objects from a composed config."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import hydra
import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO
from omegaconf import DictConfig, OmegaConf

from seglab.callbacks.config import CONFIG_KEY
from seglab.utils.checkpoint_io import AtomicCheckpointIO
from seglab.utils.safe_load import TRUST_KEY, trust_checkpoints

__all__ = ["build_datamodule", "build_list", "build_task", "build_trainer", "saved_config"]


def build_list(cfg: DictConfig | None, group: str) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a mapping config group (callbacks, logger)."""
    if not cfg:
        return []
    if not isinstance(cfg, Mapping):
        raise ValueError(f"config group `{group}` must be a mapping of named entries, got {cfg!r}")
    return [hydra.utils.instantiate(node) for node in cfg.values() if node and "_target_" in node]


def build_datamodule(data_cfg: DictConfig) -> L.LightningDataModule:
    return hydra.utils.instantiate(data_cfg, _convert_="all")


def build_task(
    cfg: DictConfig, datamodule: L.LightningDataModule | None = None
) -> L.LightningModule:
    """Instantiate ``cfg.model`` with the optimizer and scheduler groups and the class names."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    for key in ("task", "monitor"):  # read by the data and callbacks configs, not the task
        model_cfg.pop(key, None)
    # speed options, applied to the built task (checkpoints from before them have neither)
    speed = {key: model_cfg.pop(key) for key in ("channels_last", "compile") if key in model_cfg}
    extra: dict[str, Any] = {}
    for key in ("optimizer", "scheduler"):
        node = cfg.get(key)
        extra[key] = hydra.utils.instantiate(node) if node else None
    if extra["optimizer"] is not None:
        _check_optimizer(extra["optimizer"], cfg.optimizer)
    if datamodule is not None and getattr(datamodule, "class_names", None):
        extra["class_names"] = list(datamodule.class_names)
    if datamodule is not None and getattr(datamodule, "extra_metrics", None):
        extra["extra_metrics"] = list(datamodule.extra_metrics)
    with trust_checkpoints(bool(cfg.get(TRUST_KEY, False))):  # the net's weights files
        task = hydra.utils.instantiate(model_cfg, **extra, _convert_="all")
    if speed:
        task.configure_speed(**speed)
    return task


# words of torch.optim's argument checks -> the optimizer key they are about
_OPTIMIZER_KEYS = {
    "learning rate": "lr",
    "weight_decay": "weight_decay",
    "beta": "betas",
    "epsilon": "eps",
    "momentum": "momentum",
    "dampening": "dampening",
    "nesterov": "nesterov",
}
_UNEXPECTED_ARGUMENT = re.compile(r"unexpected keyword argument '(\w+)'")


def _check_optimizer(optimizer: Callable[..., torch.optim.Optimizer], node: DictConfig) -> None:
    """Build the optimizer once on a dummy CPU parameter, so that a setting torch refuses (a
    negative ``lr``, an unknown argument) fails here naming its key, not at the start of fitting.

    Other errors of the dummy build (device-specific flags such as ``fused``) are left for the
    real build to raise."""
    try:
        optimizer([torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError) as err:
        target = node.get("_target_", "the optimizer")
        if match := _UNEXPECTED_ARGUMENT.search(str(err)):
            raise ValueError(
                f"optimizer.{match.group(1)}: {target} takes no such argument ({err}); expected "
                f"only arguments of {target}"
            ) from err
        key = next((k for words, k in _OPTIMIZER_KEYS.items() if words in str(err)), None)
        if key is not None and key in node:
            raise ValueError(
                f"optimizer.{key}={node[key]!r}: {target} refuses it ({err}); expected a value "
                f"{target} accepts"
            ) from err


def build_trainer(cfg: DictConfig, **kwargs: Any) -> L.Trainer:
    """Instantiate ``cfg.trainer`` (``kwargs`` override its keys). Checkpoints are written through
    ``AtomicCheckpointIO`` (never half-written, each with the config eval and predict read)
    unless ``trainer.plugins``, ``kwargs`` or ``trainer.strategy.checkpoint_io`` name a
    ``CheckpointIO`` of their own. A GPU accelerator on a machine without one fails first,
    naming the CPU trainer option to use."""
    _check_accelerator(cfg.trainer)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    for key in SEGLAB_TRAINER_KEYS:
        trainer_cfg.pop(key, None)
    set_matmul_precision(cfg.trainer.get("float32_matmul_precision"))
    plugins = kwargs.pop("plugins", None)
    if plugins is None and cfg.trainer.get("plugins"):
        plugins = hydra.utils.instantiate(cfg.trainer.plugins, _convert_="all")
    if not isinstance(plugins, list | tuple):
        plugins = [] if plugins is None else [plugins]
    plugins = list(plugins)
    strategy = cfg.trainer.get("strategy")
    own_io = isinstance(strategy, Mapping) and strategy.get("checkpoint_io") is not None
    if not own_io and not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO({CONFIG_KEY: saved_config(cfg)}))
    return hydra.utils.instantiate(trainer_cfg, plugins=plugins, **kwargs, _convert_="all")


# keys of the trainer group that are seglab's, not Lightning Trainer arguments
SEGLAB_TRAINER_KEYS = ("float32_matmul_precision",)
_MATMUL_PRECISIONS = ("highest", "high", "medium")


def set_matmul_precision(value: str | None) -> None:
    """``trainer.float32_matmul_precision``: torch's ``set_float32_matmul_precision`` (``high``
    lets float32 matrix multiplications use TF32 tensor cores on Ampere and later GPUs, as cuDNN's
    convolutions do by default; set by ``trainer=gpu`` and ``trainer=ddp``); null leaves torch's setting as it is."""
    if value is None:
        return
    if value not in _MATMUL_PRECISIONS:
        raise ValueError(
            f"trainer.float32_matmul_precision={value!r}: expected null or one of "
            f"{list(_MATMUL_PRECISIONS)}"
        )
    torch.set_float32_matmul_precision(value)


def _check_accelerator(trainer_cfg: DictConfig) -> None:
    """A GPU trainer on a machine without one fails naming the trainer option and the CPU one to
    use, rather than with Lightning's message about ``accelerator``, which names no option."""
    accelerator = str(trainer_cfg.get("accelerator"))
    if accelerator not in ("gpu", "cuda") or torch.cuda.is_available():
        return
    strategy = trainer_cfg.get("strategy")
    target = strategy.get("_target_", "") if isinstance(strategy, Mapping) else str(strategy)
    ddp = "ddp" in target.lower()
    choice = _trainer_choice()
    option = f"trainer={choice}" if choice else "trainer.accelerator"
    instead = "trainer=ddp_cpu (DDP over CPU processes)" if ddp else "trainer=cpu"
    raise ValueError(
        f"{option}: trainer.accelerator={accelerator} but this machine has no GPU that torch "
        f"can use (torch.cuda.is_available() is False); use {instead}"
    )


def _trainer_choice() -> str | None:
    """The option of the trainer group this run chose (``trainer=gpu``), None outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get("trainer")


def saved_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved groups a checkpoint needs to rebuild its model and data without the run."""
    keys = ("model", "data", "optimizer", "scheduler")
    return {k: OmegaConf.to_container(cfg[k], resolve=True) for k in keys if cfg.get(k) is not None}
