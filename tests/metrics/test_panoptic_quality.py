"""Tests of seglab.metrics.PanopticQuality and pq_compute against the COCO panoptic rules."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torchmetrics.detection import PanopticQuality as TorchmetricsPQ

from seglab.metrics import PanopticQuality, pq_compute
from seglab.metrics.panoptic_quality import main

THINGS = (1, 2, 3)
STUFFS = (7, 8)
VOID = 255
PERSON, CAR, SKY = 1, 2, 7


def pq_of(metric: PanopticQuality) -> dict[str, float]:
    """Scalar results of ``metric.compute()`` as floats."""
    return {k: float(v) for k, v in metric.compute().items() if v.dim() == 0}


def panoptic(cat: list[list[int]], inst: list[list[int]] | None = None) -> torch.Tensor:
    """One image (1, H, W, 2) from a category grid and an optional instance grid."""
    c = torch.tensor(cat)
    i = torch.zeros_like(c) if inst is None else torch.tensor(inst)
    return torch.stack([c, i], dim=-1)[None]


def random_batch(
    seed: int, batch: int = 2, size: int = 20, void: bool = True, crowd: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Random ``(preds, target, crowd)``: 6 Voronoi regions per image, predicted shifted by up
    to 2 px with patches of other categories and instances.

    With ``void`` the target holds void pixels and the prediction unlabelled ones (id 255); with
    ``crowd`` about one segment in five is a crowd region.
    """
    gen = torch.Generator().manual_seed(seed)
    categories = torch.tensor(THINGS + STUFFS + ((VOID,) if void else ()))

    def blocks(block: int, values: torch.Tensor) -> torch.Tensor:
        n = -(-size // block)
        idx = torch.randint(len(values), (batch, n, n), generator=gen)
        return values[idx].repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :size, :size]

    palette = torch.stack(
        [
            categories[torch.randint(len(categories), (batch, 6), generator=gen)],
            torch.randint(0, 3, (batch, 6), generator=gen),
        ],
        dim=-1,
    )
    seeds = torch.rand(batch, 6, 1, 1, 2, generator=gen) * size
    grid = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"), -1)
    segment = ((grid - seeds) ** 2).sum(-1).argmin(1)
    image = torch.arange(batch).view(batch, 1, 1)
    target = palette[image, segment]
    dy, dx = torch.randint(-2, 3, (2,), generator=gen).tolist()
    preds = torch.roll(target, shifts=(dy, dx), dims=(1, 2))
    recat = blocks(4, torch.tensor([True] + [False] * 5))
    preds[..., 0] = torch.where(recat, blocks(4, categories), preds[..., 0])
    reinst = blocks(3, torch.tensor([True] + [False] * 7))
    preds[..., 1] = torch.where(reinst, blocks(3, torch.arange(3)), preds[..., 1])
    if not crowd:
        return preds, target, None
    crowd_segment = torch.rand(batch, 6, generator=gen) < 0.2
    return preds, target, crowd_segment[image, segment]


def naive_stats(
    preds: torch.Tensor, target: torch.Tensor, crowd: torch.Tensor | None
) -> dict[int, list]:
    """Per-category ``[iou_sum, tp, fp, fn]`` by the COCO rules, one segment at a time."""
    categories = set(THINGS) | set(STUFFS)
    stats: dict[int, list] = {c: [0.0, 0, 0, 0] for c in categories}
    batch, height, width, _ = target.shape
    for b in range(batch):
        gt: dict[tuple[int, int], set] = {}
        pred: dict[tuple[int, int], set] = {}
        void: set = set()
        crowd_of: dict[int, set] = {}
        for y in range(height):
            for x in range(width):
                pos = (y, x)
                cat, inst = target[b, y, x].tolist()
                if cat not in categories:
                    void.add(pos)
                elif crowd is not None and crowd[b, y, x]:
                    crowd_of.setdefault(cat, set()).add(pos)
                else:
                    gt.setdefault((cat, inst if cat in THINGS else 0), set()).add(pos)
                cat, inst = preds[b, y, x].tolist()
                if cat in categories:
                    pred.setdefault((cat, inst if cat in THINGS else 0), set()).add(pos)
        matched_gt, matched_pred = set(), set()
        for gk, g in gt.items():
            for pk, p in pred.items():
                inter = len(g & p)
                if gk[0] != pk[0] or not inter:
                    continue
                union = len(g | p) - len(p & void)
                if Fraction(inter, union) > Fraction(1, 2):
                    stats[gk[0]][0] += inter / union
                    stats[gk[0]][1] += 1
                    matched_gt.add(gk)
                    matched_pred.add(pk)
        for gk in gt.keys() - matched_gt:
            stats[gk[0]][3] += 1
        for pk, p in pred.items():
            if pk in matched_pred:
                continue
            ignored = len(p & void) + len(p & crowd_of.get(pk[0], set()))
            if Fraction(ignored, len(p)) <= Fraction(1, 2):
                stats[pk[0]][2] += 1
    return stats


