"""Lightning overhead: seglab's U-Net training step through Lightning vs a plain PyTorch loop.

Setup: the main job's network (``model=unet_small``: padded U-Net, 16 base channels, depth 4,
batch norm) on 6 classes, one fixed batch of 16 x 3 x 64 x 64 (the default ``data=shapes``
batch), Adam (lr 3e-3), CPU, float32. Both sides run the same number of steps on the same
batch from the same DataLoader, interleaved in rounds, timed step start to step start; the Lightning side is ``SemanticSegmentationTask`` in
``Trainer.fit`` (its loss, logging and per-step training metrics included; no progress bar,
checkpointing or logger), timed from one ``on_train_batch_start`` to the next. The figure is the
ratio of median step times (Lightning / plain); goal <= 1.05.
"""

from __future__ import annotations

import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from seglab.models import UNet
from seglab.tasks.semantic import SemanticSegmentationTask

BATCH, CLASSES, SIZE, STEPS, ROUNDS, WARMUP = 16, 6, 64, 30, 5, 3


def make_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(in_channels=3, num_classes=CLASSES, base_channels=16, padding=True, batch_norm=True)


def optimizer(params):
    return torch.optim.Adam(params, lr=3e-3)


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.stamps.append(time.perf_counter())

    def on_train_end(self, *args) -> None:
        self.stamps.append(time.perf_counter())


def fixed_loader(batch: dict[str, torch.Tensor]) -> DataLoader:
    """The same pre-made batch STEPS + WARMUP times (no collation, no workers)."""
    return DataLoader([batch] * (STEPS + WARMUP), batch_size=None)


def lightning_steps(batch: dict[str, torch.Tensor]) -> list[float]:
    task = SemanticSegmentationTask(net=make_net(), num_classes=CLASSES, optimizer=optimizer)
    loader = fixed_loader(batch)
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
    trainer.fit(task, train_dataloaders=loader)
    gaps = [b - a for a, b in zip(timer.stamps, timer.stamps[1:])]
    return gaps[WARMUP:]


def plain_steps(batch: dict[str, torch.Tensor]) -> list[float]:
    net = make_net().train()
    opt = optimizer(net.parameters())
    times = []
    start = time.perf_counter()
    for step, item in enumerate(fixed_loader(batch)):
        logits = net(item["image"])
        loss = F.cross_entropy(logits, item["mask"], ignore_index=255)
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
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}x3x{SIZE}x{SIZE}, "
        f"{STEPS} timed steps x {ROUNDS} rounds per side"
    )
    gen = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randn(BATCH, 3, SIZE, SIZE, generator=gen),
        "mask": torch.randint(0, CLASSES, (BATCH, SIZE, SIZE), generator=gen),
    }
    lit, plain = [], []
    for _ in range(ROUNDS):
        plain += plain_steps(batch)
        lit += lightning_steps(batch)
    lit_ms, plain_ms = statistics.median(lit) * 1e3, statistics.median(plain) * 1e3
    print(f"plain PyTorch step: {plain_ms:.1f} ms (median of {len(plain)})")
    print(f"seglab + Lightning step: {lit_ms:.1f} ms (median of {len(lit)})")
    print(f"lightning_overhead_ratio: {lit_ms / plain_ms:.3f}")


if __name__ == "__main__":
    main()
