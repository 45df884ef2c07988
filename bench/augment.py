"""Images per second of ``ElasticDeformation`` versus albumentations' ``ElasticTransform``.

Setup: one CPU thread (torch, OpenCV and BLAS); a 512x512 uint8 grey image, a uint8 binary mask
and a float32 weight map (declared ``{"weight": "mask"}``), each transform alone in an
``A.Compose(p=1, seed=0)`` with ``p=1``. ``ElasticDeformation`` runs with the paper's defaults
(3x3 grid, sigma 10 px, bilinear image, nearest masks, mirrored border); ``ElasticTransform`` with
its defaults (sigma 50, exact Gaussian blur, bilinear image, nearest masks, constant border) and
``alpha`` calibrated so its per-pixel displacements have the same root mean square as
ElasticDeformation's (printed; 10 px at the grid nodes, less between them); the variant with
``approximate=True`` (17x17 blur kernel) is listed too. All are timed in alternating rounds in
one process; figures are medians over the rounds.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import statistics  # noqa: E402
import time  # noqa: E402

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from seglab.data.transforms import ElasticDeformation  # noqa: E402

SIZE, ROUNDS, CALLS = 512, 9, 20


def rms_displacement(transform: A.DualTransform) -> float:
    """Root mean square of the x displacement over all pixels of 20 random fields."""
    squares = []
    for seed in range(20):
        transform.set_random_seed(seed)
        maps = transform.get_params_dependent_on_data({"shape": (SIZE, SIZE)}, {})
        squares.append(np.mean(np.square(maps["map_x"] - np.arange(SIZE))))
    return float(np.sqrt(np.mean(squares)))


def images_per_second(transform: A.Compose, data: dict[str, np.ndarray]) -> float:
    start = time.perf_counter()
    for _ in range(CALLS):
        transform(**data)
    return CALLS / (time.perf_counter() - start)


def main() -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.random((SIZE, SIZE), dtype=np.float32), (0, 0), 3)
    image = cv2.normalize(smooth, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    data = {
        "image": image,
        "mask": (image > 127).astype(np.uint8),
        "weight": rng.uniform(1, 11, (SIZE, SIZE)).astype(np.float32),
    }
    target_rms = rms_displacement(ElasticDeformation(p=1.0))
    alpha = target_rms / rms_displacement(A.ElasticTransform(alpha=1.0, sigma=50, p=1.0))
    contenders = {
        "ElasticDeformation(grid=3, sigma=10)": ElasticDeformation(p=1.0),
        f"ElasticTransform(alpha={alpha:.0f}, sigma=50)": A.ElasticTransform(
            alpha=alpha, sigma=50, p=1.0
        ),
        f"ElasticTransform(alpha={alpha:.0f}, sigma=50, approximate=True)": A.ElasticTransform(
            alpha=alpha, sigma=50, approximate=True, p=1.0
        ),
    }
    pipelines = {
        name: A.Compose([t], additional_targets={"weight": "mask"}, seed=0)
        for name, t in contenders.items()
    }
    print(
        f"{SIZE}x{SIZE} uint8 image + uint8 mask + float32 weight map, 1 thread, "
        f"{ROUNDS} alternating rounds of {CALLS} calls; RMS displacement {target_rms:.1f} px"
    )
    for pipeline in pipelines.values():  # warm-up
        pipeline(**data)

    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    names = list(pipelines)
    for round_ in range(ROUNDS):
        for name in names if round_ % 2 == 0 else names[::-1]:
            rates[name].append(images_per_second(pipelines[name], data))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    for name, rate in medians.items():
        print(f"{name}: {rate:.1f} images/s")
    ours, theirs, approx = medians.values()
    print(f"speedup vs ElasticTransform(approximate=True): {ours / approx:.2f}x")
    print(f"elastic_speedup_vs_albumentations: {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
