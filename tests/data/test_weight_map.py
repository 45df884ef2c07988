import math

import numpy as np
import pytest
from scipy import ndimage

from seglab.data.weight_maps import connected_components, separation_reach, unet_weight_map


def _two_slabs(gap: int = 4) -> np.ndarray:
    """Two 40-row objects side by side, ``gap`` background columns apart, on a 100x100 image."""
    instances = np.zeros((100, 100), np.int32)
    instances[10:50, 10:30] = 1
    instances[10:50, 30 + gap : 54] = 2
    return instances


def _brute_force(instances: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """Separation term from full-image distance transforms of every object, no cut-off."""
    ids = [i for i in np.unique(instances) if i != 0]
    dists = np.stack([ndimage.distance_transform_edt(instances != i) - 0.5 for i in ids])
    dists.sort(axis=0)
    term = w0 * np.exp(-np.square(dists[0] + dists[1]) / (2 * sigma**2))
    return np.where(instances == 0, term, 0.0)


@pytest.mark.parametrize("class_weights", [None, "balanced", (0.5, 2.0)])
def test_straight_gap(class_weights):
    instances = _two_slabs(gap=4)
    weight = unet_weight_map(instances, w0=10.0, sigma=5.0, class_weights=class_weights)
    assert weight.dtype == np.float32 and weight.shape == instances.shape

    background = instances == 0
    if class_weights is None:
        w_bg, w_fg = 1.0, 1.0
    elif class_weights == "balanced":
        w_bg = background.size / (2 * background.sum())
        w_fg = background.size / (2 * (~background).sum())
    else:
        w_bg, w_fg = class_weights

    gap = weight[10:50, 30:34]
    expected = w_bg + 10.0 * math.exp(-16 / 50)
    assert abs(10.0 * math.exp(-16 / 50) - 7.26) < 0.01
    np.testing.assert_allclose(gap, expected, rtol=1e-6)
    np.testing.assert_array_equal(weight[~background], np.float32(w_fg))

    below_gap = weight[50:, 32]  # leaving the gap downwards, the term fades to w_c
    assert (np.diff(below_gap) <= 1e-6).all()
    assert below_gap[-1] == np.float32(w_bg)
    assert weight[99, 99] == np.float32(w_bg) and weight[0, 99] == np.float32(w_bg)


def test_one_object_and_no_object():
    single = np.zeros((40, 50), np.int64)
    single[10:20, 10:30] = 7
    np.testing.assert_array_equal(unet_weight_map(single), np.ones((40, 50), np.float32))

    empty = np.zeros((40, 50), np.uint8)
    np.testing.assert_array_equal(unet_weight_map(empty), np.ones((40, 50), np.float32))
    np.testing.assert_array_equal(
        unet_weight_map(empty, class_weights="balanced"), np.ones((40, 50), np.float32)
    )
    assert unet_weight_map(np.zeros((0, 5), np.int32)).shape == (0, 5)


@pytest.mark.parametrize(("sigma", "cutoff"), [(5.0, 1e-3), (3.0, 1e-2)])
def test_local_equals_brute_force(sigma, cutoff):
    rng = np.random.default_rng(0)
    instances = np.zeros((96, 112), np.int32)
    yy, xx = np.mgrid[:96, :112]
    for label in range(1, 16):  # discs and boxes that may touch or overlap
        cy, cx, r = rng.integers(0, 96), rng.integers(0, 112), rng.integers(2, 9)
        if label % 2:
            instances[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = label
        else:
            instances[cy : cy + r, cx : cx + 2 * r] = label
    w0 = 10.0
    local = unet_weight_map(instances, w0=w0, sigma=sigma, cutoff=cutoff) - 1.0
    full = _brute_force(instances, w0, sigma)

    above = full >= cutoff * w0
    assert above.sum() > 200, "the case should exercise the separation term"
    assert ((full > 0) & ~above).sum() > 200, "and the cut-off"
    np.testing.assert_allclose(local[above], full[above], atol=1e-4)
    assert np.abs(local - full).max() <= cutoff * w0 + 1e-6
    assert (local[~above] == 0).all()


def test_sparse_and_huge_ids_match_consecutive_ids():
    instances = _two_slabs()
    relabelled = np.where(instances == 1, 10**12, np.where(instances == 2, 5, 0))
    np.testing.assert_array_equal(unet_weight_map(relabelled), unet_weight_map(instances))
    no_background = instances + 10**6  # every pixel an object: nothing to weigh
    np.testing.assert_array_equal(unet_weight_map(no_background), np.ones((100, 100), np.float32))


def test_separation_reach():
    assert separation_reach(5.0, 1e-3) == pytest.approx(18.58, abs=0.01)
    assert math.exp(-(separation_reach(5.0, 1e-3) ** 2) / 50) == pytest.approx(1e-3)


def test_connected_components_four_connectivity():
    mask = np.array(
        [
            [255, 0, 0, 255],
            [0, 255, 0, 255],
            [0, 0, 0, 0],
            [255, 255, 0, 255],
        ],
        np.uint8,
    )
    four = connected_components(mask, foreground=255)
    assert four.dtype == np.int32 and four.max() == 5
    assert four[0, 0] != four[1, 1] and four[0, 3] == four[1, 3] and four[3, 0] == four[3, 1]
    assert connected_components(mask, foreground=255, connectivity=8).max() == 4
    assert (connected_components(mask == 255, foreground=True) > 0).sum() == 7


def test_bad_inputs_fail_clearly():
    with pytest.raises(TypeError, match="integer instance-id map"):
        unet_weight_map(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        unet_weight_map(np.zeros((2, 4, 4), np.int32))
    with pytest.raises(ValueError, match=">= 0"):
        unet_weight_map(-np.ones((4, 4), np.int32))
    with pytest.raises(ValueError, match="class_weights='inverse'"):
        unet_weight_map(np.zeros((4, 4), np.int32), class_weights="inverse")
    with pytest.raises(ValueError, match="class_weights"):
        unet_weight_map(np.zeros((4, 4), np.int32), class_weights=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="connectivity=6"):
        connected_components(np.zeros((4, 4)), connectivity=6)
