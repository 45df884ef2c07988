"""Outputs that are never half-written, and checkpoints that take no more disk than needed:
atomic checkpoint files, predict that checks every input before it writes, the best and the last
checkpoint of one epoch as one file, ``callbacks.model_checkpoint.save_weights_only``."""

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import compose_config

from seglab.callbacks import writers
from seglab.predict import predict
from seglab.train import train
from seglab.utils.checkpoint_io import AtomicCheckpointIO
from seglab.utils.instantiate import build_datamodule, build_task, build_trainer, saved_config

# one epoch of the tiny U-Net on 32-px shapes, without the callbacks that only draw or print
FAST = [
    "model=unet_small",
    "callbacks.visuals=null",
    "callbacks.rich_progress_bar=null",
    "callbacks.model_summary=null",
]


def digests(folder):
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def fit(folder, *overrides):
    return train(compose_config("train", [*FAST, *overrides], folder))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished one-epoch run: its metrics and objects."""
    return fit(tmp_path_factory.mktemp("run"))


@pytest.mark.parametrize("trainer", ["cpu", "ddp_cpu"])
def test_every_trainer_writes_checkpoints_through_the_atomic_plugin(trainer, tmp_path):
    cfg = compose_config("train", [f"trainer={trainer}"], tmp_path)
    built = build_trainer(cfg, logger=False, callbacks=[])
    assert isinstance(built.strategy.checkpoint_io, AtomicCheckpointIO)


def test_checkpoint_failing_mid_write_leaves_the_previous_file(run, monkeypatch):
    trainer = run[1]["trainer"]
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    folder = Path(trainer.default_root_dir, "checkpoints")
    last = folder / "last.ckpt"
    before, names = digests(folder), sorted(os.listdir(folder))
    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        trainer.save_checkpoint(last)
    assert sorted(os.listdir(folder)) == names  # no temporary file left behind
    assert digests(folder) == before
    monkeypatch.undo()
    assert torch.load(last, weights_only=True)["state_dict"]


def test_best_and_last_of_one_epoch_are_one_file_until_last_is_rewritten(run):
    metrics, objects = run
    best = metrics["best_checkpoint"]
    last = os.path.join(os.path.dirname(best), "last.ckpt")
    assert os.path.samefile(best, last)  # a hard link: one copy on disk
    assert os.stat(best).st_nlink == 2
    full = torch.load(last, weights_only=True)
    assert full["optimizer_states"] and full["loops"]  # resumable
    best_bytes = Path(best).read_bytes()

    trainer, model = objects["trainer"], objects["model"]
    name, param = next(iter(model.named_parameters()))
    weight = full["state_dict"][name]
    with torch.no_grad():
        param.add_(1.0)  # another training state
    trainer.save_checkpoint(last)
    assert not os.path.samefile(best, last)
    assert Path(best).read_bytes() == best_bytes  # the best did not follow last.ckpt
    assert torch.equal(torch.load(best, weights_only=True)["state_dict"][name], weight)
    assert not torch.equal(torch.load(last, weights_only=True)["state_dict"][name], weight)


def test_save_weights_only_best_holds_weights_and_last_stays_full(tmp_path):
    metrics, _ = fit(tmp_path, "callbacks.model_checkpoint.save_weights_only=true")
    best = metrics["best_checkpoint"]
    last = tmp_path / "checkpoints" / "last.ckpt"
    weights, full = torch.load(best, weights_only=True), torch.load(last, weights_only=True)
    assert "optimizer_states" not in weights and full["optimizer_states"]
    assert weights["state_dict"].keys() == full["state_dict"].keys()
    assert weights["seglab_config"] == full["seglab_config"]  # what eval and predict read
    assert not os.path.samefile(best, last)
    assert os.path.getsize(best) < os.path.getsize(last)
    assert metrics["status"] == "completed" and metrics["val"]  # validated from the best


@pytest.fixture
def predicted(tmp_path):
    """An untrained U-Net checkpoint, a folder of 3 images and a folder of their predictions;
    the images are then changed, so that a run reaching one would rewrite its outputs."""
    cfg = compose_config("train", ["model=unet_small"], tmp_path)
    model = build_task(cfg, build_datamodule(cfg.data))
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "seglab_config": saved_config(cfg)}, ckpt)
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    rng = np.random.default_rng(0)

    def draw():
        for name in ("a.png", "b.png", "c.png"):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / name)

    def run_predict():
        overrides = [f"ckpt_path={ckpt}", f"input={images}", f"output={out}"]
        return predict(compose_config("predict", [*overrides, "trainer.accelerator=cpu"], tmp_path))

    draw()
    written, _ = run_predict()
    assert len(written) == 6  # a mask and an overlay per image
    draw()
    return images, out, run_predict


def test_truncated_png_fails_naming_it_before_any_output_changes(predicted):
    images, out, run_predict = predicted
    before = digests(out)
    png = (images / "c.png").read_bytes()
    (images / "c.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(ValueError) as err:
        run_predict()
    message = str(err.value)
    assert "c.png" in message and "truncated" in message and "\n" not in message
    assert digests(out) == before  # byte-identical, and no new (or temporary) file


def test_predict_failing_midway_puts_no_output_in_place(predicted, monkeypatch):
    _, out, run_predict = predicted
    before = digests(out)
    calls, real_overlay = [], writers.class_overlay

    def overlay_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # a's mask and overlay and b's mask are written by now
            raise MemoryError("out of memory")
        return real_overlay(*args, **kwargs)

    monkeypatch.setattr(writers, "class_overlay", overlay_then_fail)
    with pytest.raises(MemoryError):
        run_predict()
    assert len(calls) == 2
    assert digests(out) == before
    monkeypatch.undo()
    written, _ = run_predict()
    assert len(written) == 6 and digests(out) != before