def summarise(stats: dict[int, list], things: set[int]) -> dict[str, float]:
    """PQ, SQ, RQ averaged over the categories with TP + FP + FN > 0 (all, things, stuff)."""
    groups = {
        "": lambda c: True,
        "_things": things.__contains__,
        "_stuff": lambda c: c not in things,
    }
    out = {}
    for suffix, keep in groups.items():
        rows = [s for c, s in stats.items() if keep(c) and s[1] + s[2] + s[3] > 0]
        out.update(_means(rows, suffix))
    return out


def _means(rows: list[list], suffix: str) -> dict[str, float]:
    pq = [iou / (tp + 0.5 * fp + 0.5 * fn) for iou, tp, fp, fn in rows]
    sq = [iou / tp if tp else 0.0 for iou, tp, _, _ in rows]
    rq = [tp / (tp + 0.5 * fp + 0.5 * fn) for _, tp, fp, fn in rows]
    n = len(rows)
    return {
        f"pq{suffix}": sum(pq) / n if n else 0.0,
        f"sq{suffix}": sum(sq) / n if n else 0.0,
        f"rq{suffix}": sum(rq) / n if n else 0.0,
    }


# ---------------------------------------------------------------- hand-computed cases


def test_perfect_prediction_scores_one() -> None:
    target = panoptic([[PERSON, PERSON, SKY], [CAR, PERSON, SKY]], [[1, 1, 0], [4, 2, 0]])
    metric = PanopticQuality(things=THINGS, stuffs=STUFFS)
    metric.update(target, target)
    result = pq_of(metric)
    assert result == {k: 1.0 for k in result}


def test_empty_prediction_counts_every_segment_as_false_negative() -> None:
    target = panoptic([[PERSON, PERSON, SKY], [CAR, PERSON, SKY]], [[1, 1, 0], [4, 2, 0]])
    preds = torch.full_like(target, VOID)
    metric = PanopticQuality(things=THINGS, stuffs=STUFFS)
    metric.update(preds, target)
    assert pq_of(metric) == {k: 0.0 for k in pq_of(metric)}
    # category order 1, 2, 3, 7, 8: two persons, one car, one sky
    assert metric.false_negatives.tolist() == [2, 1, 0, 1, 0]
    assert metric.false_positives.sum() == 0
    assert metric.true_positives.sum() == 0


def test_iou_of_exactly_one_half_does_not_match() -> None:
    target = panoptic([[PERSON, PERSON, SKY, SKY]])
    half = panoptic([[PERSON, SKY, SKY, SKY]])  # person: 1 / 2; sky: 2 / 3
    metric = PanopticQuality(things=THINGS, stuffs=STUFFS)
    metric.update(half, target)
    stats = (metric.true_positives, metric.false_positives, metric.false_negatives)
    assert [s[0].item() for s in stats] == [0, 1, 1]  # person: FP and FN, no match
    result = metric.compute()
    assert result["per_class_pq"].tolist() == pytest.approx([0, 0, 0, 2 / 3, 0])
    assert float(result["pq"]) == pytest.approx((0 + 2 / 3) / 2)

    above = panoptic([[PERSON, PERSON, PERSON, SKY, SKY, SKY]])  # person 2 / 3
    metric.reset()
    metric.update(above, panoptic([[PERSON, PERSON, SKY, SKY, SKY, SKY]]))
    assert metric.true_positives[0] == 1
    assert float(metric.compute()["per_class_pq"][0]) == pytest.approx(2 / 3)


def test_crowd_excuses_predictions_of_its_own_category_only() -> None:
    # a person crowd region covers the whole right half; sky on the left
    target = panoptic([[SKY, SKY, PERSON, PERSON], [SKY, SKY, PERSON, PERSON]])
    crowd = torch.tensor([[[False, False, True, True], [False, False, True, True]]])
    own = panoptic([[SKY, SKY, PERSON, PERSON], [SKY, SKY, PERSON, PERSON]], [[0, 0, 5, 5]] * 2)
    other = panoptic([[SKY, SKY, CAR, CAR], [SKY, SKY, CAR, CAR]], [[0, 0, 5, 5]] * 2)
    metric = PanopticQuality(things=THINGS, stuffs=STUFFS)

    metric.update(own, target, crowd)
    assert metric.false_positives.sum() == 0  # the person prediction lies on person crowd
    assert metric.false_negatives.sum() == 0  # crowd is never a false negative
    assert pq_of(metric)["pq"] == 1.0  # only sky counts

    metric.reset()
    metric.update(other, target, crowd)
    assert metric.false_positives.tolist() == [0, 1, 0, 0, 0]  # the car is a false positive
    assert pq_of(metric)["pq"] == pytest.approx(0.5)  # sky 1, car 0


