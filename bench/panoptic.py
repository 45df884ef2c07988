"""Panoptic FPN: the cost of the merge and of PQ in a validation epoch, and the cost of the
semantic branch in a training step.

Setup: the settings of ``experiment=panoptic_fpn_shapes_cpu`` (ResNet-18-FPN from scratch, 64 x
64 ``data=shapes`` scenes resized to 128, 3 things + 3 stuff), CPU, float32, the machine's torch
threads. Weights: a fixed seed, untrained, with the merge's ``score_threshold`` at 0 so that every
detection (up to ``box_detections_per_img`` = 20 per image) goes through the merge, a worst case
for its cost (a trained net keeps fewer).

1. Validation epoch: ``PanopticSegmentationTask.eval_step`` over the 64 val scenes (batches of
   16: eval-mode forward with the merge, the validation-loss pass, mask AP, PQ and semantic
   metric updates) and ``epoch_metrics``. Inside it, the time spent in ``panoptic_merge`` and in
   ``PanopticQuality.update`` / ``compute`` is summed. Figure: their share of the epoch (goal
   < 5%), the median of 3 epochs.
2. Training step: ``PanopticFPN`` vs ``MaskRCNN`` with the same settings and the same weights
   for the shared parts, on the same fixed batch of 8 scenes (instance targets, plus the
   semantic target for Panoptic FPN), SGD, forward + backward + step, interleaved in rounds.
   Figure: ratio of median step times (goal <= 1.15).

Headline last: ``train_step_ratio``.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch

import seglab.models.panoptic_fpn as panoptic_fpn_module
from seglab.metrics.panoptic_quality import PanopticQuality
from seglab.models import MaskRCNN
from seglab.utils.config import register_resolvers
from seglab.utils.instantiate import build_datamodule, build_task

EPOCHS, STEPS, ROUNDS, WARMUP = 3, 4, 3, 1


def compose():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from seglab.utils.config import project_root

    register_resolvers()
    with initialize_config_dir(version_base="1.3", config_dir=str(project_root() / "conf")):
        return hydra_compose(
            "train",
            overrides=["experiment=panoptic_fpn_shapes_cpu", "model.net.score_threshold=0.0"],
        )


class Clock:
    """Seconds spent inside wrapped callables."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


@contextmanager
def patched(obj, name, replacement):
    original = getattr(obj, name)
    setattr(obj, name, replacement)
    try:
        yield
    finally:
        setattr(obj, name, original)


def validation_share(cfg) -> tuple[float, float]:
    """(median share of merge + PQ in a validation epoch, median epoch seconds)."""
    torch.manual_seed(0)
    datamodule = build_datamodule(cfg.data)
    task = build_task(cfg, datamodule).eval()
    batches = list(datamodule.loader("val"))
    shares, epochs = [], []
    for _ in range(EPOCHS):
        clock = Clock()
        merge = clock.wrap(panoptic_fpn_module.panoptic_merge)
        update = clock.wrap(PanopticQuality.update)
        compute = clock.wrap(PanopticQuality.compute)
        with (
            torch.no_grad(),
            patched(panoptic_fpn_module, "panoptic_merge", merge),
            patched(PanopticQuality, "update", update),
            patched(PanopticQuality, "compute", compute),
        ):
            start = time.perf_counter()
            for batch in batches:
                task.eval_step(batch, "val")
            task.epoch_metrics("val")
            epoch = time.perf_counter() - start
        for module in task.stage_metrics["val"].values():
            for metric in module.modules():
                if hasattr(metric, "reset") and hasattr(metric, "compute"):
                    metric.reset()
        shares.append(clock.seconds / epoch)
        epochs.append(epoch)
    return statistics.median(shares), statistics.median(epochs)


def train_step_ratio(cfg) -> tuple[float, float, float]:
    """(median Panoptic FPN step / median Mask R-CNN step, and the two medians in seconds)."""
    torch.manual_seed(0)
    datamodule = build_datamodule(cfg.data)
    task = build_task(cfg, datamodule)
    panoptic = task.net.train()
    images, targets = next(iter(datamodule.train_dataloader()))
    net_targets = task.net_targets(targets)
    detector_kwargs = {
        k: v
        for k, v in cfg.model.net.items()
        if k not in ("_target_", "num_things", "num_stuff", "ignore_index", "semantic_channels",
                     "semantic_norm_groups", "score_threshold", "overlap_threshold",
                     "stuff_area", "mask_threshold")
    }  # fmt: skip
    maskrcnn = MaskRCNN(num_classes=panoptic.num_things + 1, **detector_kwargs).train()
    shared = {k: v for k, v in panoptic.state_dict().items() if not k.startswith("semantic_head")}
    maskrcnn.load_state_dict(shared)
    instance_targets = [{k: t[k] for k in ("boxes", "labels", "masks")} for t in net_targets]

    def steps(net, targets_) -> list[float]:
        optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
        times = []
        for _ in range(STEPS):
            start = time.perf_counter()
            losses = net(list(images), targets_)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        return times

    steps(panoptic, net_targets)  # warm-up
    steps(maskrcnn, instance_targets)
    pan, det = [], []
    for _ in range(ROUNDS):
        pan += steps(panoptic, net_targets)
        det += steps(maskrcnn, instance_targets)
    return (
        statistics.median(pan) / statistics.median(det),
        statistics.median(pan),
        statistics.median(det),
    )


def main() -> None:
    cfg = compose()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    share, epoch = validation_share(cfg)
    print(f"validation epoch (64 scenes, merge of every detection): {epoch:.2f} s median")
    print(f"merge + PQ share of the validation epoch: {100 * share:.2f}% (goal < 5%)")
    ratio, pan, det = train_step_ratio(cfg)
    print(f"training step, batch of 8: Panoptic FPN {pan:.3f} s, Mask R-CNN {det:.3f} s (medians)")
    print(f"pq_merge_share: {share:.4f}")
    print(f"train_step_ratio: {ratio:.3f}")


if __name__ == "__main__":
    main()
