"""Mask R-CNN training step: seglab's task through Lightning vs torchvision in a plain loop.

Setup: ResNet-50-FPN Mask R-CNN from scratch (no pretrained weights offline) on 4 classes
(background + the 3 ``data=shapes`` things), images resized to 256 (``min_size = max_size =
256``), every other setting the paper's / torchvision's default. One fixed batch of 2 generated
``data=shapes`` scenes at 256 x 256 with their instance targets. Both sides start from the same
weights (torchvision's ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)`` state dict
loaded into ``seglab.models.MaskRCNN``, which has the same modules), SGD (lr 0.002, momentum 0.9,
weight decay 1e-4), CPU, float32, and run the same number of steps, interleaved in rounds. The
Lightning side is ``InstanceSegmentationTask`` in ``Trainer.fit`` (crowd filtering, six logged
losses; no progress bar, checkpointing, logger or validation), timed from one
``on_train_batch_start`` to the next; the plain side from step start to step start. The figure is
the ratio of median step times (Lightning / plain); goal <= 1.05. On a shared machine, compare
the minima too: other processes only ever add time.
"""

from __future__ import annotations

import statistics
import time

import lightning as L
import torch
from torch.utils.data import DataLoader
from torchvision.models.detection import maskrcnn_resnet50_fpn

from seglab.data.base import InstanceDataset, list_collate
from seglab.data.shapes import ShapesGenerator, ShapesScenes
from seglab.models import MaskRCNN
from seglab.tasks.instance import InstanceSegmentationTask

CLASSES, SIZE, BATCH, STEPS, ROUNDS, WARMUP = 4, 256, 2, 3, 3, 1


def torchvision_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=CLASSES, min_size=SIZE, max_size=SIZE
    )


def seglab_net(state: dict[str, torch.Tensor]) -> MaskRCNN:
    net = MaskRCNN(num_classes=CLASSES, backbone="resnet50", min_size=SIZE, max_size=SIZE)
    net.load_state_dict(state)
    return net


def optimizer(params):
    return torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=1e-4)


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.stamps.append(time.perf_counter())

    def on_train_end(self, *args) -> None:
        self.stamps.append(time.perf_counter())


def fixed_loader(batch) -> DataLoader:
    """The same pre-made batch STEPS + WARMUP times (no collation, no workers)."""
    return DataLoader([batch] * (STEPS + WARMUP), batch_size=None)


def lightning_steps(batch, state) -> list[float]:
    task = InstanceSegmentationTask(net=seglab_net(state), num_classes=CLASSES, optimizer=optimizer)
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(task, train_dataloaders=fixed_loader(batch))
    gaps = [b - a for a, b in zip(timer.stamps, timer.stamps[1:])]
    return gaps[WARMUP:]


def plain_steps(batch) -> list[float]:
    net = torchvision_net().train()
    opt = optimizer([p for p in net.parameters() if p.requires_grad])
    times = []
    start = time.perf_counter()
    for step, (images, targets) in enumerate(fixed_loader(batch)):
        targets = [{k: t[k] for k in ("boxes", "labels", "masks")} for t in targets]
        losses = net(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        now = time.perf_counter()
        if step >= WARMUP:
            times.append(now - start)
        start = now
    return times


def main() -> None:
    print(__doc__.strip().splitlines()[0])
    generator = ShapesGenerator(image_size=SIZE)
    scenes = ShapesScenes(generator, num_samples=BATCH, seed=0, split="train")
    dataset = InstanceDataset(scenes, num_classes=CLASSES)
    batch = list_collate([dataset[i] for i in range(BATCH)])
    objects = [len(t["labels"]) for t in batch[1]]
    state = torchvision_net().state_dict()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}x3x{SIZE}x{SIZE} "
        f"({objects} objects), ResNet-50-FPN, {STEPS} timed steps x {ROUNDS} rounds per side"
    )
    lit, plain = [], []
    for _ in range(ROUNDS):
        plain += plain_steps(batch)
        lit += lightning_steps(batch, state)
    lit_s, plain_s = statistics.median(lit), statistics.median(plain)
    print(
        f"torchvision maskrcnn_resnet50_fpn, plain loop: median {plain_s:.3f} s/step, "
        f"min {min(plain):.3f} (of {len(plain)})"
    )
    print(
        f"seglab MaskRCNN + InstanceSegmentationTask + Lightning: median {lit_s:.3f} s/step, "
        f"min {min(lit):.3f} (of {len(lit)})"
    )
    print(f"maskrcnn_step_ratio_vs_torchvision: {lit_s / plain_s:.2f}")


if __name__ == "__main__":
    main()
