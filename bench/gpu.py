"""GPU training speed: seglab through Lightning and its config path vs a plain PyTorch loop on
torchvision's own model, DeepLabv3-ResNet-50 and Mask R-CNN R50-FPN.

Setup (#15): a batch of 8 images of 512x512 (``data=shapes`` at ``data.image_size=512``, 6
classes), SGD (lr 0.01, momentum 0.9), one GPU, from scratch (no pretrained files).

- **seglab**: ``model=deeplabv3`` (ResNet-50 at output stride 8, torchvision's dilations (no multi-grid), ASPP rates 12/24/36
  and the extra 3x3 conv: torchvision's ``deeplabv3_resnet50`` layer for layer) or
  ``model=maskrcnn`` (ResNet-50-FPN, 512 px), ``data=shapes``, ``trainer=gpu`` (cuDNN autotuner,
  TF32 matmuls), composed by Hydra and built by seglab's builders, fitted by ``Trainer.fit`` with
  its real data loader (``num_workers: auto``, pinned memory), loss, logging and per-step
  training metrics; no validation, checkpoint or logger.
- **plain**: ``torchvision.models.segmentation.deeplabv3_resnet50`` /
  ``torchvision.models.detection.maskrcnn_resnet50_fpn`` (same classes and sizes) in a bare loop
  (forward, loss, ``zero_grad``, ``backward``, ``step``) on ONE batch already on the GPU (seglab's
  first batch): no data loading at all, so the plain side is an upper bound. Same precision, same
  cuDNN autotuner and matmul precision.

Each side runs WARMUP steps (not timed: cuDNN autotuning, ``torch.compile``), then STEPS steps,
timed with CUDA synchronised at both ends. Printed per model: images/s of each side, their ratio
(seglab / plain), and each side's peak GPU memory. Two settings:

- ``fp32``: both in float32 (TF32 matmuls), seglab's defaults;
- ``best``: bf16-mixed on both; seglab with ``model.channels_last=true`` and ``model.compile=true``
  (the plain loop: autocast only, its default memory format, not compiled).

The headline is the smaller of the two models' ``best`` ratios (goal >= 1.0). On a machine without
a CUDA GPU it says so and exits 0; ``--smoke`` runs the same code on the CPU at a tiny size to
check that it works (its figures measure nothing).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def compose(overrides: list[str]):
    import tempfile

    from seglab.utils.config import compose_config

    return compose_config("train", overrides, tempfile.mkdtemp(prefix="seglab-bench-gpu-"))


class StepTimer:
    """Times ``steps`` training steps after ``warmup`` (a Lightning callback)."""

    def __init__(self, warmup: int, steps: int, cuda: bool) -> None:
        import lightning as L

        self.warmup, self.steps, self.cuda = warmup, steps, cuda
        self.start = self.seconds = None
        outer = self

        class _Callback(L.Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                if trainer.global_step == outer.warmup:
                    outer.sync()
                    outer.start = time.perf_counter()

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if trainer.global_step == outer.warmup + outer.steps:
                    outer.sync()
                    outer.seconds = time.perf_counter() - outer.start

        self.callback = _Callback()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def seglab_side(model: str, best: bool, args: argparse.Namespace) -> dict:
    """seglab's images/s, peak memory and first batch (for the plain side)."""
    from seglab.utils.instantiate import build_datamodule, build_task, build_trainer

    cuda = args.device == "cuda"
    total = args.warmup + args.steps
    overrides = [
        f"model={model}",
        "data=shapes",
        f"data.image_size={args.size}",
        f"data.batch_size={args.batch}",
        f"data.num_samples={{train: {args.batch * total}, val: {args.batch}, test: {args.batch}}}",
        "trainer=gpu" if cuda else "trainer=cpu",
        f"trainer.max_steps={total}",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_checkpointing=false",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "optimizer=sgd",
        "optimizer.lr=0.01",
        "scheduler=constant",
        "callbacks=none",
    ]
    if model == "deeplabv3":
        overrides += [
            "model.net.backbone=resnet50",
            "model.net.output_stride=8",
            "model.net.multi_grid=null",
            "model.net.extra_conv=true",
        ]
    else:
        overrides += [
            "model.net.min_size=${data.image_size}",
            "model.net.max_size=${data.image_size}",
        ]
    if best:
        overrides += ["trainer.precision=bf16-mixed", "model.channels_last=true"]
        overrides += ["model.compile=true" if cuda else "model.compile={backend: aot_eager}"]
    cfg = compose(overrides)
    datamodule = build_datamodule(cfg.data)
    task = build_task(cfg, datamodule)
    timer = StepTimer(args.warmup, args.steps, cuda)
    trainer = build_trainer(cfg, logger=False, callbacks=[timer.callback])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(task, datamodule=datamodule)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    datamodule.setup("fit")
    first = next(iter(datamodule.train_dataloader()))
    classes = int(cfg.data.num_classes)
    return {
        "ips": args.batch * args.steps / timer.seconds,
        "peak": peak,
        "batch": first,
        "classes": classes,
    }


