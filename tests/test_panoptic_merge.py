"""seglab.inference.panoptic_merge: the Panoptic FPN merge heuristic, one rule per test."""

from __future__ import annotations

import pytest
import torch

from seglab.inference import panoptic_merge


def boxes_to_masks(h: int, w: int, boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """bool (N, h, w) masks, each the rectangle rows y0:y1, columns x0:x1 of (y0, y1, x0, x1)."""
    masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        masks[k, y0:y1, x0:x1] = True
    return masks


def merge(masks, scores, labels, semantic, **options):
    return panoptic_merge(
        masks,
        torch.tensor(scores, dtype=torch.float32),
        torch.tensor(labels, dtype=torch.int64),
        semantic,
        **options,
    )


def things(h: int = 8, w: int = 8) -> torch.Tensor:
    """A semantic map of the things class only (no stuff)."""
    return torch.zeros(h, w, dtype=torch.int64)


def check_consistent(segment_ids: torch.Tensor, segments: list[dict]) -> None:
    """Ids 1..n in order, each segment's area its pixel count, no pixel without a segment."""
    assert segment_ids.dtype == torch.int32
    assert [s["id"] for s in segments] == list(range(1, len(segments) + 1))
    counts = torch.bincount(segment_ids.flatten().long(), minlength=len(segments) + 1)
    assert len(counts) == len(segments) + 1
    assert counts[1:].tolist() == [s["area"] for s in segments]
    assert all(s["area"] > 0 for s in segments)


def test_instances_in_descending_score_claim_pixels_first():
    # Two overlapping instances; the later, higher-scored one is placed first and keeps the overlap.
    masks = boxes_to_masks(8, 8, [(0, 4, 0, 4), (0, 4, 2, 6)])
    ids, segments = merge(masks, [0.6, 0.9], [1, 2], things(), overlap_threshold=0.6)
    check_consistent(ids, segments)
    assert [(s["category_id"], s["score"]) for s in segments] == [
        (2, pytest.approx(0.9)),
        (1, pytest.approx(0.6)),
    ]
    assert (ids[0:4, 2:6] == 1).all()  # the 0.9 instance, whole
    assert (ids[0:4, 0:2] == 2).all() and segments[1]["area"] == 8  # the 0.6 one, untaken part


def test_stops_below_score_threshold_and_keeps_a_score_equal_to_it():
    masks = boxes_to_masks(8, 8, [(0, 2, 0, 2), (2, 4, 0, 2), (4, 6, 0, 2)])
    ids, segments = merge(masks, [0.5, 0.49, 0.8], [1, 2, 3], things(), score_threshold=0.5)
    check_consistent(ids, segments)
    assert [s["category_id"] for s in segments] == [3, 1]
    assert (ids[2:4, 0:2] == 0).all()


def test_ties_keep_the_input_order():
    # Equal scores: the earlier instance takes the shared pixels, ids follow the input order.
    masks = boxes_to_masks(8, 8, [(0, 4, 0, 4), (0, 4, 0, 4), (4, 8, 0, 4), (4, 8, 4, 8)])
    ids, segments = merge(masks, [0.7, 0.7, 0.7, 0.9], [3, 1, 2, 1], things())
    check_consistent(ids, segments)
    assert [s["category_id"] for s in segments] == [1, 3, 2]  # the 0.9 one, then input order
    assert (ids[0:4, 0:4] == 2).all() and (ids[4:8, 0:4] == 3).all()
    _, segments = merge(masks[[1, 0, 2]], [0.7, 0.7, 0.7], [1, 3, 2], things())
    assert [s["category_id"] for s in segments] == [1, 2]


def test_empty_masks_are_skipped_without_using_an_id():
    masks = boxes_to_masks(8, 8, [(0, 0, 0, 0), (1, 3, 1, 3)])
    ids, segments = merge(masks, [0.9, 0.8], [1, 2], things())
    check_consistent(ids, segments)
    assert [(s["id"], s["category_id"]) for s in segments] == [(1, 2)]


def test_overlap_above_threshold_drops_the_instance_at_or_below_adds_untaken_pixels():
    # The second instance (4x4 = 16 px) overlaps the first on 8 px: a ratio of exactly 0.5.
    masks = boxes_to_masks(8, 8, [(0, 4, 0, 4), (0, 4, 2, 6)])
    ids, segments = merge(masks, [0.9, 0.8], [1, 2], things(), overlap_threshold=0.5)
    check_consistent(ids, segments)
    assert [s["area"] for s in segments] == [16, 8]  # 0.5 is not above 0.5: partial add
    assert (ids[0:4, 4:6] == 2).all() and (ids[0:4, 2:4] == 1).all()
    ids, segments = merge(masks, [0.9, 0.8], [1, 2], things(), overlap_threshold=0.49)
    check_consistent(ids, segments)
    assert [s["area"] for s in segments] == [16]
    assert (ids[0:4, 4:6] == 0).all()


def test_an_instance_left_without_pixels_makes_no_segment():
    masks = boxes_to_masks(8, 8, [(0, 4, 0, 4), (1, 3, 1, 3)])  # the second inside the first
    ids, segments = merge(masks, [0.9, 0.8], [1, 2], things(), overlap_threshold=1.0)
    check_consistent(ids, segments)
    assert [s["category_id"] for s in segments] == [1]


def test_stuff_fills_untaken_pixels_and_small_regions_are_dropped():
    semantic = torch.zeros(8, 8, dtype=torch.int64)
    semantic[:, 4:] = 2  # 32 px of stuff class 2 ...
    semantic[6:, :4] = 1  # ... and 8 px of stuff class 1
    masks = boxes_to_masks(8, 8, [(0, 2, 2, 6)])  # 4 px of it over class 2
    ids, segments = merge(masks, [0.9], [5], semantic, stuff_area=8)
    check_consistent(ids, segments)
    assert [(s["category_id"], s["isthing"], s["score"], s["area"]) for s in segments] == [
        (5, True, pytest.approx(0.9), 8),
        (1, False, None, 8),  # exactly stuff_area: kept
        (2, False, None, 28),  # the class-2 pixels the instance did not take
    ]
    ids, segments = merge(masks, [0.9], [5], semantic, stuff_area=9)
    check_consistent(ids, segments)
    assert [s["category_id"] for s in segments] == [5, 2]
    assert (ids[6:, :4] == 0).all()


def test_the_things_class_never_becomes_stuff():
    semantic = torch.full((8, 8), 3, dtype=torch.int64)
    semantic[:4] = 0  # the things class on the top half
    ids, segments = merge(boxes_to_masks(8, 8, []), [], [], semantic, stuff_area=1)
    check_consistent(ids, segments)
    assert [s["category_id"] for s in segments] == [3]
    assert (ids[:4] == 0).all() and (ids[4:] == 1).all()
    # another things_class: class 3 is now the things class, class 0 stuff
    ids, segments = merge(boxes_to_masks(8, 8, []), [], [], semantic, things_class=3, stuff_area=1)
    assert [s["category_id"] for s in segments] == [0]
    assert (ids[:4] == 1).all() and (ids[4:] == 0).all()


def test_all_void():
    ids, segments = merge(boxes_to_masks(8, 8, [(0, 4, 0, 4)]), [0.1], [1], things())
    assert segments == [] and (ids == 0).all()


def test_no_instances_only_stuff():
    semantic = torch.ones(8, 8, dtype=torch.int64)
    semantic[:, :3] = 2
    ids, segments = merge(torch.zeros(0, 8, 8, dtype=torch.bool), [], [], semantic, stuff_area=1)
    check_consistent(ids, segments)
    assert [(s["category_id"], s["area"]) for s in segments] == [(1, 40), (2, 24)]


def test_no_stuff_only_things():
    semantic = torch.ones(8, 8, dtype=torch.int64)  # stuff everywhere, but below stuff_area
    masks = boxes_to_masks(8, 8, [(0, 3, 0, 3), (5, 8, 5, 8)])
    ids, segments = merge(masks, [0.8, 0.9], [1, 2], semantic)
    check_consistent(ids, segments)
    assert [s["isthing"] for s in segments] == [True, True]
    assert (ids[5:, 5:] == 1).all() and (ids[:3, :3] == 2).all()


def test_many_segments_do_not_overlap_and_cover_what_they_claim():
    generator = torch.Generator().manual_seed(0)
    h = w = 32
    masks = torch.rand(12, h, w, generator=generator) > 0.6
    scores = torch.rand(12, generator=generator)
    labels = torch.randint(1, 4, (12,), generator=generator)
    semantic = torch.randint(0, 4, (h, w), generator=generator)
    ids, segments = panoptic_merge(
        masks, scores, labels, semantic, score_threshold=0.2, overlap_threshold=0.8, stuff_area=20
    )
    check_consistent(ids, segments)
    assert any(s["isthing"] for s in segments) and any(not s["isthing"] for s in segments)
    for s in segments:
        pixels = ids == s["id"]
        if not s["isthing"]:
            assert (semantic[pixels] == s["category_id"]).all()
    thing_scores = [s["score"] for s in segments if s["isthing"]]
    assert thing_scores == sorted(thing_scores, reverse=True)


def test_bad_inputs_name_the_argument():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="masks"):
        merge(masks, [0.9], [1], things())
    with pytest.raises(ValueError, match="semantic must be"):
        merge(masks, [0.9, 0.8], [1, 1], things()[None])
    with pytest.raises(ValueError, match="overlap_threshold=1.5"):
        merge(masks, [0.9, 0.8], [1, 1], things(), overlap_threshold=1.5)
    with pytest.raises(ValueError, match="stuff_area=-1"):
        merge(masks, [0.9, 0.8], [1, 1], things(), stuff_area=-1)
