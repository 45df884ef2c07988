"""glibc malloc tuning (``malloc_tuning: true``, seglab/utils/memory.py) vs glibc's defaults.

Setup: the default job's training step as it was until 2026-11-30 (``model=unet_small``: padded
U-Net, 16 base channels, batch norm; 6 classes; batch 16 x 3 x 64 x 64, now 8; Adam, not fused;
cross-entropy; kept so that figures compare over time), CPU, float32, in a plain
loop. Each side runs in its own fresh process (malloc settings cannot be undone in a process),
alternating for ROUNDS rounds of STEPS timed steps after WARMUP steps. Prints the median step
time and the minor page faults per step of each side, and the ratio of the median faults
(default / tuned; glibc's defaults give thousands of faults a step here, tuning next to none);
the headline is the ratio of the median step times (default / tuned), above 1 when tuning helps.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time

ROUNDS, STEPS, WARMUP = 3, 30, 5


def child(tuned: bool) -> None:
    import torch
    import torch.nn.functional as F

    from seglab.models import UNet
    from seglab.utils.memory import tune_malloc

    if tuned and not tune_malloc():
        raise SystemExit("tune_malloc() did not apply on this system")
    torch.manual_seed(0)
    net = UNet(in_channels=3, num_classes=6, base_channels=16, padding=True, batch_norm=True)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    image, mask = torch.randn(16, 3, 64, 64), torch.randint(0, 6, (16, 64, 64))
    times, faults = [], []
    for step in range(WARMUP + STEPS):
        start, faults_before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        loss = F.cross_entropy(net(image), mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= WARMUP:
            times.append(time.perf_counter() - start)
            faults.append(
                resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before.ru_minflt
            )
    print(json.dumps({"times": times, "faults": faults}))


def run_side(tuned: bool) -> dict[str, list[float]]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", "tuned" if tuned else "default"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import torch

    print(__doc__.strip().splitlines()[0])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 16x3x64x64, "
        f"{ROUNDS} rounds x {STEPS} steps per side, fresh process per round"
    )
    sides: dict[str, dict[str, list[float]]] = {
        "default": {"times": [], "faults": []},
        "tuned": {"times": [], "faults": []},
    }
    for _ in range(ROUNDS):
        for name in ("default", "tuned"):
            result = run_side(name == "tuned")
            for key in ("times", "faults"):
                sides[name][key] += result[key]
    medians = {name: statistics.median(side["times"]) for name, side in sides.items()}
    faults = {name: statistics.median(side["faults"]) for name, side in sides.items()}
    for name in sides:
        print(
            f"{name}: {medians[name] * 1e3:.1f} ms a step, "
            f"{faults[name]:.0f} minor page faults a step"
        )
    # max(..., 1): a tuned step may fault no page at all
    print(f"page_faults_ratio: {faults['default'] / max(faults['tuned'], 1):.0f}")
    print(f"malloc_tuning_speedup: {medians['default'] / medians['tuned']:.2f}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2] == "tuned")
    else:
        main()