def test_prediction_mostly_on_void_is_not_a_false_positive() -> None:
    target = panoptic([[SKY, VOID, VOID, VOID, SKY, SKY]])
    mostly = panoptic([[SKY, CAR, CAR, CAR, SKY, SKY]])  # the car: 3 of 3 pixels on void
    metric = PanopticQuality(things=THINGS, stuffs=STUFFS)
    metric.update(mostly, target)
    assert metric.false_positives.sum() == 0
    assert pq_of(metric)["pq"] == 1.0

    half = panoptic([[CAR, CAR, CAR, CAR, CAR, CAR]])
    metric.reset()
    metric.update(half, panoptic([[SKY, SKY, SKY, VOID, VOID, VOID]]))  # exactly half on void
    assert metric.false_positives.tolist() == [0, 1, 0, 0, 0]


def test_union_leaves_out_predicted_pixels_on_void() -> None:
    target = panoptic([[CAR, CAR, VOID, VOID, SKY]])
    preds = panoptic([[CAR, CAR, CAR, CAR, SKY]])  # 2 of the car's 4 pixels on void
    metric = PanopticQuality(things=THINGS, stuffs=STUFFS)
    metric.update(preds, target)
    assert metric.iou_sum.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]


def test_category_without_segments_is_left_out_of_the_mean() -> None:
    target = panoptic([[PERSON, PERSON, SKY, SKY]])
    preds = panoptic([[PERSON, PERSON, SKY, CAR]])  # sky 1/2 -> FP + FN; car FP
    metric = PanopticQuality(things=THINGS, stuffs=STUFFS)
    metric.update(preds, target)
    result = metric.compute()
    # person 1, car 0, sky 0 averaged over 3; categories 3 and 8 never appear
    assert float(result["pq"]) == pytest.approx(1 / 3)
    assert float(result["pq_things"]) == pytest.approx(1 / 2)
    assert float(result["pq_stuff"]) == 0.0
    assert result["per_class_pq"].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]

    only_things = PanopticQuality(things=THINGS, stuffs=STUFFS)
    only_things.update(target.clone().fill_(PERSON), target.clone().fill_(PERSON))
    assert pq_of(only_things)["pq_stuff"] == 0.0  # no stuff category counted: 0, not NaN
    assert pq_of(only_things)["pq"] == 1.0


def test_stuff_instance_ids_are_ignored_and_things_split() -> None:
    target = panoptic([[SKY, SKY, CAR, CAR]], [[3, 4, 1, 1]])
    preds = panoptic([[SKY, SKY, CAR, CAR]], [[9, 0, 2, 2]])
    metric = PanopticQuality(things=THINGS, stuffs=STUFFS)
    metric.update(preds, target)
    assert pq_of(metric) == {k: 1.0 for k in pq_of(metric)}


def test_batches_accumulate_exactly_like_one_batch() -> None:
    preds, target, crowd = random_batch(seed=3, batch=4)
    whole = PanopticQuality(things=THINGS, stuffs=STUFFS)
    whole.update(preds, target, crowd)
    parts = PanopticQuality(things=THINGS, stuffs=STUFFS)
    for i in range(4):
        parts.update(preds[i : i + 1], target[i : i + 1], crowd[i : i + 1])
    for name in ("true_positives", "false_positives", "false_negatives"):
        assert torch.equal(getattr(whole, name), getattr(parts, name))
    assert torch.allclose(whole.iou_sum, parts.iou_sum, rtol=0, atol=1e-12)


def test_segments_of_different_images_never_pair() -> None:
    target = torch.cat([panoptic([[PERSON, PERSON]], [[1, 1]]), panoptic([[SKY, SKY]])])
    preds = torch.cat([panoptic([[SKY, SKY]]), panoptic([[PERSON, PERSON]], [[1, 1]])])
    metric = PanopticQuality(things=THINGS, stuffs=STUFFS)
    metric.update(preds, target)
    assert metric.true_positives.sum() == 0
    assert metric.false_positives.sum() == 2 and metric.false_negatives.sum() == 2


def test_odd_ids_and_dtypes_are_accepted() -> None:
    """Negative or huge void ids, one-pixel objects, uint8 maps, large instance ids."""
    target = panoptic([[-1, PERSON, 10**6, SKY]], [[0, 2**40, 0, 0]])
    preds = panoptic([[SKY, PERSON, -7, SKY]], [[0, 2**40, 0, 0]])
    metric = PanopticQuality(things=THINGS, stuffs=STUFFS)
    metric.update(preds, target)
    assert pq_of(metric)["pq"] == 1.0  # the sky pixel on void (-1) is left out of the union
    small = PanopticQuality(things=THINGS, stuffs=STUFFS)
    small.update(
        panoptic([[1, 7]], [[200, 0]]).to(torch.uint8),
        panoptic([[1, 7]], [[200, 0]]).to(torch.uint8),
    )
    assert pq_of(small)["pq"] == 1.0


