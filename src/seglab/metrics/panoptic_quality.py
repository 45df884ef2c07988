"""Panoptic quality, PQ = SQ x RQ (Kirillov et al., "Panoptic Segmentation", CVPR 2019).

Two entry points share one segment-matching core, so both follow the rules of the COCO panoptic
API's ``pq_compute`` (panopticapi/evaluation.py):

- a predicted and a ground-truth segment of the same category match when IoU > 0.5 (strictly);
- the union leaves out predicted pixels that lie on ground-truth void;
- crowd segments are never matched and never count as false negatives;
- an unmatched prediction is no false positive when more than half of its area lies on void plus
  the crowd region of its own category;
- IoU sums and TP / FP / FN counts add up per category over the whole dataset, and PQ, SQ, RQ are
  averaged over the categories with TP + FP + FN > 0 (for all, things and stuff separately).

``PanopticQuality`` is the ``torchmetrics.Metric`` for training loops; ``pq_compute`` evaluates COCO
panoptic JSON + PNG files and backs the command line
``python -m seglab.metrics.panoptic_quality --gt-json ... --pred-json ...``.

Written here rather than taken from torchmetrics because its ``PanopticQuality`` has no crowd, also
drops unlabelled predicted pixels from the union, has no things / stuff split and loops over segment
pairs in Python.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchmetrics import Metric

__all__ = ["PanopticQuality", "main", "pq_compute"]

# Category ids index look-up tables, so they must stay small.
MAX_CATEGORY_ID = 2**20
# Key spaces up to this many bins per pixel (plus a constant) are counted with bincount, which is
# linear; larger ones fall back to torch.unique, which sorts.
_BINCOUNT_BINS_PER_PIXEL = 4
_BINCOUNT_MIN_BINS = 2**16
_INT64_SAFE = 2**62


def _match_segments(
    pair_gt: Tensor,
    pair_pred: Tensor,
    pair_area: Tensor,
    gt_category: Tensor,
    gt_crowd: Tensor,
    gt_excuses: Tensor,
    pred_category: Tensor,
    num_categories: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Match the segments of one or more images and count them per category.

    Segments are numbered across the whole batch; the pairs list every non-empty intersection, so
    their areas add up to the pixel count and segments of different images never pair.

    Args:
        pair_gt: (K,) long, ground-truth segment of each intersecting pair.
        pair_pred: (K,) long, predicted segment of each pair.
        pair_area: (K,) long, pixels in the intersection.
        gt_category: (G,) long, category index of each ground-truth segment; ``num_categories``
            marks void.
        gt_crowd: (G,) bool, crowd segments (never matched, never false negatives).
        gt_excuses: (G,) bool, segments whose pixels excuse an unmatched prediction of the same
            category (the crowd region of that category).
        pred_category: (P,) long, category index of each predicted segment; ``num_categories``
            marks unlabelled pixels.
        num_categories: C.

    Returns:
        ``(iou_sum, tp, fp, fn)``, each (C,): float64 IoU sum of the matches, long counts.
    """
    device = pair_area.device
    void = num_categories
    num_gt, num_pred = gt_category.numel(), pred_category.numel()
    area = pair_area.long()

    pred_area = torch.zeros(num_pred, dtype=torch.long, device=device).index_add_(
        0, pair_pred, area
    )
    gt_area = torch.zeros(num_gt, dtype=torch.long, device=device).index_add_(0, pair_gt, area)
    pair_gt_cat = gt_category[pair_gt]
    same_cat = pair_gt_cat == pred_category[pair_pred]
    on_void = pair_gt_cat == void
    pred_on_void = torch.zeros_like(pred_area).index_add_(0, pair_pred, area * on_void)

    # Unlabelled predictions never equal a non-void category, so same_cat & ~on_void excludes them.
    candidate = same_cat & ~on_void & ~gt_crowd[pair_gt]
    union = pred_area[pair_pred] + gt_area[pair_gt] - area - pred_on_void[pair_pred]
    # IoU > 0.5 as an integer test, so ties at exactly one half never match through rounding.
    matched = candidate & (2 * area > union)
    m_gt, m_pred, m_cat = pair_gt[matched], pair_pred[matched], pair_gt_cat[matched]
    iou = area[matched].double() / union[matched].double()

    bins = num_categories + 1
    iou_sum = torch.zeros(bins, dtype=torch.float64, device=device).index_add_(0, m_cat, iou)
    tp = torch.bincount(m_cat, minlength=bins)

    gt_matched = torch.zeros(num_gt, dtype=torch.bool, device=device)
    gt_matched[m_gt] = True
    pred_matched = torch.zeros(num_pred, dtype=torch.bool, device=device)
    pred_matched[m_pred] = True

    counted_gt = (gt_category != void) & ~gt_crowd & ~gt_matched
    fn = torch.bincount(gt_category[counted_gt], minlength=bins)

    excused = on_void | (gt_excuses[pair_gt] & same_cat)
    excused_area = torch.zeros_like(pred_area).index_add_(0, pair_pred, area * excused)
    counted_pred = (pred_category != void) & ~pred_matched & ~(2 * excused_area > pred_area)
    fp = torch.bincount(pred_category[counted_pred], minlength=bins)

    c = num_categories
    return iou_sum[:c], tp[:c], fp[:c], fn[:c]


