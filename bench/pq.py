"""Benchmark: seglab PanopticQuality against torchmetrics' PanopticQuality, same inputs, one run.

Prints the setup, images per second of ``update`` + ``compute`` for both metrics on identical
generated 512x512 panoptic maps (~30 segments per image, no void, no crowd, where the two
definitions agree), checks that PQ, SQ and RQ agree, and ends with the speed-up as
``pq_speedup_vs_torchmetrics: <x>x``.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torchmetrics
from torchmetrics.detection import PanopticQuality as TorchmetricsPQ

from seglab.metrics import PanopticQuality

SIZE = 512
CELLS = 38  # Voronoi cells; merging stuff cells leaves about 30 segments
IMAGES = 32
BATCH = 8
REPEATS = 5
THINGS = list(range(1, 81))
STUFFS = list(range(81, 134))
SEED = 0


def voronoi(seeds: torch.Tensor) -> torch.Tensor:
    """Nearest-seed label map (SIZE, SIZE) long for seeds (S, 2) in pixel coordinates."""
    grid = torch.arange(SIZE, dtype=torch.float32)
    dy = (grid.view(1, SIZE, 1) - seeds[:, 0].view(-1, 1, 1)) ** 2
    dx = (grid.view(1, 1, SIZE) - seeds[:, 1].view(-1, 1, 1)) ** 2
    return (dy + dx).argmin(0)


def scene_pair(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Target and prediction (SIZE, SIZE, 2) of one generated scene.

    The target has CELLS Voronoi cells, 60% things (one instance each) and 40% stuff drawn
    from 8 stuff categories (cells of one stuff category merge into one segment). The prediction
    moves the seeds by up to 12 px and gives 15% of the cells a random category.
    """
    seeds = torch.rand(CELLS, 2, generator=gen) * SIZE
    is_thing = torch.rand(CELLS, generator=gen) < 0.6
    thing_cat = torch.tensor(THINGS)[torch.randint(len(THINGS), (CELLS,), generator=gen)]
    stuff_cat = torch.tensor(STUFFS[:8])[torch.randint(8, (CELLS,), generator=gen)]
    category = torch.where(is_thing, thing_cat, stuff_cat)
    instance = torch.where(is_thing, torch.arange(1, CELLS + 1), 0)
    cells = voronoi(seeds)
    target = torch.stack([category[cells], instance[cells]], dim=-1)

    moved = seeds + (torch.rand(CELLS, 2, generator=gen) - 0.5) * 24
    relabel = torch.rand(CELLS, generator=gen) < 0.15
    all_cats = torch.tensor(THINGS + STUFFS)
    pred_category = torch.where(
        relabel, all_cats[torch.randint(len(all_cats), (CELLS,), generator=gen)], category
    )
    cells = voronoi(moved)
    pred = torch.stack([pred_category[cells], instance[cells]], dim=-1)
    return pred, target


def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """Seconds one call of ``fn(*args)`` takes, and what it returns."""
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def main() -> None:
    print("PanopticQuality benchmark: seglab vs torchmetrics, update + compute, same inputs")
    gen = torch.Generator().manual_seed(SEED)
    scenes = [scene_pair(gen) for _ in range(IMAGES)]
    batches = [
        (
            torch.stack([p for p, _ in scenes[i : i + BATCH]]),
            torch.stack([t for _, t in scenes[i : i + BATCH]]),
        )
        for i in range(0, IMAGES, BATCH)
    ]
    segments = [len(torch.unique(t.reshape(-1, 2), dim=0)) for _, t in scenes]
    print(
        f"setup: {IMAGES} generated {SIZE}x{SIZE} maps, {statistics.mean(segments):.1f} target "
        f"segments/image (min {min(segments)}, max {max(segments)}), no void/crowd, batch {BATCH}, "
        f"{len(THINGS)} things + {len(STUFFS)} stuff categories, seed {SEED}"
    )
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"load average {load}; python {platform.python_version()}, torch {torch.__version__}, "
        f"torchmetrics {torchmetrics.__version__}"
    )
    print(
        f"timing: update of every batch + compute; seglab median of {REPEATS} runs, torchmetrics "
        "1 run (it is slow), interleaved batch by batch"
    )

    # Batch by batch, torchmetrics and then each of the REPEATS seglab metrics see the same
    # batch, so both are timed in the same few seconds of a machine whose load may drift.
    PanopticQuality(things=THINGS, stuffs=STUFFS).update(*batches[0])
    reference = TorchmetricsPQ(things=set(THINGS), stuffs=set(STUFFS), return_sq_and_rq=True)
    ours = [PanopticQuality(things=THINGS, stuffs=STUFFS) for _ in range(REPEATS)]
    ref_seconds = 0.0
    ours_times = [0.0] * REPEATS
    for pred, target in batches:
        ref_seconds += timed(reference.update, pred, target)[0]
        for i, metric in enumerate(ours):
            ours_times[i] += timed(metric.update, pred, target)[0]
    seconds, ref_value = timed(reference.compute)
    ref_seconds += seconds
    for i, metric in enumerate(ours):
        seconds, ours_value = timed(metric.compute)
        ours_times[i] += seconds

    ours_pqsr = torch.stack([ours_value["pq"], ours_value["sq"], ours_value["rq"]])
    # torchmetrics divides in float32 for RQ (hence PQ), so agreement is to ~1e-7.
    if not torch.allclose(ours_pqsr, ref_value.double(), rtol=0, atol=1e-6):
        raise SystemExit(
            f"PQ/SQ/RQ differ: seglab {ours_pqsr.tolist()} vs torchmetrics {ref_value.tolist()}"
        )

    ours_rate = IMAGES / statistics.median(ours_times)
    ref_rate = IMAGES / ref_seconds
    print(f"{'':14s}{'images/s':>10s}{'PQ':>10s}{'SQ':>10s}{'RQ':>10s}")
    print(f"{'seglab':14s}{ours_rate:10.1f}" + "".join(f"{v:10.4f}" for v in ours_pqsr.tolist()))
    print(
        f"{'torchmetrics':14s}{ref_rate:10.1f}" + "".join(f"{v:10.4f}" for v in ref_value.tolist())
    )
    print(f"seglab best run {IMAGES / min(ours_times):.1f} images/s; PQ, SQ, RQ agree to 1e-6")
    print(f"pq_speedup_vs_torchmetrics: {ours_rate / ref_rate:.1f}x")


if __name__ == "__main__":
    main()
