"""Speed options on the CPU paths (#15): mixed precision, channels-last, torch.compile, the
trainer's matmul precision and the loaders' workers. The GPU figures are bench/gpu.py's.

``model.compile`` is tested with ``backend: aot_eager`` (TorchDynamo's capture and AOTAutograd's
forward and backward graphs, run eagerly): the default inductor backend generates and builds C++
for every graph, about a minute for the smallest U-Net on this machine's 2 cores.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from support import SMALL_MASKRCNN

from seglab.data.shapes import ShapesDataModule
from seglab.eval import evaluate
from seglab.losses import pixel_cross_entropy
from seglab.models import UNet
from seglab.models.mask_rcnn import MaskRCNN
from seglab.tasks.base import compile_target, to_channels_last
from seglab.train import train
from seglab.utils.instantiate import build_task, build_trainer

DETECTOR = ["model=maskrcnn", "model.net.backbone=resnet18"] + [
    f"model.net.{key}={value}" for key, value in SMALL_MASKRCNN.items()
]
MODELS = {"semantic": ["model=unet_small"], "instance": DETECTOR}
OPTIONS = {
    "bf16": ["trainer.precision=bf16-mixed"],
    "channels_last": ["model.channels_last=true"],
    "compile": ["model.compile={backend: aot_eager}"],
}


@pytest.mark.parametrize(
    ("model", "bf16"),
    [
        ("semantic", True),
        # Mask R-CNN in bf16 takes ATen's slow 16-bit convolutions on this CPU: 52 s for this
        # run, against 19 s in float32, so the default suite runs it in float32 (its bf16
        # outputs and losses: test_detector_outputs_stay_float32_under_autocast) and
        # `pytest -m heavy` with all three options
        ("instance", False),
        pytest.param("instance", True, marks=pytest.mark.heavy),
    ],
)
def test_speed_options_train_two_steps(compose_cfg, model, bf16):
    """bf16-mixed, channels-last and torch.compile together, two training steps and two
    validation batches of a semantic net and Mask R-CNN (one run each)."""
    options = [o for name, option in OPTIONS.items() for o in option if bf16 or name != "bf16"]
    overrides = [*MODELS[model], *options]
    overrides += ["debug=fast_dev_run", "trainer.fast_dev_run=2", "data.batch_size=2"]
    overrides += ["trainer.detect_anomaly=false"]  # the debug overlay's; slow, and not the point
    metrics, objects = train(compose_cfg(overrides=overrides))
    task, trainer = objects["model"], objects["trainer"]
    assert trainer.global_step == 2
    assert trainer.precision == ("bf16-mixed" if bf16 else "32-true")
    assert np.isfinite(metrics["fit"]["train/loss"])
    assert task.channels_last
    convs = [m for m in task.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    target = compile_target(task.net)
    assert target._compiled_call_impl is not None
    assert target is (task.net.backbone if model == "instance" else task.net)
    # the names of a compiled net's parameters are its plain names: checkpoints load either way
    assert not any("_orig_mod" in key for key in task.state_dict())
    cfg = objects["cfg"]
    cfg.model.channels_last, cfg.model.compile = False, False
    plain = build_task(cfg)
    assert not plain.channels_last
    assert compile_target(plain.net)._compiled_call_impl is None
    assert plain.load_state_dict(task.state_dict()) is not None


@pytest.mark.heavy
def test_inductor_compile_trains_like_eager_on_cpu(compose_cfg):
    """``model.compile=true`` with torch.compile's default backend, inductor (C++ generated and
    built for each graph on a CPU: about a minute for the smallest U-Net here, hence ``heavy``):
    two training steps whose losses match an eager run's from the same seed."""
    overrides = [*MODELS["semantic"], "debug=fast_dev_run", "trainer.fast_dev_run=2"]
    overrides += ["data.batch_size=2", "trainer.detect_anomaly=false"]
    eager, _ = train(compose_cfg(overrides=overrides))
    compiled, objects = train(compose_cfg(overrides=[*overrides, "model.compile=true"]))
    assert objects["trainer"].global_step == 2
    assert compile_target(objects["model"].net)._compiled_call_impl is not None
    for key in ("train/loss", "val/loss"):
        stage = "fit" if key.startswith("train") else "val"
        assert compiled[stage][key] == pytest.approx(eager[stage][key], rel=1e-4), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_gpu_paths_train_two_steps(compose_cfg, model, precision):
    """On a GPU (skipped elsewhere): float16 with its gradient scaler and bf16, channels-last and
    torch.compile with its default backend (inductor), two steps of each model."""
    overrides = [*MODELS[model], "trainer=gpu", f"trainer.precision={precision}"]
    overrides += ["model.channels_last=true", "model.compile=true", "data.batch_size=2"]
    overrides += ["debug=fast_dev_run", "trainer.fast_dev_run=2", "trainer.accelerator=gpu"]
    metrics, objects = train(compose_cfg(overrides=overrides))
    assert objects["trainer"].global_step == 2
    assert objects["trainer"].precision == precision
    assert np.isfinite(metrics["fit"]["train/loss"])
    assert next(objects["model"].parameters()).is_cuda