def _per_class(
    iou_sum: Tensor, tp: Tensor, fp: Tensor, fn: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-category ``(pq, sq, rq, counted)`` from (C,) sums; categories with no TP, FP, FN get 0."""
    tp_f = tp.double()
    denominator = tp_f + 0.5 * fp.double() + 0.5 * fn.double()
    counted = denominator > 0
    safe_denominator = denominator.clamp(min=0.5)
    pq = torch.where(counted, iou_sum / safe_denominator, 0.0)
    sq = torch.where(tp > 0, iou_sum / tp_f.clamp(min=1.0), 0.0)
    rq = torch.where(counted, tp_f / safe_denominator, 0.0)
    return pq, sq, rq, counted


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` (C,) over ``mask`` (C,); 0 when the mask is empty."""
    n = mask.sum()
    return torch.where(n > 0, (values * mask).sum() / n.clamp(min=1), 0.0)


def _parse_category_ids(values: Any, name: str) -> list[int]:
    """Validate a collection of non-negative, distinct integer category ids."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a collection of integer category ids, got {values!r}")
    ids = []
    for value in values:
        if isinstance(value, bool):
            raise ValueError(f"{name} must hold integer category ids, got {value!r}")
        try:
            category = operator.index(value)
        except TypeError:
            raise ValueError(f"{name} must hold integer category ids, got {value!r}") from None
        if not 0 <= category <= MAX_CATEGORY_ID:
            raise ValueError(f"{name} holds category id {category}, outside [0, {MAX_CATEGORY_ID}]")
        ids.append(category)
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{name} lists category ids {duplicates} more than once")
    return ids


def _check_panoptic_map(x: Any, name: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[-1] != 2:
        raise ValueError(
            f"{name} must have shape (B, H, W, 2) holding (category_id, instance_id), "
            f"got {tuple(x.shape)}"
        )
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {x.dtype}")


def _fits_bincount(space: int, numel: int) -> bool:
    return space <= _BINCOUNT_BINS_PER_PIXEL * numel + _BINCOUNT_MIN_BINS


def _bincount(flat: Tensor, space: int) -> Tensor:
    """Occurrences (space,) of each value of ``flat`` (N,), long in [0, space).

    Faster than ``torch.bincount`` on CPU, which spends two extra passes on its min and max.
    """
    ones = torch.ones(1, dtype=torch.long, device=flat.device).expand(flat.numel())
    return torch.zeros(space, dtype=torch.long, device=flat.device).index_add_(0, flat, ones)


def _distinct(keys: Tensor, space: int) -> tuple[Tensor, Tensor | None]:
    """Sorted distinct values (S,) of ``keys`` (values in [0, space)).

    Also returns each element's rank, shaped like ``keys``, when it came for free (sorting);
    ``None`` when the values were found by counting.
    """
    flat = keys.reshape(-1)
    if _fits_bincount(space, flat.numel()):
        return _bincount(flat, space).nonzero().squeeze(1), None
    present, rank = torch.unique(flat, sorted=True, return_inverse=True)
    return present, rank.view_as(keys)


def _relabel(
    keys: Tensor, space: int, present: Tensor, rank: Tensor | None, values: Tensor
) -> Tensor:
    """``values[r]`` for every element of ``keys``, r its rank among ``present`` (from ``_distinct``)."""
    if rank is None:
        lookup = torch.empty(space, dtype=values.dtype, device=keys.device)
        lookup[present] = values
        values, rank = lookup, keys
    # index_select beats advanced indexing several times over on CPU.
    return values.index_select(0, rank.reshape(-1)).view_as(keys)


def _count(keys: Tensor, space: int) -> tuple[Tensor, Tensor]:
    """Sorted distinct values (S,) of ``keys`` (values in [0, space)) and how often each occurs."""
    flat = keys.reshape(-1)
    if _fits_bincount(space, flat.numel()):
        counts = _bincount(flat, space)
        present = counts.nonzero().squeeze(1)
        return present, counts[present]
    return torch.unique(flat, sorted=True, return_counts=True)


@dataclass(frozen=True)
class _KeyLayout:
    """How ``_pixel_keys`` packs (image, category_id, instance_id, crowd) into one integer."""

    cat_low: int
    inst_low: int
    inst_span: int
    flag_span: int
    per_image: int

    def decode(self, keys: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(image, category_id, instance_id, crowd)`` of keys (S,), all long (S,)."""
        image, rest = keys // self.per_image, keys % self.per_image
        flag, rest = rest % self.flag_span, rest // self.flag_span
        return (
            image,
            rest // self.inst_span + self.cat_low,
            rest % self.inst_span + self.inst_low,
            flag,
        )


def _pixel_keys(x: Tensor, crowd: Tensor | None, name: str) -> tuple[Tensor, _KeyLayout]:
    """One key (B, H, W) int64 per pixel of ``x`` (B, H, W, 2), unique per raw segment.

    A raw segment is an (image, category_id, instance_id[, crowd]) combination as given; which of
    them are void, stuff or crowd is settled later on the far smaller list of segments.
    """
    if x.dtype != torch.long:
        x = x.long()
    batch = x.shape[0]
    low, high = torch.aminmax(x.reshape(-1, 2), dim=0)
    (cat_low, inst_low), (cat_high, inst_high) = low.tolist(), high.tolist()
    inst_span = inst_high - inst_low + 1
    flag_span = 1 if crowd is None else 2
    per_image = (cat_high - cat_low + 1) * inst_span * flag_span
    # bounds the intermediate cat * inst_span + inst as well as the final key
    largest = max(-cat_low, cat_high) * inst_span + max(-inst_low, inst_high) + batch * per_image
    if flag_span * largest >= _INT64_SAFE:
        raise ValueError(
            f"{name} ids span too wide a range to pack into int64: category ids "
            f"[{cat_low}, {cat_high}], instance ids [{inst_low}, {inst_high}]"
        )
    key = torch.add(x[..., 1], x[..., 0], alpha=inst_span)
    if crowd is not None:
        key = torch.add(crowd, key, alpha=2)
    offset = torch.arange(batch, device=x.device) * per_image
    offset -= (cat_low * inst_span + inst_low) * flag_span
    key += offset.view(batch, 1, 1)
    return key, _KeyLayout(cat_low, inst_low, inst_span, flag_span, per_image)


class PanopticQuality(Metric):
    """Panoptic quality (Kirillov et al., "Panoptic Segmentation", CVPR 2019), COCO rules.

    Semantics are those of the COCO panoptic API's ``pq_compute`` (see the module docstring),
    including crowd regions and the things / stuff split. The (ground-truth, predicted) segment
    pairs and their intersections come from counting per-pixel segment keys (bincount, falling
    back to a sort only for very sparse ids); all later steps work on the short list of segments.
    States are per-category sums, so batch accumulation and DDP sync are exact.

    Args:
        things: category ids of countable things, in [0, 2**20].
        stuffs: category ids of amorphous stuff, in [0, 2**20]; disjoint from ``things``; one
            segment per category and image.
        **kwargs: passed to ``torchmetrics.Metric``.

    ``update(preds, target, crowd=None)``:
        - ``preds``, ``target``: integer (B, H, W, 2) holding (category_id, instance_id) per
          pixel. Target pixels whose category is in neither set are void; predicted pixels whose
          category is in neither set are unlabelled (part of no predicted segment). Instance ids
          of stuff are ignored; those of things must be non-negative.
        - ``crowd``: optional bool (B, H, W), target pixels in a crowd region of their (target)
          category. All crowd pixels of one category in one image form one crowd region; crowd on
          void pixels is ignored.

    ``compute()`` returns a dict of float64 tensors: scalars ``pq``, ``sq``, ``rq`` and the same
    with ``_things`` and ``_stuff`` suffixes (0 where no category of the group has TP + FP + FN >
    0), and ``per_class_pq``, ``per_class_sq``, ``per_class_rq`` of shape (C,), one entry per
    category in ascending id order (``category_ids``), 0 for categories never seen.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    iou_sum: Tensor
    true_positives: Tensor
    false_positives: Tensor
    false_negatives: Tensor

    def __init__(self, things: Collection[int], stuffs: Collection[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        thing_ids = _parse_category_ids(things, "things")
        stuff_ids = _parse_category_ids(stuffs, "stuffs")
        shared = sorted(set(thing_ids) & set(stuff_ids))
        if shared:
            raise ValueError(f"things and stuffs must be disjoint, both hold {shared}")
        if not thing_ids and not stuff_ids:
            raise ValueError("things and stuffs are both empty: give at least one category id")
        self.things = tuple(sorted(thing_ids))
        self.stuffs = tuple(sorted(stuff_ids))
        self.category_ids = tuple(sorted(thing_ids + stuff_ids))
        num_categories = len(self.category_ids)
        ids = torch.tensor(self.category_ids)

        category_index = torch.full((self.category_ids[-1] + 1,), num_categories, dtype=torch.long)
        category_index[ids] = torch.arange(num_categories)
        # Indexed by category index, with a last entry for void / unlabelled.
        is_thing = torch.tensor([c in self.things for c in self.category_ids] + [False])
        self.register_buffer("_category_index", category_index, persistent=False)
        self.register_buffer("_is_thing", is_thing, persistent=False)

        self.add_state("iou_sum", torch.zeros(num_categories, dtype=torch.float64), "sum")
        self.add_state("true_positives", torch.zeros(num_categories, dtype=torch.long), "sum")
        self.add_state("false_positives", torch.zeros(num_categories, dtype=torch.long), "sum")
        self.add_state("false_negatives", torch.zeros(num_categories, dtype=torch.long), "sum")

    def update(self, preds: Tensor, target: Tensor, crowd: Tensor | None = None) -> None:
        """Add a batch: ``preds``, ``target`` integer (B, H, W, 2); ``crowd`` bool (B, H, W)."""
        _check_panoptic_map(preds, "preds")
        _check_panoptic_map(target, "target")
        if preds.shape != target.shape:
            raise ValueError(
                f"preds and target must have the same shape, got {tuple(preds.shape)} "
                f"and {tuple(target.shape)}"
            )
        if crowd is not None:
            if not isinstance(crowd, Tensor) or crowd.dtype != torch.bool:
                raise ValueError(
                    f"crowd must be a bool tensor, got {getattr(crowd, 'dtype', crowd)!r}"
                )
            if crowd.shape != target.shape[:3]:
                raise ValueError(
                    f"crowd must have shape (B, H, W) = {tuple(target.shape[:3])}, "
                    f"got {tuple(crowd.shape)}"
                )
        if target.numel() == 0:
            return
        stats = _match_segments(*self._segment_pairs(preds, target, crowd), len(self.category_ids))
        self.iou_sum += stats[0]
        self.true_positives += stats[1]
        self.false_positives += stats[2]
        self.false_negatives += stats[3]

    def _segment_pairs(
        self, preds: Tensor, target: Tensor, crowd: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Arguments of ``_match_segments`` (all but ``num_categories``) for one batch."""
        batch = target.shape[0]
        pred_keys, pred_layout = _pixel_keys(preds, None, "preds")
        pred_space = batch * pred_layout.per_image
        pred_present, pred_rank = _distinct(pred_keys, pred_space)
        pred_image, pred_cat, pred_inst, _ = pred_layout.decode(pred_present)
        # Pair keys hold the predicted segment's rank within its image, so their range grows
        # linearly with the batch rather than quadratically.
        pred_per_image = torch.bincount(pred_image, minlength=batch)
        pred_start = pred_per_image.cumsum(0) - pred_per_image
        pred_max = int(pred_per_image.max())
        local = torch.arange(pred_present.numel(), device=pred_keys.device) - pred_start[pred_image]
        pred_local = _relabel(pred_keys, pred_space, pred_present, pred_rank, local)
        del pred_keys, pred_rank

        gt_keys, gt_layout = _pixel_keys(target, crowd, "target")
        gt_space = batch * gt_layout.per_image
        gt_present, gt_rank = _distinct(gt_keys, gt_space)
        gt_image, gt_cat, gt_inst, gt_flag = gt_layout.decode(gt_present)
        scaled = torch.arange(gt_present.numel(), device=gt_keys.device) * pred_max
        pair_key = _relabel(gt_keys, gt_space, gt_present, gt_rank, scaled).add_(pred_local)
        del gt_keys, gt_rank, pred_local
        raw_pairs, raw_area = _count(pair_key, gt_present.numel() * pred_max)
        raw_gt = raw_pairs // pred_max
        raw_pred = raw_pairs % pred_max + pred_start[gt_image[raw_gt]]

        # From raw segments to the evaluated ones: unknown categories become void (target) or
        # unlabelled (preds), stuff instance ids are dropped, crowd pixels of a category merge.
        void = len(self.category_ids)
        gt_index = self._index_of(gt_cat)
        gt_is_crowd = gt_flag.bool() & (gt_index != void)
        gt_thing = self._is_thing[gt_index] & ~gt_is_crowd
        if (gt_thing & (gt_inst < 0)).any():
            raise ValueError("target holds negative instance ids on thing categories")
        gt_rows = torch.stack(
            [gt_image, gt_index, gt_is_crowd.long(), torch.where(gt_thing, gt_inst, 0)], dim=1
        )
        gt_segments, gt_of_raw = torch.unique(gt_rows, dim=0, return_inverse=True)

        pred_index = self._index_of(pred_cat)
        pred_thing = self._is_thing[pred_index]
        if (pred_thing & (pred_inst < 0)).any():
            raise ValueError("preds holds negative instance ids on thing categories")
        pred_rows = torch.stack([pred_image, pred_index, torch.where(pred_thing, pred_inst, 0)], 1)
        pred_segments, pred_of_raw = torch.unique(pred_rows, dim=0, return_inverse=True)

        num_pred = pred_segments.shape[0]
        merged = gt_of_raw[raw_gt] * num_pred + pred_of_raw[raw_pred]
        pairs, pair_of_raw = torch.unique(merged, return_inverse=True)
        pair_area = torch.zeros_like(pairs).index_add_(0, pair_of_raw, raw_area)
        gt_crowd = gt_segments[:, 2].bool()
        return (
            pairs // num_pred,
            pairs % num_pred,
            pair_area,
            gt_segments[:, 1],
            gt_crowd,
            gt_crowd,
            pred_segments[:, 1],
        )

    def _index_of(self, category_id: Tensor) -> Tensor:
        """Category index (S,) of category ids (S,); unknown ids map to C (void)."""
        top = self._category_index.numel() - 1
        known = (category_id >= 0) & (category_id <= top)
        return torch.where(
            known, self._category_index[category_id.clamp(0, top)], len(self.category_ids)
        )

    def compute(self) -> dict[str, Tensor]:
        """PQ, SQ, RQ overall, for things, for stuff, and per category (see the class docstring)."""
        pq, sq, rq, counted = _per_class(
            self.iou_sum, self.true_positives, self.false_positives, self.false_negatives
        )
        out = {}
        is_thing = self._is_thing[:-1]
        groups = {"": counted, "_things": counted & is_thing, "_stuff": counted & ~is_thing}
        for suffix, mask in groups.items():
            out[f"pq{suffix}"] = _masked_mean(pq, mask)
            out[f"sq{suffix}"] = _masked_mean(sq, mask)
            out[f"rq{suffix}"] = _masked_mean(rq, mask)
        out.update(per_class_pq=pq, per_class_sq=sq, per_class_rq=rq)
        return out


@dataclass(frozen=True)
class _ImageJob:
    """One image of a COCO panoptic evaluation, as handed to a worker."""

    gt_ann: dict[str, Any]
    pred_ann: dict[str, Any]
    gt_png: Path
    pred_png: Path
    gt_json_file: Path
    pred_json_file: Path
    category_index: dict[int, int]


def _load_json(path: Path, role: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{role} JSON file {path} does not exist")
    try:
        with path.open() as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{role} JSON file {path} is not valid JSON: {err}") from err
    required = ["annotations", "categories"] if role == "ground-truth" else ["annotations"]
    for key in required:
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise KeyError(f"{role} JSON file {path} has no {key!r} list")
    return data


def _read_segment_ids(png: Path) -> Tensor:
    """Segment ids (H, W) int64 of a COCO panoptic PNG: id = R + 256 G + 256^2 B."""
    if not png.is_file():
        raise FileNotFoundError(f"panoptic PNG {png} does not exist")
    with Image.open(png) as image:
        if image.mode not in ("RGB", "RGBA"):
            raise ValueError(f"panoptic PNG {png} must be RGB-encoded, got mode {image.mode}")
        rgb = np.asarray(image.convert("RGB"), dtype=np.int64)
    return torch.from_numpy(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2])


def _segment_ids(
    segments: Any, json_file: Path, image_id: Any, category_index: dict[int, int]
) -> Tensor:
    """Segment ids (S,) of one ``segments_info`` list, after checking the list."""
    if not isinstance(segments, list):
        raise KeyError(f"{json_file}: image {image_id} has no 'segments_info' list")
    ids = []
    for segment in segments:
        for key in ("id", "category_id"):
            if key not in segment:
                raise KeyError(f"{json_file}: a segment of image {image_id} has no {key!r}")
        if segment["category_id"] not in category_index:
            raise KeyError(
                f"{json_file}: in image {image_id} segment {segment['id']} has unknown "
                f"category_id {segment['category_id']}"
            )
        ids.append(int(segment["id"]))
    if 0 in ids:
        raise ValueError(f"{json_file}: image {image_id} uses segment id 0, which means void")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{json_file}: image {image_id} lists a segment id more than once")
    return torch.tensor(ids, dtype=torch.long)


def _index_pixels(
    pixel_ids: Tensor, segment_ids: Tensor, png: Path, json_file: Path, image_id: Any
) -> tuple[Tensor, Tensor]:
    """Position in ``segment_ids`` (S,) of every pixel (H, W); void (id 0) maps to S.

    Returns the index map (H, W) and the pixel count of each of the S + 1 entries.
    """
    num = segment_ids.numel()
    void = pixel_ids == 0
    if num == 0:
        found = torch.zeros_like(void)
        index = torch.zeros_like(pixel_ids)
    else:
        order = torch.argsort(segment_ids)
        sorted_ids = segment_ids[order]
        position = torch.searchsorted(sorted_ids, pixel_ids).clamp_(max=num - 1)
        found = sorted_ids[position] == pixel_ids
        index = torch.where(void, num, order[position])
    stray = ~(found | void)
    if stray.any():
        unknown = torch.unique(pixel_ids[stray])[:5].tolist()
        raise KeyError(
            f"{png}: segment ids {unknown} are in the PNG but not in the segments_info of image "
            f"{image_id} in {json_file}"
        )
    area = torch.bincount(index.reshape(-1), minlength=num + 1)
    absent = segment_ids[area[:num] == 0]
    if absent.numel():
        raise KeyError(
            f"{json_file}: segments {absent.tolist()} of image {image_id} are in segments_info "
            f"but not in {png}"
        )
    return index, area


def _evaluate_image(job: _ImageJob) -> np.ndarray:
    """Per-category sums (4, C) float64 (IoU, TP, FP, FN) of one image."""
    image_id = job.gt_ann.get("image_id")
    num_categories = len(job.category_index)
    gt_segments = job.gt_ann.get("segments_info")
    pred_segments = job.pred_ann.get("segments_info")
    gt_ids = _segment_ids(gt_segments, job.gt_json_file, image_id, job.category_index)
    pred_ids = _segment_ids(pred_segments, job.pred_json_file, image_id, job.category_index)
    gt_pixels = _read_segment_ids(job.gt_png)
    pred_pixels = _read_segment_ids(job.pred_png)
    if gt_pixels.shape != pred_pixels.shape:
        raise ValueError(
            f"{job.pred_png} is {tuple(pred_pixels.shape)} but the ground truth {job.gt_png} is "
            f"{tuple(gt_pixels.shape)}"
        )
    gt_index, gt_area = _index_pixels(gt_pixels, gt_ids, job.gt_png, job.gt_json_file, image_id)
    pred_index, _ = _index_pixels(pred_pixels, pred_ids, job.pred_png, job.pred_json_file, image_id)
    for segment, pixels in zip(gt_segments, gt_area.tolist()):
        # The reference takes ground-truth areas from the JSON; insisting they are right keeps
        # our pixel counts giving the same numbers.
        if "area" in segment and int(segment["area"]) != pixels:
            raise ValueError(
                f"{job.gt_json_file}: segment {segment['id']} of image {image_id} has area "
                f"{segment['area']} but {pixels} pixels in {job.gt_png}"
            )

    gt_category = [job.category_index[s["category_id"]] for s in gt_segments] + [num_categories]
    gt_crowd = [bool(s.get("iscrowd", 0)) for s in gt_segments] + [False]
    # Like the reference, only the last crowd segment of a category (in segments_info order)
    # excuses unmatched predictions of that category.
    last_crowd = {gt_category[i]: i for i, is_crowd in enumerate(gt_crowd) if is_crowd}
    gt_excuses = torch.zeros(len(gt_category), dtype=torch.bool)
    gt_excuses[list(last_crowd.values())] = True
    pred_category = [job.category_index[s["category_id"]] for s in pred_segments] + [num_categories]

    pred_span = len(pred_category)
    pairs, pair_area = _count(gt_index * pred_span + pred_index, len(gt_category) * pred_span)
    stats = _match_segments(
        pairs // pred_span,
        pairs % pred_span,
        pair_area,
        torch.tensor(gt_category),
        torch.tensor(gt_crowd),
        gt_excuses,
        torch.tensor(pred_category),
        num_categories,
    )
    return torch.stack([s.double() for s in stats]).numpy()


def _init_worker() -> None:
    # A forked child must not enter the parent's OpenMP pool (it hangs), as in DataLoader workers.
    torch.set_num_threads(1)


def pq_compute(
    gt_json_file: str | os.PathLike[str],
    pred_json_file: str | os.PathLike[str],
    gt_folder: str | os.PathLike[str] | None = None,
    pred_folder: str | os.PathLike[str] | None = None,
    *,
    workers: int | None = None,
) -> dict[str, Any]:
    """Evaluate COCO panoptic predictions; a drop-in for the COCO panoptic API's ``pq_compute``.

    Reads COCO panoptic JSON (``annotations`` with ``segments_info``: ``id``, ``category_id``,
    ``iscrowd``; ``categories`` with ``isthing`` in the ground truth) and PNGs whose RGB colour
    encodes the segment id (0 = void). Unlike the reference it prints nothing; ``main`` prints.

    Args:
        gt_json_file: ground-truth JSON; its ``categories`` define the evaluated categories.
        pred_json_file: prediction JSON; predictions of images absent from the ground truth are
            ignored.
        gt_folder: folder of ground-truth PNGs; default ``gt_json_file`` without ``.json``.
        pred_folder: folder of predicted PNGs; default ``pred_json_file`` without ``.json``.
        workers: processes evaluating images in parallel; default ``os.cpu_count()``, 1 runs in
            this process.

    Returns:
        ``{"All": {"pq", "sq", "rq", "n"}, "Things": {...}, "Stuff": {...},
        "per_class": {category_id: {"pq", "sq", "rq"}}}`` with floats in [0, 1] and ``n`` the
        number of categories averaged (a group with ``n == 0`` scores 0).

    Raises:
        FileNotFoundError: a JSON file, folder or PNG is missing.
        KeyError: a PNG segment id missing from the JSON, a JSON segment absent from the PNG, an
            unknown ``category_id``, or a ground-truth image without a prediction.
        ValueError: malformed JSON, mismatched image sizes, duplicate or zero segment ids, or a
            ground-truth ``area`` that disagrees with its PNG.
    """
    gt_json_file, pred_json_file = Path(gt_json_file), Path(pred_json_file)
    gt_json = _load_json(gt_json_file, "ground-truth")
    pred_json = _load_json(pred_json_file, "prediction")
    gt_folder = Path(gt_folder) if gt_folder is not None else _default_folder(gt_json_file)
    pred_folder = Path(pred_folder) if pred_folder is not None else _default_folder(pred_json_file)
    for folder, role in ((gt_folder, "ground-truth"), (pred_folder, "prediction")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{role} segmentation folder {folder} does not exist")
    if workers is None:
        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")

    categories = gt_json["categories"]
    category_ids = [int(c["id"]) for c in categories]
    if len(set(category_ids)) != len(category_ids):
        raise ValueError(f"{gt_json_file}: 'categories' lists a category id more than once")
    category_index = {cid: i for i, cid in enumerate(category_ids)}
    is_thing = torch.tensor([c.get("isthing", 0) == 1 for c in categories], dtype=torch.bool)

    predictions = {ann.get("image_id"): ann for ann in pred_json["annotations"]}
    jobs = []
    for gt_ann in gt_json["annotations"]:
        image_id = gt_ann.get("image_id")
        pred_ann = predictions.get(image_id)
        if pred_ann is None:
            raise KeyError(f"{pred_json_file} has no prediction for the image with id {image_id}")
        for ann, json_file in ((gt_ann, gt_json_file), (pred_ann, pred_json_file)):
            if "file_name" not in ann:
                raise KeyError(f"{json_file}: the annotation of image {image_id} has no file_name")
        jobs.append(
            _ImageJob(
                gt_ann=gt_ann,
                pred_ann=pred_ann,
                gt_png=gt_folder / gt_ann["file_name"],
                pred_png=pred_folder / pred_ann["file_name"],
                gt_json_file=gt_json_file,
                pred_json_file=pred_json_file,
                category_index=category_index,
            )
        )

    totals = np.zeros((4, len(categories)), dtype=np.float64)
    workers = min(workers, len(jobs))
    if workers <= 1:
        for job in jobs:
            totals += _evaluate_image(job)
    else:
        chunk = max(1, len(jobs) // (4 * workers))
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
            for stats in pool.map(_evaluate_image, jobs, chunksize=chunk):
                totals += stats

    iou_sum = torch.from_numpy(totals[0])
    tp, fp, fn = (torch.from_numpy(totals[i]).round().long() for i in (1, 2, 3))
    pq, sq, rq, counted = _per_class(iou_sum, tp, fp, fn)
    results: dict[str, Any] = {}
    for name, mask in (
        ("All", counted),
        ("Things", counted & is_thing),
        ("Stuff", counted & ~is_thing),
    ):
        results[name] = {
            "pq": float(_masked_mean(pq, mask)),
            "sq": float(_masked_mean(sq, mask)),
            "rq": float(_masked_mean(rq, mask)),
            "n": int(mask.sum()),
        }
    results["per_class"] = {
        cid: {"pq": float(pq[i]), "sq": float(sq[i]), "rq": float(rq[i])}
        for i, cid in enumerate(category_ids)
    }
    return results


def _default_folder(json_file: Path) -> Path:
    return json_file.with_suffix("") if json_file.suffix == ".json" else json_file


def format_table(results: dict[str, Any]) -> str:
    """The All / Things / Stuff table of a ``pq_compute`` result, in percent."""
    lines = [f"{'':10s}| {'PQ':>6s} {'SQ':>6s} {'RQ':>6s} {'N':>5s}", "-" * 38]
    for name in ("All", "Things", "Stuff"):
        row = results[name]
        lines.append(
            f"{name:10s}| {100 * row['pq']:6.1f} {100 * row['sq']:6.1f} {100 * row['rq']:6.1f} "
            f"{row['n']:5d}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: evaluate COCO panoptic predictions and print the PQ table."""
    parser = argparse.ArgumentParser(
        prog="python -m seglab.metrics.panoptic_quality",
        description="Panoptic quality (PQ, SQ, RQ) of COCO panoptic predictions, COCO rules.",
    )
    parser.add_argument("--gt-json", required=True, help="ground-truth COCO panoptic JSON file")
    parser.add_argument("--pred-json", required=True, help="prediction COCO panoptic JSON file")
    parser.add_argument(
        "--gt-folder", help="ground-truth PNG folder (default: --gt-json minus .json)"
    )
    parser.add_argument(
        "--pred-folder", help="prediction PNG folder (default: --pred-json minus .json)"
    )
    parser.add_argument("--workers", type=int, help="parallel processes (default: all CPUs)")
    args = parser.parse_args(argv)
    try:
        results = pq_compute(
            args.gt_json, args.pred_json, args.gt_folder, args.pred_folder, workers=args.workers
        )
    except (OSError, KeyError, ValueError) as err:
        # KeyError's str() quotes its message
        parser.error(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err))
    print(format_table(results))


if __name__ == "__main__":
    main()
