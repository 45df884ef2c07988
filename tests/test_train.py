"""End to end: train, evaluate and predict through the entry functions and the command line."""

import json
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image
from support import SMALL_MASKRCNN, run_cli

from seglab.data.base import seed_worker
from seglab.eval import evaluate
from seglab.predict import predict
from seglab.train import train

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))
# The FCNs' runs take no path of their own: the semantic task and data are model-agnostic, and
# tests/models (forward, backward at odd sizes, layer shapes, instantiation) cover the nets; a
# run of fcn8s took 15 s (fcn16s and fcn32s about as much each)
FAST_DEV_RUN_MODELS = [m for m in MODELS if m not in ("fcn8s", "fcn16s", "fcn32s")]


@pytest.mark.parametrize("model", FAST_DEV_RUN_MODELS)
def test_fast_dev_run(compose_cfg, model):
    overrides = [f"model={model}", "debug=fast_dev_run", "data.batch_size=2"]
    if model == "unet":
        overrides.append("data.image_size=188")  # smallest input of the unpadded paper U-Net
    if model in ("maskrcnn", "panoptic_fpn"):  # ResNet-50-FPN at 800 px: ~15 s a step here
        # the small detector of the instance and panoptic tests: that one batch runs end to end
        # does not depend on the input size or the proposal counts
        overrides += ["model.net.backbone=resnet18"]
        overrides += [f"model.net.{key}={value}" for key, value in SMALL_MASKRCNN.items()]
    metrics, objects = train(compose_cfg(overrides=overrides))
    assert np.isfinite(metrics["fit"]["train/loss"])
    if objects["cfg"].model.task == "panoptic":
        assert 0.0 <= metrics["val"]["val/pq"] <= 1.0
        assert np.isfinite(metrics["val"]["val/loss_sem_seg"])
    elif objects["cfg"].model.task == "instance":
        assert -1.0 <= metrics["val"]["val/map_segm"] <= 1.0
    else:
        assert 0.0 <= metrics["val"]["val/pixel_acc"] <= 1.0


@pytest.fixture
def trained(semantic_run):
    """The session's short training run (2 epochs, test=true), read by the eval and predict
    tests."""
    return semantic_run


def test_train_writes_run_folder_and_eval_reproduces(trained, compose_cfg, tmp_path):
    cfg, metrics, objects = trained
    out = Path(cfg.paths.output_dir)
    best = Path(metrics["best_checkpoint"])
    assert best.is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "csv" / "metrics.csv").is_file()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["val"]["val/miou"] == pytest.approx(metrics["val"]["val/miou"])
    assert "test/miou" in saved["test"]
    best_score = objects["trainer"].checkpoint_callback.best_model_score.item()
    assert metrics["val"]["val/miou"] == pytest.approx(best_score, abs=1e-7)

    eval_metrics, _ = evaluate(compose_cfg("eval", overrides=[f"ckpt_path={best}"]))
    for key, value in metrics["val"].items():
        assert eval_metrics["val"][key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    test_metrics, _ = evaluate(compose_cfg("eval", overrides=[f"ckpt_path={best}", "split=test"]))
    assert test_metrics["test"]["test/miou"] == pytest.approx(
        metrics["test"]["test/miou"], abs=1e-6
    )


def test_eval_errors(compose_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="ckpt_path="):
        evaluate(compose_cfg("eval", overrides=[f"ckpt_path={tmp_path}/none.ckpt"]))
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        evaluate(compose_cfg("eval", overrides=[f"ckpt_path={bad}"]))
    with pytest.raises(ValueError, match="split="):
        evaluate(compose_cfg("eval", overrides=[f"ckpt_path={bad}", "split=dev"]))


def test_predict_writes_masks_and_overlays(trained, compose_cfg, tmp_path):
    _cfg, metrics, _ = trained
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (32, 32)), ("b.jpg", (45, 37))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(images / name)
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "pred"
    written, objects = predict(
        compose_cfg(
            "predict",
            overrides=[
                f"ckpt_path={metrics['best_checkpoint']}",
                f"input={images}",
                f"output={out}",
            ],
        )
    )
    assert sorted(p.name for p in written) == ["a.png", "a_overlay.png", "b.png", "b_overlay.png"]
    mask = Image.open(out / "b.png")
    assert mask.mode == "P" and mask.size == (37, 45)
    assert np.asarray(mask).max() < 6
    assert mask.getpalette()[:18] == [v for c in objects["datamodule"].palette for v in c]
    assert Image.open(out / "b_overlay.png").size == (37, 45)
    assert not list(out.glob(".*.tmp"))
    # Predictions equal the task's own forward pass.
    model = objects["model"].eval()
    single = predict(
        compose_cfg(
            "predict",
            overrides=[
                f"ckpt_path={metrics['best_checkpoint']}",
                f"input={images / 'a.png'}",
                f"output={tmp_path / 'one'}",
                "overlay=false",
            ],
        )
    )[0]
    assert [p.name for p in single] == ["a.png"]
    x = np.asarray(Image.open(images / "a.png"), np.float32)
    x = (x / 255 - 0.5) / 0.25
    with torch.no_grad():
        expected = model(torch.from_numpy(x.transpose(2, 0, 1).copy())[None]).argmax(1)[0].numpy()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "one" / "a.png")), expected)


