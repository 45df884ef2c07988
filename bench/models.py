"""Benchmark seglab's semantic networks on the CPU (prints figures; not a timed test).

Run ``python bench/models.py``. Setup: batch 2 x 3 x 256 x 256, K = 21, float32, backbone
weights off, ``--threads`` torch threads (1 by default). Times are the process CPU time
(``time.process_time``) of one call, median of ``--reps`` after one warm-up step; on a shared
machine the CPU time of a single-threaded process moves by a few percent where its wall time
moves by several times, so it is the figure compared. Wall times (``time.perf_counter``) are
printed beside it. With more threads, CPU time sums over threads: read the wall time then.

For each semantic model: parameters; forward (eval mode, ``torch.no_grad``); forward+backward
(train mode, cross-entropy plus 0.4 x the auxiliary loss where the net has one); peak memory of
the forward+backward warm-up step. Each model runs in its own forked process, so that peak is
its own: the peak resident set size (``VmHWM`` of ``/proc/self/status``, reset through
``/proc/self/clear_refs`` once the model is built) and its increase over the resident set size
of the built model, i.e. activations, gradients and workspace.

Then, in one process with repetitions interleaved (alternating which goes first), seglab's
DeepLabV3 (ResNet-50, output stride 8, no multi-grid, ``extra_conv=True``, ASPP dropout 0.5: the
same network, loaded with the same weights) against torchvision's ``deeplabv3_resnet50(
weights=None, weights_backbone=None, num_classes=21, aux_loss=False)``. A training step is
forward, cross-entropy, backward and an SGD step. The last line is the ratio of the median
CPU times of the two steps.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.models.segmentation import deeplabv3_resnet50

from seglab.models import FCN, DeepLabV3, DeepLabV3Plus, PSPNet, SegNet, UNet

BATCH, CHANNELS, SIZE, K = 2, 3, 256, 21

# yaml token -> (what runs, builder). The paper's unpadded U-Net has no valid 256x256 input.
MODELS: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "unet": ("padded, 64 base ch", lambda: UNet(in_channels=3, num_classes=K, padding=True)),
    "fcn32s": ("vgg16", lambda: FCN(num_classes=K, variant="32s")),
    "fcn16s": ("vgg16", lambda: FCN(num_classes=K, variant="16s")),
    "fcn8s": ("vgg16", lambda: FCN(num_classes=K, variant="8s")),
    "segnet": ("vgg16_bn", lambda: SegNet(num_classes=K)),
    "pspnet": ("resnet50, os 8, aux", lambda: PSPNet(num_classes=K)),
    "deeplabv3": ("resnet101, os 16", lambda: DeepLabV3(num_classes=K)),
    "deeplabv3plus": ("resnet101, os 16", lambda: DeepLabV3Plus(num_classes=K)),
}

Timing = tuple[float, float]  # (cpu seconds, wall seconds)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=gen)
    y = torch.randint(0, K, (BATCH, SIZE, SIZE), generator=gen)
    return x, y


def _loss(out: torch.Tensor | dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    if isinstance(out, dict):
        loss = F.cross_entropy(out["out"], y)
        return loss + 0.4 * F.cross_entropy(out["aux"], y) if "aux" in out else loss
    return F.cross_entropy(out, y)


def _timed(fn: Callable[[], object]) -> Timing:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def _median(timings: list[Timing]) -> Timing:
    return statistics.median(t[0] for t in timings), statistics.median(t[1] for t in timings)


def _measure(name: str, reps: int, threads: int, conn: Connection) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = MODELS[name][1]()
    params = sum(p.numel() for p in net.parameters())
    x, y = _inputs()

    def forward() -> None:
        with torch.no_grad():
            net(x)

    def train_step() -> None:
        net.zero_grad(set_to_none=True)
        _loss(net(x), y).backward()

    net.train()
    rss = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    train_step()  # warm-up, and the step whose peak memory is reported
    peak = _status_kib("VmHWM")
    step = _median([_timed(train_step) for _ in range(reps)])
    net.zero_grad(set_to_none=True)
    net.eval()
    fwd = _median([_timed(forward) for _ in range(reps)])
    conn.send((params, fwd, step, peak, peak - rss))
    conn.close()


def _compare(reps: int, threads: int, conn: Connection) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ref = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=K, aux_loss=False)
    ours = DeepLabV3(
        num_classes=K,
        backbone="resnet50",
        output_stride=8,
        multi_grid=None,
        extra_conv=True,
        aspp_dropout=0.5,
    )
    ours.load_state_dict(ref.state_dict())
    x, y = _inputs()
    with torch.no_grad():
        diff = (ours.eval()(x[:1]) - ref.eval()(x[:1])["out"]).abs().max().item()
    steps = {}
    for label, net in (("seglab", ours.train()), ("torchvision", ref.train())):
        opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)

        def step(net: nn.Module = net, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            _loss(net(x), y).backward()
            opt.step()

        steps[label] = step
        step()
    times: dict[str, list[Timing]] = {"seglab": [], "torchvision": []}
    for r in range(reps):
        order = ("seglab", "torchvision") if r % 2 == 0 else ("torchvision", "seglab")
        for label in order:
            times[label].append(_timed(steps[label]))
    conn.send((diff, times))
    conn.close()


def _in_child(target: Callable[..., None], *args: object) -> object:
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(*args, child))
    proc.start()
    child.close()
    result = parent.recv()
    proc.join()
    if proc.exitcode:
        raise RuntimeError(f"{target.__name__}{args} exited with {proc.exitcode}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2, help="timed repetitions per model")
    parser.add_argument("--compare-reps", type=int, default=6, help="interleaved steps per net")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    print(
        f"setup: torch {torch.__version__}, torchvision {torchvision.__version__}, {cpu} "
        f"({len(os.sched_getaffinity(0))} cores visible), {args.threads} torch "
        f"thread(s); input {BATCH}x{CHANNELS}x{SIZE}x{SIZE} float32, K={K}, backbone weights off"
    )
    print(
        f"times: process CPU seconds (wall seconds), median of {args.reps} after 1 warm-up; "
        "fwd = eval + no_grad; fwd+bwd = train mode, CE (+0.4 aux), backward; memory: peak RSS "
        "(VmHWM after clear_refs) during the fwd+bwd warm-up in a forked process per model, and "
        "its increase over the built model"
    )
    print(
        f"{'model':36s} {'params':>12s} {'fwd cpu (wall)':>15s} {'fwd+bwd cpu (wall)':>19s} "
        f"{'peak MiB':>8s} {'+MiB':>6s}"
    )
    for name in args.models:
        params, fwd, step, peak, delta = _in_child(_measure, name, args.reps, args.threads)
        label = f"{name} ({MODELS[name][0]})"
        print(
            f"{label:36s} {params:12,d} {fwd[0]:7.2f} ({fwd[1]:5.2f}) {step[0]:11.2f} "
            f"({step[1]:5.2f}) {peak / 1024:8.0f} {delta / 1024:6.0f}"
        )

    diff, times = _in_child(_compare, args.compare_reps, args.threads)
    print(
        "deeplabv3-resnet50 os8 training step (forward, CE, backward, SGD step), seglab vs "
        f"torchvision, same weights (eval outputs differ by at most {diff:.1e}), "
        f"{args.compare_reps} interleaved steps each after 1 warm-up, cpu s (wall s):"
    )
    for label, ts in times.items():
        med = _median(ts)
        print(
            f"  {label:12s} {' '.join(f'{c:.2f} ({w:.2f})' for c, w in ts)}"
            f"  median {med[0]:.2f} ({med[1]:.2f})"
        )
    ours, ref = _median(times["seglab"]), _median(times["torchvision"])
    print(f"  wall-time ratio of the medians: {ours[1] / ref[1]:.2f}")
    print(f"deeplabv3_step_ratio_vs_torchvision: {ours[0] / ref[0]:.2f}")


if __name__ == "__main__":
    main()
