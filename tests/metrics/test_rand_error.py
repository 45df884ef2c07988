import math

import numpy as np
import pytest
import torch

from seglab.metrics.rand_error import RandError, rand_error


def _two_cells() -> np.ndarray:
    """A 10x9 ISBI-style mask: two 4x4 cells (class 1) in membrane (class 0), a membrane column
    between them."""
    mask = np.zeros((10, 9), np.int64)
    mask[1:5, 0:4] = 1
    mask[1:5, 5:9] = 1
    return mask


def _merged_error(sizes: list[int]) -> float:
    """Adapted Rand error when ground-truth cells of these sizes are predicted as one segment."""
    n = sum(sizes)
    same_in_both = sum(s * s for s in sizes) - n  # ordered pairs in one cell (and one segment)
    same_in_pred = n * n - n
    return 1.0 - same_in_both / (0.5 * same_in_both + 0.5 * same_in_pred)


def test_perfect_prediction_is_zero():
    target = _two_cells()
    assert rand_error(target, target) == 0.0
    assert rand_error(torch.from_numpy(target), torch.from_numpy(target).bool()) == 0.0


def test_merged_pair_of_cells():
    target = _two_cells()
    merged = target.copy()
    merged[1:5, 4] = 1  # the membrane between the cells predicted as cell
    expected = _merged_error([16, 16])
    assert expected == pytest.approx(16 / 46)
    assert rand_error(merged, target) == pytest.approx(expected)


def test_uses_four_connectivity():
    target = _two_cells()
    bridged = target.copy()
    bridged[5, 4] = 1  # diagonal to both cells: it would join them under 8-connectivity
    assert rand_error(bridged, target) == 0.0


def test_foreground_value_and_ignored_pixels():
    target = _two_cells() * 255
    assert rand_error(target, target, foreground=255) == 0.0
    target_with_void = target.copy()
    target_with_void[1:5, 0] = 7  # void (e.g. an ignore label) is not scored, like membrane
    assert rand_error(target, target_with_void, foreground=255) == 0.0
    assert rand_error(np.full_like(target, 255), target_with_void, foreground=255) == pytest.approx(
        _merged_error([12, 16])
    )


def test_nothing_to_score_is_nan():
    empty = np.zeros((6, 6), np.uint8)
    assert math.isnan(rand_error(np.ones((6, 6), np.uint8), empty))


def test_bad_inputs_fail_clearly():
    target = _two_cells()
    with pytest.raises(ValueError, match=r"shape \(10, 8\) differs"):
        rand_error(target[:, :8], target)
    with pytest.raises(TypeError, match="integer class ids, got dtype float32"):
        rand_error(target.astype(np.float32), target)
    with pytest.raises(ValueError, match=r"\(H, W\) class mask"):
        rand_error(target[None], target[None])


def test_metric_averages_over_images():
    target = torch.from_numpy(_two_cells())
    merged = target.clone()
    merged[1:5, 4] = 1
    metric = RandError()
    metric.update(torch.stack([target, merged]), torch.stack([target, target]))
    metric.update(torch.zeros(10, 9, dtype=torch.long), torch.zeros(10, 9, dtype=torch.long))
    assert metric.compute().item() == pytest.approx(_merged_error([16, 16]) / 2)
    assert metric.count.item() == 2

    logits = torch.stack([1 - merged, merged]).float().unsqueeze(0)  # (1, 2, H, W)
    metric.reset()
    metric.update(logits, target.unsqueeze(0))
    assert metric.compute().item() == pytest.approx(_merged_error([16, 16]))

    with pytest.raises(ValueError, match="matching"):
        metric.update(target.unsqueeze(0), target[:, :5].unsqueeze(0))
    with pytest.raises(ValueError, match="logits"):
        metric.update(target.float(), target)


def _bridged_logits(bridge_probability: float) -> torch.Tensor:
    """(1, 2, 10, 9) logits of the two cells of ``_two_cells``: cells 0.99 foreground, membrane
    0.01, and one membrane pixel between them at ``bridge_probability``."""
    probability = np.where(_two_cells() == 1, 0.99, 0.01)
    probability[2, 4] = bridge_probability
    p = torch.from_numpy(probability)
    return torch.stack([torch.log(1 - p), torch.log(p)])[None].float()


def test_seeded_watershed_keeps_cells_apart_that_a_bridge_merges():
    target = torch.from_numpy(_two_cells())[None]
    logits = _bridged_logits(0.6)  # above 0.5: the argmax components merge the two cells
    plain, watershed = RandError(), RandError(watershed={"seed_threshold": 0.9})
    plain.update(logits, target)
    watershed.update(logits, target)
    assert plain.compute().item() == pytest.approx(_merged_error([16, 16]))
    assert watershed.compute().item() == 0.0


def test_seeded_watershed_options_are_checked():
    with pytest.raises(ValueError, match="seed_threshold is required"):
        RandError(watershed={"sigma": 1.0})
    with pytest.raises(ValueError, match=r"unknown.*\['seed_threshold'"):
        RandError(watershed={"seed_threshold": 0.9, "threshold": 0.5})
    with pytest.raises(ValueError, match="mask_threshold"):
        RandError(watershed={"seed_threshold": 0.4})
    with pytest.raises(ValueError, match="float logits"):
        RandError(watershed={"seed_threshold": 0.9}).update(
            torch.from_numpy(_two_cells())[None], torch.from_numpy(_two_cells())[None]
        )