# ----------------------------------------------------------- reference implementations


@pytest.mark.parametrize("seed", range(6))
def test_equals_naive_coco_rules_with_void_and_crowd(seed: int) -> None:
    preds, target, crowd = random_batch(seed)
    metric = PanopticQuality(things=THINGS, stuffs=STUFFS)
    metric.update(preds, target, crowd)
    expected = naive_stats(preds, target, crowd)
    order = sorted(expected)
    assert metric.true_positives.tolist() == [expected[c][1] for c in order]
    assert metric.false_positives.tolist() == [expected[c][2] for c in order]
    assert metric.false_negatives.tolist() == [expected[c][3] for c in order]
    assert metric.iou_sum.tolist() == pytest.approx([expected[c][0] for c in order], abs=1e-12)
    assert pq_of(metric) == pytest.approx(summarise(expected, set(THINGS)), abs=1e-12)


def test_torchmetrics_documented_example() -> None:
    preds = torch.tensor(
        [[[[6, 0], [0, 0], [6, 0], [6, 0]],
          [[0, 0], [0, 0], [6, 0], [0, 1]],
          [[0, 0], [0, 0], [6, 0], [0, 1]],
          [[0, 0], [7, 0], [6, 0], [1, 0]],
          [[0, 0], [7, 0], [7, 0], [7, 0]]]]
    )  # fmt: skip
    target = torch.tensor(
        [[[[6, 0], [0, 1], [6, 0], [0, 1]],
          [[0, 1], [0, 1], [6, 0], [0, 1]],
          [[0, 1], [0, 1], [6, 0], [1, 0]],
          [[0, 1], [7, 0], [1, 0], [1, 0]],
          [[0, 1], [7, 0], [7, 0], [7, 0]]]]
    )  # fmt: skip
    metric = PanopticQuality(things={0, 1}, stuffs={6, 7})
    metric.update(preds, target)
    result = metric.compute()
    assert float(result["pq"]) == pytest.approx(0.5463, abs=1e-4)
    assert float(result["sq"]) == pytest.approx(0.6111, abs=1e-4)
    assert float(result["rq"]) == pytest.approx(0.6667, abs=1e-4)
    reference = TorchmetricsPQ(things={0, 1}, stuffs={6, 7}, return_sq_and_rq=True)
    expected = reference(preds, target)
    got = torch.stack([result["pq"], result["sq"], result["rq"]])
    assert torch.allclose(got, expected.double(), atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_equals_torchmetrics_without_void_and_crowd(seed: int) -> None:
    preds, target, _ = random_batch(seed, batch=3, size=24, void=False, crowd=False)
    metric = PanopticQuality(things=THINGS, stuffs=STUFFS)
    metric.update(preds, target)
    result = metric.compute()
    reference = TorchmetricsPQ(
        things=set(THINGS), stuffs=set(STUFFS), return_sq_and_rq=True, return_per_class=True
    )
    # torchmetrics orders its classes things first, then stuff: the same as ascending ids here
    per_class = reference(preds, target).double()
    ours = torch.stack([result["per_class_pq"], result["per_class_sq"], result["per_class_rq"]], 1)
    # torchmetrics divides in float32 for RQ
    assert torch.allclose(ours, per_class, atol=1e-6)
    average = TorchmetricsPQ(things=set(THINGS), stuffs=set(STUFFS), return_sq_and_rq=True)
    got = torch.stack([result["pq"], result["sq"], result["rq"]])
    assert torch.allclose(got, average(preds, target).double(), atol=1e-6)


# ------------------------------------------------------------------ input validation


@pytest.mark.parametrize(
    ("things", "stuffs", "match"),
    [
        ((1, 2), (2, 3), "disjoint"),
        ((), (), "both empty"),
        ((1, 1), (2,), "more than once"),
        ((1.5,), (2,), "integer"),
        ((True,), (2,), "integer"),
        ((-1,), (2,), "outside"),
        ("12", (3,), "collection"),
        (5, (3,), "collection"),
    ],
)
def test_bad_categories_are_rejected(things: object, stuffs: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PanopticQuality(things=things, stuffs=stuffs)  # type: ignore[arg-type]


def test_bad_inputs_are_rejected() -> None:
    metric = PanopticQuality(things=THINGS, stuffs=STUFFS)
    good = panoptic([[PERSON, SKY]], [[1, 0]])
    with pytest.raises(ValueError, match="preds must have shape"):
        metric.update(good[..., 0], good)
    with pytest.raises(ValueError, match="target must be an integer tensor"):
        metric.update(good, good.float())
    with pytest.raises(ValueError, match=r"target must be a torch\.Tensor"):
        metric.update(good, good.numpy())
    with pytest.raises(ValueError, match="same shape"):
        metric.update(good, torch.cat([good, good], dim=2))
    with pytest.raises(ValueError, match="crowd must be a bool tensor"):
        metric.update(good, good, torch.zeros(1, 1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"crowd must have shape \(B, H, W\)"):
        metric.update(good, good, torch.zeros(1, 2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="target holds negative instance ids"):
        metric.update(good, panoptic([[PERSON, SKY]], [[-1, 0]]))
    with pytest.raises(ValueError, match="preds holds negative instance ids"):
        metric.update(panoptic([[PERSON, SKY]], [[-3, 0]]), good)
    with pytest.raises(ValueError, match="target ids span too wide"):
        metric.update(good, panoptic([[PERSON, SKY]], [[2**62, 0]]))
    metric.update(good[:0], good[:0])  # an empty batch is a no-op
    assert metric.true_positives.sum() == 0


# ------------------------------------------------------------------- pq_compute, files


def write_coco(folder: Path, name: str, maps: torch.Tensor, crowd: torch.Tensor | None) -> Path:
    """Write (B, H, W, 2) maps as COCO panoptic ``<name>.json`` + ``<name>/*.png``; return the JSON.

    Categories outside THINGS + STUFFS become id 0 (void); all crowd pixels of a category in an
    image form one crowd segment.
    """
    categories = [{"id": c, "isthing": int(c in THINGS), "name": str(c)} for c in THINGS + STUFFS]
    (folder / name).mkdir(parents=True)
    annotations = []
    for b in range(maps.shape[0]):
        cat, inst = maps[b, ..., 0].numpy(), maps[b, ..., 1].numpy()
        is_crowd = np.zeros(cat.shape, bool) if crowd is None else crowd[b].numpy()
        ids = np.zeros(cat.shape, np.int64)
        segments = {}
        for y, x in np.ndindex(cat.shape):
            c = int(cat[y, x])
            if c not in THINGS + STUFFS:
                continue
            key = (c, bool(is_crowd[y, x]), int(inst[y, x]) if c in THINGS else 0)
            if is_crowd[y, x]:
                key = (c, True, 0)
            # ids that use all three colour channels
            segments.setdefault(key, 1 + 70001 * (len(segments) + 1) % (2**24 - 2))
            ids[y, x] = segments[key]
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        Image.fromarray(rgb).save(folder / name / f"{b:04d}.png")
        annotations.append(
            {
                "image_id": b,
                "file_name": f"{b:04d}.png",
                "segments_info": [
                    {
                        "id": sid,
                        "category_id": c,
                        "iscrowd": int(cr),
                        "area": int((ids == sid).sum()),
                    }
                    for (c, cr, _), sid in segments.items()
                ],
            }
        )
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"annotations": annotations, "categories": categories}))
    return path


def test_pq_compute_equals_the_metric_on_files(tmp_path: Path) -> None:
    preds, target, crowd = random_batch(seed=11, batch=3, size=24)
    gt_json = write_coco(tmp_path, "gt", target, crowd)
    pred_json = write_coco(tmp_path, "pred", preds, None)
    result = pq_compute(gt_json, pred_json, workers=1)

    metric = PanopticQuality(things=THINGS, stuffs=STUFFS)
    metric.update(preds, target, crowd)
    expected = pq_of(metric)
    for group, suffix in (("All", ""), ("Things", "_things"), ("Stuff", "_stuff")):
        for q in ("pq", "sq", "rq"):
            assert result[group][q] == pytest.approx(expected[q + suffix], abs=1e-12)
    counted = metric.true_positives + metric.false_positives + metric.false_negatives > 0
    assert result["All"]["n"] == int(counted.sum())
    per_class = metric.compute()["per_class_pq"].tolist()
    assert [result["per_class"][c]["pq"] for c in THINGS + STUFFS] == pytest.approx(per_class)


def test_pq_compute_uses_only_the_last_crowd_segment_of_a_category(tmp_path: Path) -> None:
    """As the COCO panoptic API does, earlier crowd segments of a category excuse nothing."""
    ids = np.array([[1, 1, 2, 2, 3, 3]])
    segments = [
        {"id": 1, "category_id": PERSON, "iscrowd": 1},
        {"id": 2, "category_id": PERSON, "iscrowd": 1},
        {"id": 3, "category_id": SKY, "iscrowd": 0},
    ]
    pred_ids = np.array([[5, 5, 6, 6, 7, 7]])
    pred_segments = [
        {"id": 5, "category_id": PERSON},
        {"id": 6, "category_id": PERSON},
        {"id": 7, "category_id": SKY},
    ]
    gt_json = write_raw(tmp_path, "gt", [(ids, segments)])
    pred_json = write_raw(tmp_path, "pred", [(pred_ids, pred_segments)])
    result = pq_compute(gt_json, pred_json, workers=1)
    # person: one FP (the prediction on crowd segment 1), nothing else
    assert result["per_class"][PERSON] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert result["All"]["n"] == 2


def write_raw(folder: Path, name: str, images: list[tuple[np.ndarray, list[dict]]]) -> Path:
    """Write COCO panoptic files from (segment id map, segments_info) per image."""
    categories = [{"id": c, "isthing": int(c in THINGS), "name": str(c)} for c in THINGS + STUFFS]
    (folder / name).mkdir(parents=True)
    annotations = []
    for i, (ids, segments) in enumerate(images):
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        Image.fromarray(rgb).save(folder / name / f"{i}.png")
        annotations.append({"image_id": i, "file_name": f"{i}.png", "segments_info": segments})
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"annotations": annotations, "categories": categories}))
    return path


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_pq_compute_rejects_malformed_predictions(tmp_path: Path) -> None:
    preds, target, crowd = random_batch(seed=5, batch=2, size=12)
    gt_json = write_coco(tmp_path, "gt", target, crowd)
    pred_json = write_coco(tmp_path, "pred", preds, None)
    original = pred_json.read_text()
    png = tmp_path / "pred" / "0000.png"

    _edit_json(pred_json, lambda d: d["annotations"][0]["segments_info"].pop(0))
    with pytest.raises(KeyError, match=f"{png}.*in the PNG but not in the segments_info"):
        pq_compute(gt_json, pred_json, workers=1)

    pred_json.write_text(original)
    extra = {"id": 424242, "category_id": SKY, "iscrowd": 0}
    _edit_json(pred_json, lambda d: d["annotations"][0]["segments_info"].append(extra))
    with pytest.raises(KeyError, match=rf"{pred_json}.*\[424242\].*not in {png}"):
        pq_compute(gt_json, pred_json, workers=1)

    pred_json.write_text(original)
    _edit_json(pred_json, lambda d: d["annotations"][1]["segments_info"][0].update(category_id=99))
    with pytest.raises(KeyError, match=f"{pred_json}.*unknown category_id 99"):
        pq_compute(gt_json, pred_json, workers=1)

    pred_json.write_text(original)
    _edit_json(pred_json, lambda d: d["annotations"].pop(1))
    with pytest.raises(KeyError, match=f"{pred_json} has no prediction for the image with id 1"):
        pq_compute(gt_json, pred_json, workers=1)

    pred_json.write_text(original)
    with pytest.raises(FileNotFoundError, match="prediction segmentation folder"):
        pq_compute(gt_json, pred_json, pred_folder=tmp_path / "nowhere", workers=1)
    with pytest.raises(ValueError, match="workers"):
        pq_compute(gt_json, pred_json, workers=0)

    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(png)
    with pytest.raises(ValueError, match=f"{png} is \\(5, 5\\) but the ground truth"):
        pq_compute(gt_json, pred_json, workers=1)


