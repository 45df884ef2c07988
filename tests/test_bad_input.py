"""Bad input to the entry points: each gets an error naming the file or config key and what was
expected, and nothing already written (checkpoints, metrics, predictions) is lost or changed."""

import hashlib
import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from PIL import Image
from support import compose_config, require_data, run_cli

from seglab.eval import evaluate
from seglab.predict import predict
from seglab.train import train
from seglab.utils.instantiate import build_datamodule, build_task, saved_config
from seglab.utils.io import atomic_write_bytes, write_json

CALLBACK_WARNING = "Be aware that when using `ckpt_path`"


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: relative path -> (sha256, mtime in ns)."""
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def save_images(folder: Path, *names: str, size=(32, 32), mode="RGB", seed=0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        shape = (*size, 3) if mode == "RGB" else size
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(folder / name)


@pytest.fixture(scope="module")
def run(semantic_run):
    """The session's two-epoch run on the built-in data: its folder and metrics."""
    cfg, metrics, _ = semantic_run
    return Path(cfg.paths.output_dir), metrics


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory, run):
    """Files that are not usable checkpoints, by the name of what is wrong with them."""
    folder = tmp_path_factory.mktemp("bad")
    last = (run[0] / "checkpoints" / "last.ckpt").read_bytes()
    (folder / "a_folder.ckpt").mkdir()
    (folder / "a_folder.ckpt" / "inside.ckpt").write_bytes(b"")
    (folder / "empty.ckpt").write_bytes(b"")
    (folder / "truncated.ckpt").write_bytes(last[: len(last) // 2])
    (folder / "text.ckpt").write_text("epoch=3 val/miou=0.5\n")
    torch.save([1, 2, 3], folder / "list.ckpt")
    torch.save({"model": {}}, folder / "no_state_dict.ckpt")
    return folder


# ---------------------------------------------------------------- checkpoints for eval / predict

CKPT_CASES = {
    # name: (exception, pattern after "ckpt_path='<path>': ")
    "missing.ckpt": (FileNotFoundError, "no such checkpoint file; expected a .ckpt file"),
    "a_folder.ckpt": (IsADirectoryError, r"is a folder \(it holds inside.ckpt\); expected"),
    "empty.ckpt": (ValueError, r"the file is empty \(0 bytes\); expected"),
    "truncated.ckpt": (
        ValueError,
        r"not a readable checkpoint, truncated or corrupt \(.+\); expected",
    ),
    "text.ckpt": (ValueError, r"not a readable checkpoint, truncated or corrupt \(.+\); expected"),
    "list.ckpt": (ValueError, r"holds a list, no 'state_dict' of weights; expected"),
    "no_state_dict.ckpt": (ValueError, r"holds a dict with the keys \['model'\], no 'state_dict'"),
}


@pytest.mark.parametrize("entry", ["eval", "predict"])
@pytest.mark.parametrize("name", list(CKPT_CASES))
def test_unusable_checkpoint_is_named(entry, name, bad_checkpoints, compose_cfg, tmp_path):
    error, pattern = CKPT_CASES[name]
    path = bad_checkpoints / name
    overrides = [f"ckpt_path={path}"]
    if entry == "predict":
        save_images(tmp_path / "in", "a.png")
        overrides += [f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}"]
    fn = evaluate if entry == "eval" else predict
    with pytest.raises(error, match=re.escape(f"ckpt_path={str(path)!r}: ") + pattern):
        fn(compose_cfg(entry, overrides))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("entry", ["eval", "predict"])
@pytest.mark.parametrize("value", [None, "null"])
def test_ckpt_path_required(entry, value, compose_cfg):
    overrides = [] if value is None else [f"ckpt_path={value}"]
    if entry == "predict":
        overrides += ["input=x", "output=y"]
    with pytest.raises(ValueError, match=r"ckpt_path=None: required; expected ckpt_path=PATH"):
        (evaluate if entry == "eval" else predict)(compose_cfg(entry, overrides))


@pytest.fixture(scope="module")
def instance_ckpt(tmp_path_factory):
    """A Mask R-CNN checkpoint on the built-in data: its config only (the errors below come
    before any weight is read, so an empty state dict stands in for a trained one)."""
    out = tmp_path_factory.mktemp("instance")
    cfg = compose_config("train", ["model=maskrcnn", "model.net.backbone=resnet18"], out)
    path = out / "maskrcnn.ckpt"
    torch.save({"state_dict": {}, "seglab_config": saved_config(cfg)}, path)
    return path


def test_instance_checkpoint_on_other_data_or_input(instance_ckpt, compose_cfg, tmp_path):
    with pytest.raises(
        ValueError,
        # the checkpoint's instance task asks data=isbi2012 for a view it does not offer
        match=r"data.task='instance': data=isbi2012 offers the views \['semantic'\]",
    ):
        evaluate(compose_cfg("eval", [f"ckpt_path={instance_ckpt}", "data=isbi2012"]))
    with pytest.raises(
        ValueError,
        match=r"input='x': no such file or folder, and no split of this dataset; expected an "
        r"image file, a folder of images, or input= one of \['train', 'val', 'test'\]",
    ):
        predict(
            compose_cfg(
                "predict", [f"ckpt_path={instance_ckpt}", "input=x", f"output={tmp_path / 'o'}"]
            )
        )
    assert not (tmp_path / "o").exists()


def test_checkpoint_given_other_data_or_model(run, compose_cfg):
    ckpt = run[0] / "checkpoints" / "last.ckpt"
    # data=isbi2012: 2 grey classes for a 6-class RGB net (was a conv shape error mid-run)
    with pytest.raises(ValueError, match=r"data.num_classes=2 .* but model.num_classes=6 "):
        evaluate(compose_cfg("eval", [f"ckpt_path={ckpt}", "data=isbi2012"]))
    # the checkpoint's data (semantic view) under an instance model
    with pytest.raises(ValueError, match=r"data.task='semantic' .* but model.task='instance'"):
        evaluate(compose_cfg("eval", [f"ckpt_path={ckpt}", "model=maskrcnn"]))
    # same net, other widths: the misfit tensors are named (was Lightning's long key dump)
    with pytest.raises(
        ValueError,
        match=r"ckpt_path='.*last.ckpt': its weights do not fit the model "
        r"SemanticSegmentationTask\(UNet\) \(\d+ shape \(checkpoint vs model\): net\.",
    ):
        evaluate(
            compose_cfg(
                "eval", [f"ckpt_path={ckpt}", "model=unet_small", "model.net.base_channels=8"]
            )
        )


def test_eval_reproduces_without_callback_warning(run, compose_cfg, tmp_path):
    _, metrics = run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores, _ = evaluate(compose_cfg("eval", [f"ckpt_path={metrics['best_checkpoint']}"]))
    assert not [w for w in caught if CALLBACK_WARNING in str(w.message)]
    for key, value in metrics["val"].items():
        assert scores["val"][key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["val"]["val/miou"] == pytest.approx(metrics["val"]["val/miou"], abs=1e-6)


def test_eval_cli_is_quiet_and_predict_cli_names_output(run, tmp_path):
    """Through the command line: no callback warning for eval; predict's error reaches stderr."""
    ckpt = run[0] / "checkpoints" / "last.ckpt"
    result = run_cli(
        "eval.py", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}", timeout=300,
        warnings=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert CALLBACK_WARNING not in result.stdout + result.stderr
    assert "val/miou" in json.loads((tmp_path / "eval" / "metrics.json").read_text())["val"]

    save_images(tmp_path / "in", "a.png")
    target = tmp_path / "taken.png"
    target.write_bytes(b"an earlier result")
    result = run_cli(
        "predict.py",
        f"ckpt_path={ckpt}",
        f"input={tmp_path / 'in'}",
        f"output={target}",
        f"hydra.run.dir={tmp_path / 'predict'}",
        timeout=300,
    )
    assert result.returncode != 0
    assert f"output='{target}': is an existing file; expected a folder" in result.stderr
    assert target.read_bytes() == b"an earlier result"


# ---------------------------------------------------------------------------------- predict


def predict_cfg(compose_cfg, ckpt, input, output, *extra):
    return compose_cfg(
        "predict", [f"ckpt_path={ckpt}", f"input={input}", f"output={output}", *extra]
    )


def test_predict_input_errors(run, compose_cfg, tmp_path):
    ckpt = run[0] / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"input=None: expected an image file or a folder"):
        predict(predict_cfg(compose_cfg, ckpt, "null", tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match=r"input='/no/such': no such file or folder"):
        predict(predict_cfg(compose_cfg, ckpt, "/no/such", tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"input='.*empty': no image \(.png, .jpg"):
        predict(predict_cfg(compose_cfg, ckpt, tmp_path / "empty", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_predict_corrupt_image_fails_before_writing(run, compose_cfg, tmp_path):
    """A file that is no image fails the run, named, before any prediction is written; the
    predictions of an earlier run in the output folder are left as they were."""
    ckpt = run[0] / "checkpoints" / "last.ckpt"
    images, out = tmp_path / "in", tmp_path / "out"
    save_images(images, "a.png", "c.png")
    predict(predict_cfg(compose_cfg, ckpt, images, out))
    before = snapshot(out)
    assert sorted(before) == ["a.png", "a_overlay.png", "c.png", "c_overlay.png"]
    (images / "b.png").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(
        ValueError, match=r"input image '.*in/b.png' could not be read \(.*\); expected"
    ):
        predict(predict_cfg(compose_cfg, ckpt, images, out))
    assert snapshot(out) == before
    assert not list(out.glob(".*"))


def test_predict_output_must_not_overwrite_inputs(run, compose_cfg, tmp_path):
    ckpt = run[0] / "checkpoints" / "last.ckpt"
    images = tmp_path / "in"
    save_images(images, "a.png", "b.jpg")
    before = snapshot(images)
    with pytest.raises(
        ValueError,
        match=r"output='.*in': the prediction of .*a.png would overwrite the input image .*a.png",
    ):
        predict(predict_cfg(compose_cfg, ckpt, images, images))
    assert snapshot(images) == before
    save_images(images, "b.png")
    before = snapshot(images)
    with pytest.raises(ValueError, match=r"input='.*b.png' and '.*b.jpg' would both write"):
        predict(predict_cfg(compose_cfg, ckpt, images, tmp_path / "out"))
    assert snapshot(images) == before
    assert not (tmp_path / "out").exists()


def test_predict_output_is_a_file(run, compose_cfg, tmp_path):
    ckpt = run[0] / "checkpoints" / "last.ckpt"
    save_images(tmp_path / "in", "a.png")
    target = tmp_path / "result.png"
    target.write_bytes(b"keep me")
    with pytest.raises(NotADirectoryError, match=r"output='.*result.png': is an existing file"):
        predict(predict_cfg(compose_cfg, ckpt, tmp_path / "in", target))
    assert target.read_bytes() == b"keep me"


def test_predict_refuses_16_bit_images(run, compose_cfg, tmp_path):
    ckpt = run[0] / "checkpoints" / "last.ckpt"
    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((16, 16), 4000, np.uint16)).save(tmp_path / "in" / "deep.png")
    with pytest.raises(ValueError, match=r"deep.png' has Pillow mode 'I;16' .*; expected 8-bit"):
        predict(predict_cfg(compose_cfg, ckpt, tmp_path / "in", tmp_path / "out"))


@pytest.fixture(scope="module")
def grey_ckpt(tmp_path_factory):
    """An untrained 1-channel ISBI U-Net checkpoint (building the data module reads no file)."""
    out = tmp_path_factory.mktemp("grey")
    cfg = compose_config("train", ["data=isbi2012", "paths.data_dir=/nowhere"], out, quick=False)
    torch.manual_seed(0)
    model = build_task(cfg, build_datamodule(cfg.data))
    path = out / "grey.ckpt"
    torch.save({"state_dict": model.state_dict(), "seglab_config": saved_config(cfg)}, path)
    return path


@pytest.mark.parametrize("kind", ["rgb_into_grey_model", "grey_into_rgb_model"])
def test_predict_converts_channels(kind, run, grey_ckpt, compose_cfg, tmp_path):
    """Images are converted to the model's channels as the data modules convert them: RGB to
    grey (Pillow's L) for ISBI's 1-channel net, grey repeated to RGB for the 3-channel one."""
    if kind == "rgb_into_grey_model":
        ckpt, mode, converted = grey_ckpt, "RGB", "L"
    else:
        ckpt, mode, converted = run[0] / "checkpoints" / "last.ckpt", "L", "RGB"
    save_images(tmp_path / "in", "x.png", size=(40, 24), mode=mode)
    with Image.open(tmp_path / "in" / "x.png") as img:
        img.convert(converted).save(tmp_path / "same.png")
    cpu = "trainer.accelerator=cpu"
    predict(predict_cfg(compose_cfg, ckpt, tmp_path / "in", tmp_path / "a", cpu))
    predict(predict_cfg(compose_cfg, ckpt, tmp_path / "same.png", tmp_path / "b", cpu))
    got, expected = Image.open(tmp_path / "a" / "x.png"), Image.open(tmp_path / "b" / "same.png")
    assert got.size == (24, 40)
    assert np.array_equal(np.asarray(got), np.asarray(expected))


# ------------------------------------------------------------------------------------ train


@pytest.mark.parametrize(
    ("data", "looked_for"),
    [
        ("isbi2012", "data_dir {root}/isbi2012_em/membrane does not exist"),
        ("dsb2018", "folder {root}/dsb2018_nuclei/stage1_train does not exist"),
        ("coco", "annotation file {root}/coco/annotations/instances_train2017.json not found"),
    ],
)
def test_train_missing_data_dir(data, looked_for, compose_cfg, tmp_path):
    root = tmp_path / "nowhere"
    cfg = compose_cfg(
        overrides=[f"data={data}", f"paths.data_dir={root}", "trainer.accelerator=cpu"],
        quick=False,
    )
    with pytest.raises(FileNotFoundError) as info:
        train(cfg)
    message = str(info.value)
    assert f"data={data}: " + looked_for.format(root=root) in message
    assert "data.data_dir" in message
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed"


def test_train_corrupt_slice_names_it_and_keeps_earlier_metrics(compose_cfg, tmp_path):
    """A random-bytes ISBI slice fails the run naming the file. The run folder's metrics.json
    of an earlier run is moved aside, not left to look like this run's, and not deleted."""
    source = require_data("isbi2012_em", "membrane") / "train"
    root = tmp_path / "isbi"
    for sub in ("image", "label"):
        (root / "train" / sub).mkdir(parents=True)
        for i in range(4):
            shutil.copy(source / sub / f"{i}.png", root / "train" / sub / f"{i}.png")
    (root / "train" / "image" / "3.png").write_bytes(np.random.default_rng(0).bytes(4096))
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"val": {"val/miou": 0.9}}\n')
    cfg = compose_config(
        "train",
        [
            "data=isbi2012",
            f"data.data_dir={root}",
            "data.train_slices=[0,1,2]",
            "data.val_slices=[3]",
            "data.test_slices=[]",
            "data.crop_size=64",
            "trainer.accelerator=cpu",
            "trainer.max_epochs=1",
        ],
        out,
        quick=False,
    )
    with pytest.raises(
        ValueError, match=r"ISBI 2012 slice .*isbi/train/image/3.png could not be read"
    ):
        train(cfg)
    assert json.loads((out / "metrics.json").read_text())["status"] == "failed"
    (aside,) = out.glob("metrics.before-*.json")
    assert json.loads(aside.read_text()) == {"val": {"val/miou": 0.9}}
    assert not list(out.rglob("*.ckpt"))  # it failed in the sanity check, before any epoch


@pytest.mark.parametrize(
    ("override", "error", "pattern"),
    [
        (
            "data.batch_size=0",
            InstantiationException,
            r"data.batch_size=0: expected a positive integer",
        ),
        (
            "trainer.max_epochs=-2",
            InstantiationException,
            r"`max_epochs` must be a non-negative integer or -1. You passed in -2",
        ),
        (
            "model.loss.reduction=foo",
            InstantiationException,
            r"model.loss.reduction='foo': expected 'mean' or 'sum'",
        ),
        (
            "optimizer.lr=-1",
            ValueError,
            r"optimizer.lr=-1: torch.optim.Adam refuses it \(Invalid learning rate: -1\)",
        ),
        (
            "+optimizer.foo=1",
            ValueError,
            r"optimizer.foo: torch.optim.Adam takes no such argument",
        ),
        ("model.nosuch=1", ConfigCompositionException, r"Could not override 'model.nosuch'"),
    ],
)
def test_train_bad_config_values(override, error, pattern, compose_cfg, tmp_path):
    with pytest.raises(error, match=pattern) as info:
        train(compose_cfg(overrides=[override]))
    if error is InstantiationException and "max_epochs" in pattern:
        assert isinstance(info.value.__cause__, MisconfigurationException)
    if error is ConfigCompositionException:  # no config, no run
        assert not (tmp_path / "metrics.json").exists()
    else:  # the run started: it is marked failed
        assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed"


# ----------------------------------------------------------------------------------- resume


def test_resume_continues_and_leaves_the_earlier_run_alone(run, compose_cfg, tmp_path):
    first, _ = run
    before = snapshot(first)
    last = first / "checkpoints" / "last.ckpt"
    # Lightning >= 2.6 rewrites last.ckpt only when a top-k checkpoint is saved, so it holds
    # epoch 0 or 1 of the first run, whichever scored best.
    state = torch.load(last, map_location="cpu", weights_only=False)
    first_epoch, first_step = state["epoch"], state["global_step"]
    per_epoch = first_step // (first_epoch + 1)
    _, objects = train(compose_cfg(overrides=[f"ckpt_path={last}", "trainer.max_epochs=3"]))
    trainer = objects["trainer"]
    assert trainer.current_epoch == 3
    assert trainer.global_step == first_step + per_epoch * (2 - first_epoch)
    epochs = [
        torch.load(p, map_location="cpu", weights_only=False)["epoch"]
        for p in (tmp_path / "checkpoints").glob("*.ckpt")
    ]
    assert epochs and min(epochs) > first_epoch  # this run's checkpoints continue the first's
    assert json.loads((tmp_path / "metrics.json").read_text())["fit"]
    assert snapshot(first) == before


@pytest.mark.parametrize("bad", ["truncated", "other_model", "weights_only"])
def test_resume_from_bad_checkpoint_fails_before_writing(bad, run, compose_cfg, tmp_path):
    """Resuming into a folder that already holds a run (Hydra reuses a folder when two runs
    start in the same second, or on hydra.run.dir=...) fails before touching its files: the
    only change is the failed run's own metrics.json ("failed", with the error), the earlier
    one moved aside whole (seglab.utils.failure.recorded_failure)."""
    folder = tmp_path / "reused"
    shutil.copytree(run[0], folder)
    before = snapshot(folder)
    last = run[0] / "checkpoints" / "last.ckpt"
    overrides = []
    if bad == "truncated":
        ckpt = tmp_path / "truncated.ckpt"
        ckpt.write_bytes(last.read_bytes()[:100_000])
        pattern = r"not a readable checkpoint, truncated or corrupt"
    elif bad == "other_model":
        ckpt, overrides = last, ["model.net.base_channels=8"]
        pattern = r"its weights do not fit the model .*; expected a checkpoint of this run's model"
    else:
        ckpt = tmp_path / "weights.ckpt"
        full = torch.load(last, map_location="cpu", weights_only=False)
        torch.save({"state_dict": full["state_dict"], "seglab_config": full["seglab_config"]}, ckpt)
        pattern = r"holds weights but no training state \['pytorch-lightning_version', 'epoch'"
    cfg = compose_config("train", [f"ckpt_path={ckpt}", *overrides], folder)
    with pytest.raises(ValueError, match=re.escape(f"ckpt_path={str(ckpt)!r}: ") + ".*" + pattern):
        train(cfg)
    after = snapshot(folder)
    (aside,) = [name for name in after if name.startswith("metrics.before-")]
    assert after.pop(aside)[0] == before["metrics.json"][0]  # the earlier result, byte for byte
    failed = json.loads((folder / "metrics.json").read_text())
    assert failed["status"] == "failed" and re.search(pattern, failed["error"])
    after.pop("metrics.json"), before.pop("metrics.json")
    assert after == before


# ------------------------------------------------------------------------------ metrics.json


def test_write_json_failure_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json(path, {"val": {"val/miou": 0.5}})
    before = snapshot(tmp_path)
    with pytest.raises(TypeError):
        write_json(path, {"val": {"val/miou": object()}})  # fails while serialising
    assert snapshot(tmp_path) == before

    def no_rename(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="disk full"):
        write_json(path, {"val": {"val/miou": 0.7}})  # fails after writing the temporary file
    assert snapshot(tmp_path) == before  # no .tmp left behind either


def test_write_json_is_strict_json_with_plain_permissions(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"loss": math.inf, "miou": torch.tensor(math.nan), "acc": 0.5})

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "acc": 0.5,
        "loss": None,
        "miou": None,
    }
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0o600
    os.chmod(path, 0o640)
    atomic_write_bytes(path, b"{}\n")
    assert path.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its mode
