"""Every option of every config group composes with train.yaml and instantiates."""

from pathlib import Path
from types import SimpleNamespace

import hydra
import lightning as L
import pytest
import torch
from hydra.errors import MissingConfigException
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf
from torch import nn

from seglab.tasks.instance import InstanceSegmentationTask
from seglab.tasks.optim import configure_optimizers
from seglab.tasks.panoptic import PanopticSegmentationTask
from seglab.tasks.semantic import SemanticSegmentationTask
from seglab.utils.instantiate import build_datamodule, build_list, build_task, build_trainer

CONF = Path(__file__).resolve().parents[1] / "conf"


TASKS = {
    "semantic": SemanticSegmentationTask,
    "instance": InstanceSegmentationTask,
    "panoptic": PanopticSegmentationTask,
}


def options(group: str) -> list[str]:
    """The options of a config group: its yaml files (not those of sub-folders, such as the
    shared bases under conf/model/base/)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_semantic_models_share_one_base(compose_cfg):
    base = OmegaConf.load(CONF / "model" / "base" / "semantic.yaml")
    semantic = [m for m in options("model") if m not in ("maskrcnn", "panoptic_fpn")]
    assert len(semantic) == 9
    for model in semantic:
        assert "base/semantic@_here_" in OmegaConf.load(CONF / "model" / f"{model}.yaml").defaults
        cfg = compose_cfg(overrides=[f"model={model}"], quick=False)
        assert cfg.model._target_ == base._target_ and cfg.model.task == "semantic"
        assert set(cfg.model.loss) == {"reduction", "class_weights", "aux_weight"}
    assert compose_cfg(overrides=["model=pspnet"]).model.loss.aux_weight == 0.4
    assert compose_cfg(overrides=["model=unet"]).model.loss.aux_weight == 0.0


@pytest.mark.parametrize("model", options("model"))
def test_model_options_instantiate(compose_cfg, model):
    cfg = compose_cfg(overrides=[f"model={model}"])
    dm = build_datamodule(cfg.data)
    task = build_task(cfg, dm)
    assert task.num_classes == dm.num_classes and task.class_names == list(dm.class_names)
    assert isinstance(task, TASKS[cfg.model.task])
    assert type(task.net).__name__ == cfg.model.net._target_.rsplit(".", 1)[-1]


@pytest.mark.parametrize("data", options("data"))
def test_data_options_instantiate(compose_cfg, data):
    # The quick overrides are keys of data=shapes; other data modules read nothing until setup.
    # A dataset with one view (coco_panoptic) is composed with a model of that view.
    model = ["model=panoptic_fpn"] if data == "coco_panoptic" else []
    overrides = [f"data={data}", "trainer.accelerator=cpu", *model]
    cfg = compose_cfg(overrides=overrides, quick=data == "shapes")
    dm = build_datamodule(cfg.data)
    assert dm.num_classes == cfg.data.num_classes
    assert len(dm.class_names) == dm.num_classes and len(dm.palette) >= dm.num_classes
    assert dm.in_channels == cfg.data.in_channels


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_options(compose_cfg, trainer):
    cfg = compose_cfg(overrides=[f"trainer={trainer}"], quick=False)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        with pytest.raises(ValueError, match=rf"^trainer={trainer}: .*no GPU"):
            build_trainer(cfg)
        return
    # Instantiating a multi-process trainer only builds objects; no process is started.
    t = build_trainer(cfg)
    assert t.max_epochs == cfg.trainer.max_epochs
    if trainer == "ddp_cpu":
        assert isinstance(t.accelerator, CPUAccelerator) and t.num_devices == 2
        assert isinstance(t.strategy, DDPStrategy)
        assert t.strategy.process_group_backend == "gloo"
        # gradients live in DDP's all-reduce buckets: no second copy of them per rank
        assert t.strategy._ddp_kwargs["gradient_as_bucket_view"] is True


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
            assert all(isinstance(c, L.Callback) for c in build_list(cfg.callbacks, "callbacks"))
        elif group in ("optimizer", "scheduler") and cfg.get(group):
            optimizer_fn = hydra.utils.instantiate(cfg.optimizer)
            scheduler_fn = hydra.utils.instantiate(cfg.scheduler) if cfg.scheduler else None
            module = SimpleNamespace(
                parameters=lambda: [nn.Parameter(torch.zeros(1))],
                trainer=SimpleNamespace(estimated_stepping_batches=10),
            )
            out = configure_optimizers(module, optimizer_fn, scheduler_fn)
            if scheduler_fn is None:
                assert isinstance(out, torch.optim.Optimizer)
            else:
                scheduler = out["lr_scheduler"]["scheduler"]
                assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
                # a schedule length left as null is the run's number of optimizer steps
                for key in ("total_iters", "T_max"):
                    if cfg.scheduler.get(key, 0) is None:
                        assert getattr(scheduler, key) == 10
        elif group == "debug":
            t = build_trainer(cfg)
            assert isinstance(t.accelerator, CPUAccelerator) and t.num_devices == 1


def test_eval_and_predict_compose(compose_cfg):
    cfg = compose_cfg("eval", overrides=["ckpt_path=x.ckpt"])
    assert cfg.split == "val" and cfg.get("model") is None
    cfg = compose_cfg("predict", overrides=["ckpt_path=x.ckpt", "input=a", "output=b"])
    assert cfg.inference.mode is None  # null: the checkpoint model's configured inference


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
    trainer = build_trainer(cfg)
    assert trainer.max_epochs == cfg.trainer.max_epochs


def test_unet_isbi_is_the_papers_setting(compose_cfg):
    cfg = compose_cfg(overrides=["experiment=unet_isbi", "trainer.accelerator=cpu"], quick=False)
    net = cfg.model.net
    assert (net.base_channels, net.depth, net.padding, net.batch_norm) == (64, 4, False, False)
    assert cfg.data.crop_size == 572 and cfg.data.batch_size == 1
    assert cfg.optimizer.momentum == 0.99 and cfg.data.weight_map
    assert cfg.data.weight_map.w0 == 10 and cfg.data.weight_map.sigma == 5
    assert "weight_map" not in cfg.model.loss  # one switch: the data's weight map
    assert cfg.model.inference.mode == "overlap_tile"
    names = [t._target_.rsplit(".", 1)[-1] for t in cfg.data.train_transforms.transforms]
    assert "ElasticDeformation" in names
