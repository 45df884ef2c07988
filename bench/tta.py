"""Test-time augmentation on CamVid: test mIoU of one checkpoint without and with TTA.

Setup: a checkpoint of ``experiment=unet_camvid_cpu`` (padded U-Net, 16 base channels, batch
norm; median-frequency class balancing, flips, Adam with the poly schedule), the best on CamVid
val. ``--ckpt PATH`` scores one you have; without it one is trained here first, into a temporary
folder, with the experiment as it is (9 epochs on the 367 train frames, seed 42, 15 to 38 minutes
on 2 CPU cores), or less with ``--epochs`` / ``--train-batches`` / ``--val-batches`` (the printed
budget says which). Both scores come from ``seglab.eval.evaluate`` on the shared sample's test
frames (``data=camvid data.test_list=test_subset.txt``: 59 frames of 480x360, 11 classes,
Unlabelled ignored; ``--test-batches`` takes fewer), batches of 4, CPU, float32, the machine's
torch threads: once with whole-image inference, once with ``inference.tta={flips: [h], scales:
[0.75, 1.0, 1.25]}`` (6 views, logits averaged). The checkpoint is chosen on val and scored on
test (the held-out protocol). Prints mIoU, pixel accuracy and the evaluation's wall time for
both, and last the mIoU gain of TTA.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import seglab  # noqa: F401  (registers the config resolvers)
from seglab.eval import evaluate
from seglab.train import train
from seglab.utils.config import compose_config

TTA = ["inference.tta.flips=[h]", "inference.tta.scales=[0.75,1.0,1.25]"]
QUIET = [
    "++trainer.enable_progress_bar=false",
    "callbacks.rich_progress_bar=null",
    "callbacks.model_summary=null",
    "callbacks.visuals=null",
]


def train_checkpoint(args: argparse.Namespace, folder: Path) -> tuple[Path, str]:
    """Train ``experiment=unet_camvid_cpu`` within the budget of ``args``: the best checkpoint
    on val and the budget in words."""
    overrides = ["experiment=unet_camvid_cpu", "test=false", "validate=false", "~logger", *QUIET]
    budget = ["9 epochs" if args.epochs is None else f"{args.epochs} epochs"]
    if args.epochs is not None:
        overrides.append(f"trainer.max_epochs={args.epochs}")
    if args.train_batches is not None:
        overrides.append(f"++trainer.limit_train_batches={args.train_batches}")
        budget.append(f"{args.train_batches} train batches of 4 each")
    if args.val_batches is not None:
        overrides.append(f"++trainer.limit_val_batches={args.val_batches}")
        budget.append(f"selected on {args.val_batches} val batches of 4")
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # Lightning's tables
        metrics, _ = train(compose_config("train", overrides, folder))
    words = f"experiment=unet_camvid_cpu, {', '.join(budget)}, {time.perf_counter() - start:.0f} s"
    return Path(metrics["best_checkpoint"]), words


def score(ckpt: Path, tta: list[str], args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Test mIoU, pixel accuracy, frames and seconds of ``ckpt`` with ``tta`` overrides."""
    overrides = [
        f"ckpt_path={ckpt}",
        "split=test",
        "data=camvid",
        "data.test_list=test_subset.txt",
        "data.eval_batch_size=4",
        "trainer.accelerator=cpu",
        "++trainer.enable_progress_bar=false",
        *tta,
    ]
    if args.test_batches is not None:
        overrides.append(f"trainer.limit_test_batches={args.test_batches}")
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        metrics, objects = evaluate(compose_config("eval", overrides, folder))
    frames = len(objects["datamodule"].dataset("test"))
    if args.test_batches is not None:
        frames = min(frames, 4 * args.test_batches)
    return {
        "miou": metrics["test"]["test/miou"],
        "pixel_acc": metrics["test"]["test/pixel_acc"],
        "frames": frames,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ckpt", type=Path, help="a CamVid checkpoint (default: train one)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the experiment's 9)")
    parser.add_argument("--train-batches", type=int, help="train batches per epoch (default: all)")
    parser.add_argument("--val-batches", type=int, help="val batches per epoch (default: all)")
    parser.add_argument("--test-batches", type=int, help="test batches scored (default: all)")
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")

    with tempfile.TemporaryDirectory() as tmp:
        if args.ckpt is None:
            ckpt, trained = train_checkpoint(args, Path(tmp) / "train")
            print(f"checkpoint: trained here ({trained}), the best on val", flush=True)
        else:
            ckpt = args.ckpt
            print(f"checkpoint: {ckpt}", flush=True)
        plain = score(ckpt, [], args, Path(tmp) / "plain")
        augmented = score(ckpt, TTA, args, Path(tmp) / "tta")
    print(f"CamVid sample test split, {plain['frames']} frames of 480x360, CPU")
    print(f"{'inference':<36} {'mIoU':>7} {'pixel acc':>10} {'eval s':>8}")
    rows = {"whole image": plain, "TTA: flips [h], scales 0.75/1.0/1.25": augmented}
    for name, row in rows.items():
        print(f"{name:<36} {row['miou']:>7.4f} {row['pixel_acc']:>10.4f} {row['seconds']:>8.1f}")
    print(f"camvid_test_miou_gain_tta: {augmented['miou'] - plain['miou']:+.4f}")


if __name__ == "__main__":
    main()
