"""A checkpoint is data, not code: every file seglab loads is unpickled with
``torch.load(weights_only=True)``, and a checkpoint's saved config may only name the project's own
classes. A crafted file whose pickle would run a command (it touches a marker file) is refused by
each entry point before anything runs, with one line naming the key, the file and
``trust_checkpoint=true``; with that opt-in a file holding a harmless object loads, with a warning.
"""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path, PurePosixPath

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from support import CONF, QUICK_TRAIN, SMALL_MASKRCNN, run_cli

from seglab.callbacks import wandb_resume
from seglab.models import MaskRCNN, PanopticFPN
from seglab.models.backbones import resnet, vgg16
from seglab.predict import predict
from seglab.train import train
from seglab.utils.checkpoint import config_from_checkpoint
from seglab.utils.instantiate import build_task
from seglab.utils.safe_load import UntrustedFileError, read_torch_file

LEGACY = Path(__file__).parents[1] / "fixtures" / "legacy"
REFUSED = "holds code or objects that are not plain data"


class _RunsCommand:
    """Unpickles as ``os.system("touch MARKER")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _seglab_checkpoint() -> dict:
    """A checkpoint seglab's train wrote (the tiny U-Net on shapes of the legacy fixtures)."""
    return torch.load(LEGACY / "tiny_unet_shapes.ckpt", map_location="cpu", weights_only=True)


@pytest.fixture
def crafted(tmp_path: Path) -> tuple[Path, Path]:
    """A seglab checkpoint with a ``payload`` entry whose unpickling touches ``marker``."""
    marker = tmp_path / "marker"
    checkpoint = _seglab_checkpoint()
    checkpoint["payload"] = _RunsCommand(marker)
    path = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, path)
    return path, marker


def _assert_refused(message: str, key: str, path: Path) -> None:
    assert f"{key}={str(path)!r}" in message or f"{key}={path}" in message, message
    assert REFUSED in message and "'payload'" in message and "trust_checkpoint=true" in message


def test_the_crafted_file_runs_its_command_only_when_trusted(crafted, caplog):
    path, marker = crafted
    with pytest.raises(UntrustedFileError) as err:
        read_torch_file(path, f"ckpt_path={str(path)!r}")
    assert f"{os.system.__module__}.system in 'payload'" in str(err.value)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    with caplog.at_level(logging.WARNING):
        read_torch_file(path, f"ckpt_path={str(path)!r}", trust=True)
    assert marker.exists()  # the payload is real: the opt-in runs it
    assert str(path) in caplog.text and "trust_checkpoint=true" in caplog.text


def test_eval_cli_refuses_a_checkpoint_that_runs_code(crafted, tmp_path):
    path, marker = crafted
    result = run_cli("eval.py", f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert not marker.exists()
    lines = [line for line in result.stderr.splitlines() if REFUSED in line]
    assert lines, result.stderr[-3000:]
    _assert_refused(lines[-1], "ckpt_path", path)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_train_and_predict_refuse_a_checkpoint_that_runs_code(crafted, compose_cfg, tmp_path):
    """In-process: the command lines end in the same exception as eval's above."""
    path, marker = crafted
    with pytest.raises(UntrustedFileError) as err:
        train(compose_cfg("train", [f"ckpt_path={path}"]))
    _assert_refused(str(err.value), "ckpt_path", path)
    out = tmp_path / "predictions"
    with pytest.raises(UntrustedFileError) as err:
        predict(compose_cfg("predict", [f"ckpt_path={path}", "input=val", f"output={out}"]))
    _assert_refused(str(err.value), "ckpt_path", path)
    assert not marker.exists() and not out.exists()


def test_resume_of_a_run_folder_refuses_a_crafted_last_checkpoint(tmp_path):
    """``python src/train.py resume=RUN_DIR`` resumes the folder's ``checkpoints/last.ckpt`` with
    its ``.hydra/overrides.yaml``; a crafted one is refused and left as it was."""
    if "resume" not in OmegaConf.load(CONF / "train.yaml"):
        pytest.skip("no resume= key in conf/train.yaml yet (the resume work adds it)")
    run = tmp_path / "earlier"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(QUICK_TRAIN), run / ".hydra" / "overrides.yaml")
    marker = tmp_path / "marker"
    checkpoint = _seglab_checkpoint()
    checkpoint["payload"] = _RunsCommand(marker)
    last = run / "checkpoints" / "last.ckpt"
    torch.save(checkpoint, last)
    before = last.read_bytes()
    result = run_cli("train.py", f"resume={run}")
    assert result.returncode != 0
    assert not marker.exists()
    lines = [line for line in result.stderr.splitlines() if REFUSED in line]
    assert lines, result.stderr[-3000:]
    _assert_refused(lines[-1], "ckpt_path", last)
    assert last.read_bytes() == before