def plain_side(model: str, best: bool, batch, classes: int, args: argparse.Namespace) -> dict:
    """A bare loop on torchvision's model, on one batch already on the device."""
    import torchvision

    device = torch.device(args.device)
    torch.manual_seed(0)
    if model == "deeplabv3":
        net = torchvision.models.segmentation.deeplabv3_resnet50(
            weights=None, weights_backbone=None, num_classes=classes
        )
        images = batch["image"].to(device)
        masks = batch["mask"].to(device)

        def loss_fn():
            return F.cross_entropy(net(images)["out"].float(), masks, ignore_index=255)
    else:
        net = torchvision.models.detection.maskrcnn_resnet50_fpn(
            weights=None,
            weights_backbone=None,
            num_classes=classes,
            min_size=args.size,
            max_size=args.size,
        )
        images = [image.to(device) for image in batch[0]]
        keys = ("boxes", "labels", "masks")
        targets = [{k: t[k].to(device) for k in keys} for t in batch[1]]

        def loss_fn():
            return sum(net(images, targets).values())

    net.to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    dtype = torch.bfloat16 if best else None

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    cuda = args.device == "cuda"
    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return {"ips": args.batch * args.steps / seconds, "peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="deeplabv3,maskrcnn")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="run on the CPU at a tiny size to check the script (no figures)",
    )
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print(
            "bench/gpu.py: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
            "nothing measured. Run it on a GPU; --smoke checks the script on the CPU."
        )
        return
    if args.smoke:
        args.device, args.size, args.batch, args.warmup, args.steps = "cpu", 64, 2, 1, 1
        torch.set_num_threads(2)
    else:
        args.device = "cuda"
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")  # as trainer=gpu sets for seglab's side
        print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    print(
        f"batch {args.batch} x {args.size}x{args.size}, {args.warmup} warm-up + {args.steps} "
        "timed steps per side"
    )
    ratios = {}
    for model in args.models.split(","):
        for setting, best in (("fp32", False), ("best", True)):
            torch._dynamo.reset()
            ours = seglab_side(model, best, args)
            plain = plain_side(model, best, ours["batch"], ours["classes"], args)
            ratio = ours["ips"] / plain["ips"]
            ratios[(model, setting)] = ratio
            print(
                f"{model:10s} {setting:4s}  seglab {ours['ips']:7.2f} img/s (peak "
                f"{ours['peak']:.2f} GiB)  plain {plain['ips']:7.2f} img/s (peak "
                f"{plain['peak']:.2f} GiB)  ratio {ratio:.3f}",
                flush=True,
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    for model in args.models.split(","):
        print(
            f"{model}: fp32 ratio {ratios[(model, 'fp32')]:.3f}, best-options ratio "
            f"{ratios[(model, 'best')]:.3f}"
        )
    name = "gpu_train_ratio_min_smoke" if args.smoke else "gpu_train_ratio_min"
    print(f"{name}: {min(r for (m, s), r in ratios.items() if s == 'best'):.3f}")


if __name__ == "__main__":
    main()
