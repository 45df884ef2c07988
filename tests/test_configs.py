"""Every option of every config group composes with train.yaml and instantiates."""

from pathlib import Path

import hydra
import pytest
import torch
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from seglab.utils.instantiate import build_datamodule, build_list, build_task

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("model", options("model"))
def test_model_options_instantiate(compose_cfg, model):
    cfg = compose_cfg(overrides=[f"model={model}"])
    dm = build_datamodule(cfg.data)
    task = build_task(cfg, dm)
    assert task.net is not None and task.num_classes == cfg.data.num_classes == dm.num_classes
    assert cfg.data.task == cfg.model.task in ("semantic", "instance")


@pytest.mark.parametrize("data", options("data"))
def test_data_options_instantiate(compose_cfg, data):
    # The quick overrides are keys of data=shapes; other data modules read nothing until setup.
    cfg = compose_cfg(overrides=[f"data={data}", "trainer.accelerator=cpu"], quick=data == "shapes")
    dm = build_datamodule(cfg.data)
    assert dm.num_classes == cfg.data.num_classes
    assert len(dm.class_names) == dm.num_classes and len(dm.palette) >= dm.num_classes
    assert dm.in_channels == cfg.data.in_channels


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_options(compose_cfg, trainer):
    cfg = compose_cfg(overrides=[f"trainer={trainer}"], quick=False)
    needs_gpu = cfg.trainer.accelerator == "gpu"
    if needs_gpu and not torch.cuda.is_available():
        assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
        return
    if trainer == "ddp_cpu":
        assert cfg.trainer.devices == 2
        assert cfg.trainer.strategy.process_group_backend == "gloo"
    # Instantiating a multi-process trainer only builds objects; no process is started.
    t = hydra.utils.instantiate(cfg.trainer)
    assert t.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("logger", options("logger"))
def test_logger_options(compose_cfg, logger, monkeypatch):
    if logger in ("wandb", "many"):
        pytest.importorskip("wandb")
        monkeypatch.setenv("WANDB_MODE", "offline")
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose_cfg(overrides=[f"logger={logger}"])
    loggers = build_list(cfg.logger, "logger")
    assert len(loggers) == len(cfg.logger) >= 1
    if logger == "wandb":
        assert cfg.logger.wandb.offline is True


@pytest.mark.parametrize("group", ["callbacks", "optimizer", "scheduler", "debug"])
def test_other_groups(compose_cfg, group):
    for option in options(group):
        cfg = compose_cfg(overrides=[f"{group}={option}"])
        if group == "callbacks":
            assert all(c is not None for c in build_list(cfg.callbacks, "callbacks"))
        elif group in ("optimizer", "scheduler") and cfg.get(group):
            fn = hydra.utils.instantiate(cfg[group])
            assert callable(fn)
        elif group == "debug":
            assert cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 1


def test_eval_and_predict_compose(compose_cfg):
    cfg = compose_cfg("eval", overrides=["ckpt_path=x.ckpt"])
    assert cfg.split == "val" and cfg.get("model") is None
    cfg = compose_cfg("predict", overrides=["ckpt_path=x.ckpt", "input=a", "output=b"])
    assert cfg.inference.mode == "whole"


def test_unknown_option_lists_choices(compose_cfg):
    with pytest.raises(MissingConfigException) as err:
        compose_cfg(overrides=["model=nosuch"])
    message = str(err.value)
    assert "model/nosuch" in message and "unet_small" in message and "unet" in message


def test_paths_point_at_data_root(compose_cfg, monkeypatch):
    monkeypatch.setenv("SEGLAB_DATA_DIR", "/some/where")
    cfg = compose_cfg()
    assert OmegaConf.select(cfg, "paths.data_dir") == "/some/where"


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiment_options_instantiate(compose_cfg, experiment):
    cfg = compose_cfg(
        overrides=[f"experiment={experiment}", "trainer.accelerator=cpu"], quick=False
    )
    dm = build_datamodule(cfg.data)
    task = build_task(cfg, dm)
    assert task.num_classes == dm.num_classes
    trainer = hydra.utils.instantiate(cfg.trainer)
    assert trainer.max_epochs == cfg.trainer.max_epochs


def test_unet_isbi_is_the_papers_setting(compose_cfg):
    cfg = compose_cfg(overrides=["experiment=unet_isbi", "trainer.accelerator=cpu"], quick=False)
    net = cfg.model.net
    assert (net.base_channels, net.depth, net.padding, net.batch_norm) == (64, 4, False, False)
    assert cfg.data.crop_size == 572 and cfg.data.batch_size == 1
    assert cfg.optimizer.momentum == 0.99 and cfg.model.loss.weight_map and cfg.data.weight_map
    assert cfg.data.w0 == 10 and cfg.data.sigma == 5
    assert cfg.model.inference.mode == "overlap_tile"
    names = [t._target_.rsplit(".", 1)[-1] for t in cfg.data.train_transforms.transforms]
    assert "ElasticDeformation" in names