def test_bf16_evaluation_scores_like_float32(semantic_run, compose_cfg):
    """The same checkpoint scored in float32 and under bf16 autocast: the same metrics within
    a small tolerance (argmax of logits computed in bf16 flips a few boundary pixels)."""
    _, metrics, _ = semantic_run
    ckpt = f"ckpt_path={metrics['best_checkpoint']}"
    fp32, _ = evaluate(compose_cfg("eval", overrides=[ckpt]))
    bf16, _ = evaluate(compose_cfg("eval", overrides=[ckpt, "trainer.precision=bf16-mixed"]))
    assert fp32["val"]["val/miou"] == pytest.approx(metrics["val"]["val/miou"], abs=1e-6)
    assert bf16["val"]["val/pixel_acc"] == pytest.approx(fp32["val"]["val/pixel_acc"], abs=0.01)
    assert bf16["val"]["val/miou"] == pytest.approx(fp32["val"]["val/miou"], abs=0.02)
    # the loss is computed in float32 from the bf16 logits: close, not equal
    assert bf16["val"]["val/loss"] == pytest.approx(fp32["val"]["val/loss"], rel=0.02)


def test_bf16_training_run_scores_like_float32(semantic_run, compose_cfg):
    """The session's float32 run of the tiny default job, trained again under bf16-mixed: its
    validation metrics stay within a small tolerance."""
    _, metrics, _ = semantic_run
    overrides = ["trainer.max_epochs=2", "trainer.precision=bf16-mixed"]
    bf16, _ = train(compose_cfg(overrides=overrides))
    assert bf16["val"]["val/pixel_acc"] == pytest.approx(metrics["val"]["val/pixel_acc"], abs=0.05)
    assert bf16["val"]["val/miou"] == pytest.approx(metrics["val"]["val/miou"], abs=0.05)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_detector_outputs_stay_float32_under_autocast(dtype):
    """The RPN, box and mask predictors give float32 under bf16 and float16 autocast (float16:
    what 16-mixed runs on a GPU; Lightning runs 16-mixed as bf16 on a CPU, so the CPU's own
    float16 autocast stands in): boxes and scores are decoded in float32 (a bf16 corner near 500
    px is only exact to 2 px), and the losses are float32."""
    torch.manual_seed(0)
    # 4 detections: 16-bit convolutions take ATen's slow path on this CPU (the mask head's
    # convolutions on 20 detections: about 5 s a pass)
    small = {**SMALL_MASKRCNN, "box_detections_per_img": 4}
    net = MaskRCNN(num_classes=3, backbone="resnet18", box_score_thresh=0.0, **small)
    image = torch.rand(3, 64, 64)
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 8:40, 10:50] = 1
    target = {"boxes": torch.tensor([[10.0, 8.0, 50.0, 40.0]]), "labels": torch.tensor([1])}
    target["masks"] = masks
    with torch.autocast("cpu", dtype=dtype):
        losses = net([image], [target])
        net.eval()
        (detections,) = net([image])
    assert {v.dtype for v in losses.values()} == {torch.float32}
    assert all(np.isfinite(v.item()) for v in losses.values())
    assert len(detections["boxes"]) > 0
    for key in ("boxes", "scores", "masks"):
        assert detections[key].dtype == torch.float32, key