def test_pq_compute_rejects_ground_truth_areas_that_disagree(tmp_path: Path) -> None:
    _, target, crowd = random_batch(seed=6, batch=1, size=12)
    gt_json = write_coco(tmp_path, "gt", target, crowd)
    _edit_json(gt_json, lambda d: d["annotations"][0]["segments_info"][0].update(area=1))
    with pytest.raises(ValueError, match=f"{gt_json}.*has area 1 but"):
        pq_compute(gt_json, gt_json, workers=1)


def test_command_line_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    preds, target, crowd = random_batch(seed=8, batch=2, size=12)
    gt_json = write_coco(tmp_path, "gt", target, crowd)
    pred_json = write_coco(tmp_path, "pred", preds, None)
    main(["--gt-json", str(gt_json), "--pred-json", str(pred_json), "--workers", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("|")[0].strip() for line in lines[2:]] == ["All", "Things", "Stuff"]
    result = pq_compute(gt_json, pred_json, workers=1)
    assert lines[2].split()[2] == f"{100 * result['All']['pq']:.1f}"

    (tmp_path / "pred" / "0001.png").unlink()
    with pytest.raises(SystemExit) as exit_info:
        main(["--gt-json", str(gt_json), "--pred-json", str(pred_json), "--workers", "1"])
    assert exit_info.value.code == 2
    assert (
        f"panoptic PNG {tmp_path / 'pred' / '0001.png'} does not exist" in capsys.readouterr().err
    )


# ------------------------------------------------------------------ real COCO sample


@pytest.fixture
def coco_sample(data_root: Path) -> Path:
    """``sample_data`` of the COCO panoptic sample under ``$SEGLAB_DATA_DIR``."""
    folder = data_root / "coco_panoptic_sample" / "sample_data"
    if not folder.is_dir():
        reason = f"COCO panoptic sample not found at {folder} (see ../shared/data/README.md)"
        if os.environ.get("SEGLAB_REQUIRE_DATA") == "1":
            pytest.fail(f"SEGLAB_REQUIRE_DATA=1 but {reason}")
        pytest.skip(reason)
    return folder


def read_ids(png: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(png), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def write_ids(png: Path, ids: np.ndarray) -> None:
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(png)


@pytest.mark.realdata
def test_real_sample_against_itself_scores_one(coco_sample: Path) -> None:
    gt_json = coco_sample / "panoptic_examples.json"
    result = pq_compute(gt_json, gt_json, workers=1)
    # categories present: things person, sports ball, truck, horse; stuff tree, sky, grass, gravel
    assert result["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 8}
    assert result["Things"]["n"] == 4 and result["Stuff"]["n"] == 4
    assert len(result["per_class"]) == 133
    assert result["per_class"][200] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


BALL, TRUCK, GRAVEL, SAND = 16757838, 6094848, 11881084, 154  # sample segment ids; sand category
SHIFT = 10


@pytest.mark.realdata
def test_real_sample_against_a_derived_prediction(coco_sample: Path, tmp_path: Path) -> None:
    """Drop the sports ball (image 142238), relabel the gravel as sand and shift the larger
    truck 10 px right (image 439180); check against the counts derived here from the masks."""
    gt_json = coco_sample / "panoptic_examples.json"
    gt_folder = coco_sample / "panoptic_examples"
    gt = json.loads(gt_json.read_text())
    pred = copy.deepcopy(gt)
    (tmp_path / "pred").mkdir()
    things = {c["id"] for c in gt["categories"] if c["isthing"]}
    stats: dict[int, list] = {}  # category -> [iou_sum, tp, fp, fn]

    def add(cat: int, iou: float = 0.0, tp: int = 0, fp: int = 0, fn: int = 0) -> None:
        row = stats.setdefault(cat, [0.0, 0, 0, 0])
        for i, v in enumerate((iou, tp, fp, fn)):
            row[i] += v

    for gt_ann, pred_ann in zip(gt["annotations"], pred["annotations"]):
        ids = read_ids(gt_folder / gt_ann["file_name"])
        out = ids.copy()
        segments = {s["id"]: s for s in gt_ann["segments_info"]}
        moved = np.zeros_like(ids, dtype=bool)
        if BALL in segments:
            out[ids == BALL] = 0
            pred_ann["segments_info"] = [s for s in pred_ann["segments_info"] if s["id"] != BALL]
        if TRUCK in segments:
            truck = ids == TRUCK
            moved[:, SHIFT:] = truck[:, :-SHIFT]
            out[truck] = 0
            out[moved] = TRUCK
            for s in pred_ann["segments_info"]:
                if s["id"] == GRAVEL:
                    s["category_id"] = SAND
        write_ids(tmp_path / "pred" / pred_ann["file_name"], out)

        void = ids == 0
        for sid, s in segments.items():
            cat, mask = s["category_id"], ids == sid
            if s["iscrowd"]:
                continue  # the crowd prediction keeps only crowd pixels: excused, never counted
            if sid == BALL:
                add(cat, fn=1)
            elif sid == GRAVEL and TRUCK in segments:
                add(cat, fn=1)
                add(SAND, fp=1)  # the sand lies on gravel, not on void or crowd
            elif sid == TRUCK:
                inter = (mask & moved).sum()
                iou = inter / (moved.sum() + mask.sum() - inter - (moved & void).sum())
                assert iou > 0.5  # else this derivation would need the FP / FN branch
                add(cat, iou=iou, tp=1)
            else:
                # neighbours lose the pixels the shifted truck covers, and nothing else changes
                kept = (mask & ~moved).sum() / mask.sum()
                assert kept > 0.5
                add(cat, iou=kept, tp=1)

    (tmp_path / "pred.json").write_text(json.dumps(pred))
    result = pq_compute(gt_json, tmp_path / "pred.json", gt_folder=gt_folder, workers=1)

    groups = {
        "All": list(stats.values()),
        "Things": [r for c, r in stats.items() if c in things],
        "Stuff": [r for c, r in stats.items() if c not in things],
    }
    for name, rows in groups.items():
        assert result[name]["n"] == len(rows)
        expected = _means(rows, "")
        for key in ("pq", "sq", "rq"):
            assert result[name][key] == pytest.approx(expected[key], abs=1e-12)
    # By hand: person, truck, horse, tree, sky, grass all match (RQ 1); ball, gravel and sand
    # match nothing (RQ 0). So RQ = 6/9, things 3/4 (ball), stuff 3/5 (gravel, sand), and PQ = SQ
    # per category; the PQ figures are the derivation's, written down once.
    assert result["All"]["rq"] == pytest.approx(6 / 9)
    assert result["Things"]["rq"] == pytest.approx(3 / 4)
    assert result["Stuff"]["rq"] == pytest.approx(3 / 5)
    assert result["Things"]["n"] == 4 and result["Stuff"]["n"] == 5
    assert result["All"]["pq"] == pytest.approx(0.6449, abs=1e-4)
    assert result["Things"]["pq"] == pytest.approx(0.7013, abs=1e-4)
    assert result["Stuff"]["pq"] == pytest.approx(0.5998, abs=1e-4)


@pytest.mark.realdata
def test_real_sample_tensor_metric_equals_pq_compute(coco_sample: Path, tmp_path: Path) -> None:
    """Predictions = ground truth rolled 3 px right; PanopticQuality on the decoded maps equals
    pq_compute on the files, in-process and with a 2-process pool."""
    gt_json = coco_sample / "panoptic_examples.json"
    gt = json.loads(gt_json.read_text())
    things = [c["id"] for c in gt["categories"] if c["isthing"]]
    stuffs = [c["id"] for c in gt["categories"] if not c["isthing"]]
    metric = PanopticQuality(things=things, stuffs=stuffs)
    (tmp_path / "pred").mkdir()
    for ann in gt["annotations"]:
        ids = read_ids(coco_sample / "panoptic_examples" / ann["file_name"])
        rolled = np.roll(ids, 3, axis=1)
        write_ids(tmp_path / "pred" / ann["file_name"], rolled)
        cat = np.full(ids.shape, -1)
        crowd = np.zeros(ids.shape, bool)
        for s in ann["segments_info"]:
            mask = ids == s["id"]
            cat[mask], crowd[mask] = s["category_id"], s["iscrowd"]
        # instance = segment id; the crowd segment is an ordinary segment in the prediction
        target = torch.from_numpy(np.stack([cat, ids], -1))[None]
        preds = torch.roll(target, shifts=3, dims=2)
        metric.update(preds, target, torch.from_numpy(crowd)[None])
    shutil.copy(gt_json, tmp_path / "pred.json")

    expected = pq_of(metric)
    assert 0.3 < expected["pq"] < 1.0
    single = pq_compute(
        gt_json, tmp_path / "pred.json", gt_folder=coco_sample / "panoptic_examples", workers=1
    )
    for group, suffix in (("All", ""), ("Things", "_things"), ("Stuff", "_stuff")):
        for q in ("pq", "sq", "rq"):
            assert single[group][q] == pytest.approx(expected[q + suffix], abs=1e-12)
    pooled = pq_compute(
        gt_json, tmp_path / "pred.json", gt_folder=coco_sample / "panoptic_examples", workers=2
    )
    assert pooled == single


@pytest.mark.realdata
@pytest.mark.slow
def test_module_command_line_on_real_sample(coco_sample: Path) -> None:
    gt_json = coco_sample / "panoptic_examples.json"
    run = subprocess.run(
        [sys.executable, "-m", "seglab.metrics.panoptic_quality", "--gt-json", str(gt_json),
         "--pred-json", str(gt_json), "--workers", "1"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert "All       |  100.0  100.0  100.0     8" in run.stdout
    assert "RuntimeWarning" not in run.stderr


# ---------------------------------------------------------------------- DDP (gloo)


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    # forked after the parent ran threaded ops: its OpenMP pool is unusable here (hangs)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    try:
        preds, target, crowd = random_batch(seed=1, batch=5)
        metric = PanopticQuality(things=THINGS, stuffs=STUFFS)
        shard = [0, 1, 2] if rank == 0 else [3, 4]  # uneven on purpose
        for i in shard:
            metric.update(preds[i : i + 1], target[i : i + 1], crowd[i : i + 1])
        torch.save(metric.compute(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_sync_equals_single_process(tmp_path: Path) -> None:
    # fork spares each child re-importing torch (seconds on a busy machine)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    args = (2, str(tmp_path / "rendezvous"), str(tmp_path))
    workers = mp.start_processes(_ddp_worker, args=args, nprocs=2, start_method=method, join=False)
    deadline = time.monotonic() + 120
    while not workers.join(timeout=1):
        if time.monotonic() > deadline:
            for process in workers.processes:
                process.kill()
            pytest.fail("the 2-process gloo run did not finish within 120 s")

    preds, target, crowd = random_batch(seed=1, batch=5)
    single = PanopticQuality(things=THINGS, stuffs=STUFFS)
    single.update(preds, target, crowd)
    expected = single.compute()
    shard = PanopticQuality(things=THINGS, stuffs=STUFFS)
    shard.update(preds[:3], target[:3], crowd[:3])
    assert not torch.equal(shard.compute()["per_class_pq"], expected["per_class_pq"])
    for rank in range(2):
        synced = torch.load(tmp_path / f"rank{rank}.pt")
        assert synced.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.allclose(synced[key], value, rtol=0, atol=1e-12), key
