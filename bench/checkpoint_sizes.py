"""Checkpoint sizes: what ``checkpoints/`` of a run holds per model on ``data=shapes``.

Setup: every model config (``conf/model/*.yaml``) with ``data=shapes`` and its default settings
(classes, optimizer Adam, scheduler, callbacks), trained for one step, then one validation
batch, with ``callbacks.model_checkpoint.save_weights_only=true``, so that the run writes both
kinds: the best ``epoch_000.ckpt`` (weights, hyper-parameters and config only) and
``last.ckpt`` (full: weights, Adam's two moments per weight, loops, callbacks, the embedded
config). One step is enough: Adam's moments exist after the first step and no entry grows with
training. Sizes do not depend on the batch or image size, so the run uses 4 samples of 64 px
(the default); the detectors get ``min_size=max_size=64`` (their default resizes to 800 px,
which costs minutes and gigabytes on a CPU for the same file sizes) and the unpadded ``unet``
188 px (64 px leaves it an odd feature map). CPU, float32, no logger; each model runs in a
process of its own.

Prints one row per model (MB = 10^6 bytes): full ``last.ckpt``, weights-only best, and their
ratio; with the default ``save_weights_only=false`` the best is a full checkpoint too, and a
hard link of ``last.ckpt`` when it is the last epoch's (no extra disk). The headline figure,
printed last, is the largest full checkpoint.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import seglab  # noqa: F401  (registers the config resolvers)
from seglab.train import train
from seglab.utils.config import compose_config

CONF = Path(__file__).resolve().parents[1] / "conf"
DETECTORS = ("maskrcnn", "panoptic_fpn")
SMALL = [
    "data=shapes",
    "data.num_samples={train: 4, val: 4, test: 4}",
    "data.batch_size=4",
    "data.eval_batch_size=4",
    "malloc_tuning=false",
    "trainer.accelerator=cpu",
    "++trainer.enable_model_summary=false",
    "trainer.max_epochs=1",
    "++trainer.enable_progress_bar=false",
    "++trainer.limit_train_batches=1",
    "++trainer.limit_val_batches=1",
    "~logger",
    "validate=false",
    "callbacks.visuals=null",
    "callbacks.rich_progress_bar=null",
    "callbacks.model_summary=null",
    "callbacks.lr_monitor=null",
    "callbacks.model_checkpoint.save_weights_only=true",
]


def sizes(model: str, folder: Path) -> tuple[int, int]:
    """Bytes of the full ``last.ckpt`` and of the weights-only best of one run of ``model``."""
    overrides = [f"model={model}", *SMALL]
    if model in DETECTORS:
        overrides += ["model.net.min_size=64", "model.net.max_size=64"]
    if model == "unet":  # unpadded: 64 px leaves an odd feature map before the 4th pooling
        overrides += ["data.image_size=188"]
    metrics, _ = train(compose_config("train", overrides, folder))
    best = Path(metrics["best_checkpoint"])
    return (folder / "checkpoints" / "last.ckpt").stat().st_size, best.stat().st_size


def main() -> None:
    if sys.argv[1:2] == ["--one"]:  # the child: one model, in a process of its own
        logging.disable(logging.WARNING)
        warnings.filterwarnings("ignore")
        with tempfile.TemporaryDirectory() as tmp:
            print(*sizes(sys.argv[2], Path(tmp)))
        return
    models = sys.argv[1:] or sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
    print(f"{'model':<14} {'last.ckpt (full)':>17} {'best, weights only':>19} {'ratio':>6}")
    rows = []
    for model in models:
        child = subprocess.run(
            [sys.executable, __file__, "--one", model], capture_output=True, text=True, check=True
        )
        full, weights = map(int, child.stdout.split()[-2:])
        rows.append((model, full))
        print(
            f"{model:<14} {full / 1e6:>14.1f} MB {weights / 1e6:>16.1f} MB {full / weights:>6.2f}",
            flush=True,
        )
    model, full = max(rows, key=lambda r: r[1])
    print(f"largest full checkpoint ({model}, MB): {full / 1e6:.1f}")


if __name__ == "__main__":
    main()