_WANDB = {"wandb": {"_target_": "lightning.pytorch.loggers.WandbLogger"}}
_LOADERS = {
    "fcn_vgg16_backbone_weights": ("backbone_weights", lambda p: vgg16(weights=p)),
    "deeplab_pspnet_resnet_backbone_weights": ("backbone_weights", lambda p: resnet(weights=p)),
    "maskrcnn_backbone_weights": (
        "model.net.backbone_weights",
        lambda p: MaskRCNN(
            num_classes=3, backbone="resnet18", backbone_weights=p, **SMALL_MASKRCNN
        ),
    ),
    "maskrcnn_weights": (
        "model.net.weights",
        lambda p: MaskRCNN(num_classes=3, backbone="resnet18", weights=p, **SMALL_MASKRCNN),
    ),
    "panoptic_fpn_weights": (
        "model.net.weights",
        lambda p: PanopticFPN(
            num_things=2, num_stuff=1, backbone="resnet18", weights=p, **SMALL_MASKRCNN
        ),
    ),
    "wandb_resume": ("ckpt_path", lambda p: wandb_resume(OmegaConf.create(_WANDB), p)),
}


@pytest.mark.parametrize("entry", list(_LOADERS))
def test_weights_files_and_wandb_resume_refuse_a_file_that_runs_code(entry, crafted):
    path, marker = crafted
    key, load = _LOADERS[entry]
    with pytest.raises(UntrustedFileError) as err:
        load(str(path))
    assert not marker.exists()
    _assert_refused(str(err.value), key, path)


def test_a_saved_config_naming_a_foreign_target_is_refused(crafted, compose_cfg, tmp_path):
    """``torch.load(weights_only=False)`` of another file, named as the net's ``_target_``: the
    pickle is plain data, but building its config would run the other file's payload."""
    payload, marker = crafted
    checkpoint = _seglab_checkpoint()
    checkpoint["seglab_config"]["model"]["net"] = {
        "_target_": "torch.load",
        "f": str(payload),
        "weights_only": False,
    }
    path = tmp_path / "config.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(UntrustedFileError) as err:
        config_from_checkpoint(compose_cfg("eval", [f"ckpt_path={path}"]))
    message = str(err.value)
    assert f"ckpt_path={str(path)!r}" in message and "trust_checkpoint=true" in message
    assert "'torch.load' at model.net._target_" in message
    assert not marker.exists()


def test_legacy_checkpoints_are_plain_data():
    for path in sorted(LEGACY.glob("*.ckpt")):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        assert isinstance(checkpoint["state_dict"], dict), path


def test_trust_checkpoint_loads_a_harmless_object_with_a_warning(compose_cfg, tmp_path, caplog):
    checkpoint = _seglab_checkpoint()
    checkpoint["hyper_parameters"]["notes"] = PurePosixPath("notes.txt")
    path = tmp_path / "notes.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(
        UntrustedFileError, match=r"pathlib.PurePosixPath in 'hyper_parameters.notes'"
    ):
        config_from_checkpoint(compose_cfg("eval", [f"ckpt_path={path}"]))
    with caplog.at_level(logging.WARNING):
        run_cfg, loaded = config_from_checkpoint(
            compose_cfg("eval", [f"ckpt_path={path}", "trust_checkpoint=true"])
        )
    assert loaded["hyper_parameters"]["notes"] == PurePosixPath("notes.txt")
    assert run_cfg.model.net._target_ == "seglab.models.UNet"
    assert str(path) in caplog.text and "trust_checkpoint=true" in caplog.text


def test_trust_checkpoint_reaches_the_networks_weights_files(compose_cfg, tmp_path, caplog):
    state = dict(torchvision.models.resnet18().state_dict())
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": state, "notes": PurePosixPath("imagenet")}, path)
    overrides = [
        "model=maskrcnn",
        "model.net.backbone=resnet18",
        f"model.net.backbone_weights={path}",
        *(f"model.net.{k}={v}" for k, v in SMALL_MASKRCNN.items()),
    ]
    with pytest.raises(Exception) as err:  # Hydra wraps what the constructor raised
        build_task(compose_cfg("train", overrides))
    assert isinstance(err.value.__cause__ or err.value, UntrustedFileError)
    assert f"model.net.backbone_weights={str(path)!r}" in str(err.value)
    with caplog.at_level(logging.WARNING):
        model = build_task(compose_cfg("train", [*overrides, "trust_checkpoint=true"]))
    assert str(path) in caplog.text
    assert torch.equal(model.net.backbone.body.conv1.weight, state["conv1.weight"])
