"""U-Net's pixel-wise loss weight map (Ronneberger et al., MICCAI 2015, equation 2).

Written by hand because no installed library computes it; scipy does the labelling and the
distance transforms. ``UNetWeightMap`` is the object a data config builds (``data.weight_map``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["UNetWeightMap", "connected_components", "separation_reach", "unet_weight_map"]


def connected_components(
    mask: np.ndarray, *, foreground: int = 1, connectivity: int = 4
) -> np.ndarray:
    """Instance-id map (int32, 0 = background, objects 1..n) of the connected components of the
    pixels where ``mask == foreground``; ``connectivity`` is 4 (edge neighbours, as for the ISBI
    cells) or 8.

    Shapes: ``mask`` (H, W) -> (H, W).
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connected_components: connectivity={connectivity}, expected 4 or 8")
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels, _ = ndimage.label(np.asarray(mask) == foreground, structure=structure, output=np.int32)
    return labels


def separation_reach(sigma: float, cutoff: float) -> float:
    """Largest ``d1 + d2`` at which ``exp(-(d1 + d2)^2 / (2 sigma^2))`` is still at least
    ``cutoff``: ``sigma * sqrt(2 ln(1 / cutoff))`` (18.6 pixels for sigma = 5, cutoff = 1e-3)."""
    return sigma * math.sqrt(2.0 * math.log(1.0 / cutoff))


def _class_weight_map(
    background: np.ndarray, class_weights: str | Sequence[float] | None
) -> np.ndarray:
    if class_weights is None:
        return np.ones(background.shape, np.float32)
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(
                f"unet_weight_map: class_weights={class_weights!r}; expected None, 'balanced' or "
                "(background_weight, foreground_weight)"
            )
        counts = np.array([background.sum(), background.size - background.sum()], np.float64)
        present = np.count_nonzero(counts)
        values = np.divide(background.size, present * counts, out=np.ones(2), where=counts > 0)
    else:
        values = np.asarray(class_weights, np.float64)
        if values.shape != (2,) or not np.isfinite(values).all() or (values < 0).any():
            raise ValueError(
                f"unet_weight_map: class_weights={class_weights!r}; expected two non-negative "
                "numbers (background_weight, foreground_weight)"
            )
    return np.where(background, values[0], values[1]).astype(np.float32)


def _two_nearest_border_distances(
    instances: np.ndarray, margin: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the distances to the nearest and second-nearest object (``inf`` where fewer
    than two objects lie within ``margin`` pixels of the pixel's row and column range)."""
    height, width = instances.shape
    nearest = np.full((height, width), np.inf, np.float32)
    second = np.full((height, width), np.inf, np.float32)
    labels = instances
    if labels.size and labels.max() > labels.size:  # keep find_objects' box list short
        ids, labels = np.unique(labels, return_inverse=True)
        labels = labels.reshape(instances.shape) + (1 if ids[0] != 0 else 0)
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        rows, cols = box
        r0, r1 = max(rows.start - margin, 0), min(rows.stop + margin, height)
        c0, c1 = max(cols.start - margin, 0), min(cols.stop + margin, width)
        # Distance from each pixel centre to the object's border: half a pixel less than to the
        # nearest object pixel centre, so that a gap of g pixels gives d1 + d2 = g across it.
        dist = ndimage.distance_transform_edt(labels[r0:r1, c0:c1] != label).astype(np.float32)
        dist -= 0.5
        near, sec = nearest[r0:r1, c0:c1], second[r0:r1, c0:c1]
        np.minimum(sec, np.maximum(near, dist), out=sec)
        np.minimum(near, dist, out=near)
    return nearest, second


def unet_weight_map(
    instances: np.ndarray,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: str | Sequence[float] | None = None,
    cutoff: float = 1e-3,
) -> np.ndarray:
    """U-Net's loss weight map ``w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))``.

    ``instances``: (H, W) integer ids, 0 = background (for a binary mask use
    ``connected_components`` first). ``d1``, ``d2``: distances to the border of the nearest and
    second-nearest object (to its nearest pixel centre minus half a pixel, so that across a gap
    of ``g`` pixels ``d1 + d2 = g``); the term is added on background pixels, where at least two
    objects exist. ``w_c`` over background and foreground, per image: None (1 everywhere),
    ``"balanced"`` (``N / (K * N_c)``: each of the K classes present carries N / K) or
    ``(background_weight, foreground_weight)``.

    Distances are computed per object in its box dilated by ``ceil(separation_reach(sigma,
    cutoff))`` pixels, so cost grows with the objects' area; the term is 0 where it would be
    below ``cutoff * w0`` and equals a full-image computation everywhere else.

    Returns: float32 (H, W).
    """
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise ValueError(
            f"unet_weight_map: expected an (H, W) instance map, got shape {instances.shape}"
        )
    if not np.issubdtype(instances.dtype, np.integer):
        raise TypeError(
            f"unet_weight_map: expected an integer instance-id map, got dtype {instances.dtype}; "
            "turn a binary mask into instances with connected_components"
        )
    if instances.size and instances.min() < 0:
        raise ValueError("unet_weight_map: instance ids must be >= 0 (0 = background)")
    if sigma <= 0 or w0 < 0 or not 0 < cutoff < 1:
        raise ValueError(
            f"unet_weight_map: sigma={sigma}, w0={w0}, cutoff={cutoff}; expected sigma > 0, "
            "w0 >= 0 and 0 < cutoff < 1"
        )

    background = instances == 0
    weight = _class_weight_map(background, class_weights)
    if w0 == 0 or background.all() or not background.any():
        return weight
    reach = separation_reach(sigma, cutoff)
    nearest, second = _two_nearest_border_distances(instances, math.ceil(reach))
    total = nearest + second
    near_two = background & (total <= reach)
    weight[near_two] += w0 * np.exp(-np.square(total[near_two]) / (2.0 * sigma**2))
    return weight


@dataclass(frozen=True)
class UNetWeightMap:
    """``data.weight_map``: U-Net's weight map of a semantic sample (``unet_weight_map``).

    The objects are the sample's instance ids where the dataset has them (DSB 2018's nuclei),
    else the connected components of the labelled pixels of classes other than 0 (ISBI 2012's
    cells). An unlabelled sample gets 1 everywhere; ignored pixels count as background.

    Args:
        w0, sigma: the separation term's weight and width in pixels (paper: 10 and 5).
        class_weights: ``w_c``: None (1 everywhere), ``"balanced"`` or ``(background_weight,
            foreground_weight)``.
        connectivity: 4 or 8, for the connected components.
    """

    w0: float = 10.0
    sigma: float = 5.0
    class_weights: str | Sequence[float] | None = "balanced"
    connectivity: int = 4

    def __post_init__(self) -> None:
        # fail at config time, not in the first batch
        probe = np.zeros((2, 2), np.int32)
        unet_weight_map(probe, w0=self.w0, sigma=self.sigma, class_weights=self.class_weights)
        if self.connectivity not in (4, 8):
            raise ValueError(f"data.weight_map.connectivity={self.connectivity}: expected 4 or 8")

    def __call__(
        self, mask: np.ndarray, instances: np.ndarray | None, ignore_index: int
    ) -> np.ndarray:
        """The weight map (H, W) float32 of a class mask (H, W) and its instance ids or None."""
        labelled = mask != ignore_index
        if not labelled.any():
            return np.ones(mask.shape, np.float32)
        if instances is None:
            instances = connected_components(
                labelled & (mask != 0), foreground=True, connectivity=self.connectivity
            )
        return unet_weight_map(
            instances, w0=self.w0, sigma=self.sigma, class_weights=self.class_weights
        )