def test_semantic_float16_step_keeps_the_loss_in_float32():
    """A float16 autocast step with a gradient scaler, as 16-mixed runs on a GPU (the CPU's own
    float16 autocast standing in): the net computes in float16, the loss in float32 and within
    1% of the float32 loss, and the scaled step leaves finite weights that moved."""
    torch.manual_seed(0)
    net = UNet(in_channels=3, num_classes=4, base_channels=4, padding=True, batch_norm=True)
    image, target = torch.randn(2, 3, 48, 48), torch.randint(0, 4, (2, 48, 48))
    target[:, :4] = 255  # ignored rows: the normaliser counts labelled pixels only
    total, count = pixel_cross_entropy(net(image), target)
    before = [p.detach().clone() for p in net.parameters()]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    with torch.autocast("cpu", dtype=torch.float16):
        logits = net(image)
        half_total, half_count = pixel_cross_entropy(logits, target)
        loss = half_total / half_count
    assert logits.dtype == torch.float16 and loss.dtype == torch.float32
    assert half_count == count == 2 * 44 * 48
    assert loss.item() == pytest.approx((total / count).item(), rel=0.01)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    after = list(net.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))


def test_channels_last_moves_4d_images_only():
    images = torch.rand(2, 3, 8, 8)
    batch = {"image": images, "mask": torch.zeros(2, 8, 8, dtype=torch.long)}
    moved = to_channels_last(batch)
    assert moved["image"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(moved["image"], images)
    assert moved["mask"] is batch["mask"]
    pair = to_channels_last(([torch.rand(3, 8, 8)], [{"masks": torch.zeros(1, 8, 8)}]))
    assert isinstance(pair, tuple) and pair[0][0].is_contiguous()


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("channels_last", "yes", r"model\.channels_last='yes': expected true or false"),
        ("compile", "fast", r"model\.compile='fast': expected true, false or a mapping"),
        ("compile", {"speed": 1}, r"model\.compile has unknown key\(s\) \['speed'\]"),
    ],
)
def test_bad_speed_options_name_their_key(compose_cfg, key, value, match):
    cfg = compose_cfg()
    cfg.model[key] = value
    with pytest.raises(ValueError, match=match):
        build_task(cfg)


def test_matmul_precision_key_sets_torch(compose_cfg):
    before = torch.get_float32_matmul_precision()
    try:
        build_trainer(compose_cfg(overrides=["trainer.float32_matmul_precision=medium"]))
        assert torch.get_float32_matmul_precision() == "medium"
        with pytest.raises(ValueError, match=r"trainer\.float32_matmul_precision='fast'"):
            build_trainer(compose_cfg(overrides=["trainer.float32_matmul_precision=fast"]))
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("option", ["gpu", "ddp"])
def test_gpu_trainers_turn_on_cudnn_benchmark_and_tf32(compose_cfg, option):
    cfg = compose_cfg(overrides=[f"trainer={option}"], quick=False)
    assert cfg.trainer.benchmark is True
    assert cfg.trainer.float32_matmul_precision == "high"
    assert compose_cfg(quick=False).trainer.float32_matmul_precision is None


def _shapes(**options) -> ShapesDataModule:
    return ShapesDataModule(num_samples={"train": 4, "val": 2, "test": 2}, image_size=32, **options)


def test_auto_workers_and_pinning_follow_the_device(monkeypatch):
    datamodule = _shapes(num_workers="auto", pin_memory="auto", prefetch_factor=4)
    assert datamodule.loader_workers() == (0, False)  # no trainer: as on a CPU
    cpu = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")), num_devices=1)
    datamodule.trainer = cpu
    assert datamodule.loader_workers() == (0, False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    gpus = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    datamodule.trainer = SimpleNamespace(**vars(gpus), num_devices=1)
    assert datamodule.loader_workers() == (8, True)
    datamodule.trainer = SimpleNamespace(**vars(gpus), num_devices=4)
    assert datamodule.loader_workers() == (3, True)  # 16 cores / 4 devices, one for the process
    explicit = _shapes(num_workers=1, pin_memory=False, prefetch_factor=4)
    explicit.trainer = datamodule.trainer
    assert explicit.loader_workers() == (1, False)
    explicit.setup("fit")
    loader = explicit.val_dataloader()
    assert (loader.num_workers, loader.prefetch_factor, loader.persistent_workers) == (1, 4, True)
    assert loader.pin_memory is False


@pytest.mark.parametrize(
    ("key", "value"),
    [("num_workers", -1), ("num_workers", "many"), ("pin_memory", "yes"), ("prefetch_factor", 0)],
)
def test_bad_loader_options_name_their_key(key, value):
    with pytest.raises(ValueError, match=rf"^data\.{key}={value!r}: expected"):
        _shapes(**{key: value})
