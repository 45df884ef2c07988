"""Time and peak memory of ``unet_weight_map`` on a DSB-sized image (1388x1040, 300 nuclei).

Setup: a synthetic instance map (seeded) of 300 elliptic nuclei, half-axes 5-15 pixels, at random
positions (later nuclei may cover parts of earlier ones, as touching nuclei do); default w0 = 10,
sigma = 5, class_weights="balanced". Prints the wall time (best and median of 5 runs after one
warm-up), the peak of Python-tracked allocations (numpy and scipy arrays) during one call, and,
for reference, the cost of one full-image distance transform per object. Goal: < 1 s, < 1 GB.
"""

from __future__ import annotations

import statistics
import time
import tracemalloc

import numpy as np
from scipy import ndimage
from skimage.draw import ellipse

from seglab.data.weight_maps import unet_weight_map

HEIGHT, WIDTH, NUCLEI = 1040, 1388, 300


def synthetic_nuclei(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    instances = np.zeros((HEIGHT, WIDTH), np.int32)
    for label in range(1, NUCLEI + 1):
        r, c = rng.uniform(0, HEIGHT), rng.uniform(0, WIDTH)
        a, b = rng.uniform(5, 15, size=2)
        rr, cc = ellipse(r, c, a, b, shape=instances.shape, rotation=rng.uniform(0, np.pi))
        instances[rr, cc] = label
    return instances


def main() -> None:
    instances = synthetic_nuclei()
    present = len(np.unique(instances)) - 1
    print(f"image {WIDTH}x{HEIGHT}, {present} nuclei visible of {NUCLEI} drawn")

    unet_weight_map(instances, class_weights="balanced")
    times = []
    for _ in range(5):
        start = time.perf_counter()
        unet_weight_map(instances, class_weights="balanced")
        times.append(time.perf_counter() - start)
    print(f"unet_weight_map: best {min(times):.3f} s, median {statistics.median(times):.3f} s")

    tracemalloc.start()
    unet_weight_map(instances, class_weights="balanced")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"peak traced memory during one call: {peak / 2**20:.1f} MiB")

    start = time.perf_counter()
    ndimage.distance_transform_edt(instances != 1)
    per_object = time.perf_counter() - start
    stacked = NUCLEI * HEIGHT * WIDTH * 8 / 2**30
    print(
        f"reference: one full-image distance transform takes {per_object:.3f} s "
        f"(x{NUCLEI} = {per_object * NUCLEI:.1f} s; {stacked:.1f} GiB if all are kept as float64)"
    )
    print(f"unet_weight_map_1388x1040_300_nuclei_s: {statistics.median(times):.3f}")


if __name__ == "__main__":
    main()
