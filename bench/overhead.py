"""Lightning overhead: seglab's U-Net training step through Lightning vs a plain PyTorch loop.

Setup: the main job's network (``model=unet_small``: padded U-Net, 16 base channels, depth 4,
batch norm) on 6 classes, one fixed batch of 16 x 3 x 64 x 64 (``data=shapes``'s default batch
until 2026-11-30, now 8; kept so that figures compare over time), Adam (lr 3e-3, not fused), CPU,
float32.

The Lightning side is ``SemanticSegmentationTask`` in ``Trainer.fit`` (its loss, ``self.log``
and per-step training metrics included; no progress bar, checkpointing or logger), one step
timed from one ``on_train_batch_start`` to the next. The plain side is an identical copy of the
network with its own Adam: forward, ``F.cross_entropy``, ``zero_grad``, ``backward``, ``step``.

The two sides alternate in blocks inside one process: after every BLOCK Lightning steps a
callback runs BLOCK plain steps, so both see the same machine state (heap, caches, clock) and
slow drift of the machine cancels. The first step of each block on either side is dropped
(caches cold after the switch), and so is the first block (warm-up). The figure is the ratio of median step times
(Lightning / plain); goal <= 1.05. The spread of the per-block ratios is printed too.
(An earlier version ran the two sides in separate rounds of 30 steps with a fresh Trainer each;
it printed 1.03 to 1.07 from run to run on this 2-core machine, dominated by drift between rounds.)
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

BATCH, CLASSES, SIZE, BLOCK, BLOCKS = 16, 6, 64, 10, 20


def make_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(in_channels=3, num_classes=CLASSES, base_channels=16, padding=True, batch_norm=True)


def optimizer(params):
    return torch.optim.Adam(params, lr=3e-3)


class Alternate(L.Callback):
    """Times Lightning's steps and, after every BLOCK of them, runs and times BLOCK plain steps."""

    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.batch = batch
        self.net = make_net().train()
        self.opt = optimizer(self.net.parameters())
        self.last_start: float | None = None
        self.lightning: list[list[float]] = [[]]
        self.plain: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        # Keep the gap that ended this step's predecessor unless it spans a plain block or is
        # the first step after one.
        if self.last_start is not None and batch_idx % BLOCK not in (0, 1):
            self.lightning[-1].append(now - self.last_start)
        self.last_start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx % BLOCK != BLOCK - 1:
            return
        times = []
        start = time.perf_counter()
        for step in range(BLOCK):
            logits = self.net(self.batch["image"])
            loss = F.cross_entropy(logits, self.batch["mask"], ignore_index=255)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            now = time.perf_counter()
            if step > 0:
                times.append(now - start)
            start = now
        self.plain.append(times)
        self.lightning.append([])


def main() -> None:
    print(__doc__.strip().splitlines()[0])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}x3x{SIZE}x{SIZE}, "
        f"{BLOCKS} blocks of {BLOCK} steps per side"
    )
    gen = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randn(BATCH, 3, SIZE, SIZE, generator=gen),
        "mask": torch.randint(0, CLASSES, (BATCH, SIZE, SIZE), generator=gen),
    }
    alternate = Alternate(batch)
    task = SemanticSegmentationTask(net=make_net(), num_classes=CLASSES, optimizer=optimizer)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[alternate],
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    # The same pre-made batch every step (no collation, no workers), +1 so the last block's
    # final Lightning step has a successor to time it.
    loader = DataLoader([batch] * (BLOCK * (BLOCKS + 1) + 1), batch_size=None)
    trainer.fit(task, train_dataloaders=loader)
    # Block 0 on either side is warm-up (first steps of the fit, first plain steps).
    pairs = list(zip(alternate.lightning, alternate.plain))[1:]
    lit = [t for lb, _ in pairs for t in lb]
    plain = [t for _, pb in pairs for t in pb]
    per_block = [statistics.median(lb) / statistics.median(pb) for lb, pb in pairs]
    q1, q2, q3 = statistics.quantiles(per_block, n=4)
    lit_ms, plain_ms = statistics.median(lit) * 1e3, statistics.median(plain) * 1e3
    print(f"plain PyTorch step: {plain_ms:.1f} ms (median of {len(plain)})")
    print(f"seglab + Lightning step: {lit_ms:.1f} ms (median of {len(lit)})")
    print(f"per-block ratio quartiles: {q1:.3f} / {q2:.3f} / {q3:.3f} ({len(per_block)} blocks)")
    print(f"lightning_overhead_ratio: {lit_ms / plain_ms:.3f}")


if __name__ == "__main__":
    main()