def test_predict_bad_input(trained, compose_cfg, tmp_path):
    ckpt = trained[1]["best_checkpoint"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image"):
        predict(
            compose_cfg("predict", overrides=[f"ckpt_path={ckpt}", f"input={empty}", "output=x"])
        )
    with pytest.raises(FileNotFoundError, match="input="):
        predict(
            compose_cfg("predict", overrides=[f"ckpt_path={ckpt}", "input=/no/such", "output=x"])
        )


def test_cli_help_lists_every_group():
    result = run_cli("train.py", "--help")
    assert result.returncode == 0, result.stderr
    for group in (
        "model",
        "data",
        "trainer",
        "logger",
        "callbacks",
        "debug",
        "optimizer",
        "scheduler",
    ):
        assert f"{group}:" in result.stdout
    for option in ("unet_small", "ddp_cpu", "tensorboard", "fast_dev_run"):
        assert option in result.stdout


def test_cli_unknown_model_lists_models():
    result = run_cli("train.py", "model=nosuch")
    assert result.returncode != 0
    assert "Could not find 'model/nosuch'" in result.stderr
    assert "unet_small" in result.stderr


@pytest.mark.slow
def test_ddp_cpu_one_run_folder_and_exact_eval(ddp_cpu_run, compose_cfg, tmp_path):
    """2 ranks write one run folder (the fixture checks there is only one), and eval.py under
    ddp_cpu scores its checkpoint as one process does, on a split the ranks share unevenly."""
    ckpt = ddp_cpu_run.run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (ddp_cpu_run.run / "metrics.json").is_file()

    single = evaluate(compose_cfg("eval", overrides=[f"ckpt_path={ckpt}", "trainer=cpu"]))[0]
    logs = tmp_path / "logs"
    result = run_cli("eval.py", f"ckpt_path={ckpt}", "trainer=ddp_cpu", f"paths.log_dir={logs}")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (logs / "eval" / "runs").iterdir()
    ddp = json.loads((run / "metrics.json").read_text())["val"]
    assert single["val"].keys() == ddp.keys() and "val/miou" in ddp
    for key, value in single["val"].items():  # losses: the same terms summed in another order
        assert ddp[key] == pytest.approx(value, rel=1e-6, abs=1e-6, nan_ok=True), key


def test_last_checkpoint_is_the_last_epoch(compose_cfg):
    # lr 0 and no batch norm: every epoch scores the same, so only epoch 0 is ever "best".
    # last.ckpt must still hold the final epoch (Lightning 2.6's save_last would keep epoch 0).
    cfg = compose_cfg(
        overrides=[
            "trainer.max_epochs=3",
            "optimizer.lr=0.0",
            "model.net.batch_norm=false",
            "callbacks.early_stopping=null",
        ]
    )
    metrics, objects = train(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    best = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
    assert best["epoch"] == 0 and last["epoch"] == 2
    assert last["global_step"] == objects["trainer"].global_step
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]


def test_training_repeats_exactly_for_a_seed(trained, compose_cfg):
    # albumentations keeps its own random state: the data module seeds it from the run's seed.
    # The first run is the session's: trained earlier in this process, other runs between them.
    first = trained[1]
    again = train(compose_cfg(overrides=["trainer.max_epochs=2", "test=true"]))[0]
    assert again["fit"]["train/loss"] == first["fit"]["train/loss"]
    assert again["val"] == first["val"] and again["test"] == first["test"]


class _DrawsFromItsTransform(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.transform = A.Compose([A.HorizontalFlip()], seed=0)

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> float:
        return float(self.transform.random_generator.random())


def test_loader_workers_seed_their_augmentation():
    def draws(seed: int) -> list[float]:
        torch.manual_seed(seed)
        loader = torch.utils.data.DataLoader(
            _DrawsFromItsTransform(), batch_size=1, num_workers=2, worker_init_fn=seed_worker
        )
        return [float(x) for x in loader]

    first = draws(0)
    # items 0 and 1 are each worker's first draw: equal if the workers shared a state
    assert first[0] != first[1]
    assert draws(0) == first and draws(1) != first


def test_median_frequency_class_weights_reach_the_loss(compose_cfg):
    cfg = compose_cfg(overrides=["debug=fast_dev_run", "model.loss.class_weights=median_frequency"])
    _, objects = train(cfg)
    expected = objects["datamodule"].median_frequency_weights()
    assert objects["model"].class_weights.tolist() == pytest.approx(expected)
    assert len(set(expected)) > 1
