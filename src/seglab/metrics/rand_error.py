"""Foreground-restricted Rand error of the ISBI 2012 EM segmentation challenge.

The error compares segments: by default the 4-connected components of the predicted foreground
(cell) class. ``seeded_watershed`` is the optional post-processing of the foreground probability
map before the error (``RandError(watershed=...)``): a one-pixel gap in a predicted membrane
merges two cells into one component, while the watershed keeps them apart when each has a
confident core.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage
from skimage.metrics import adapted_rand_error
from skimage.segmentation import watershed as _watershed
from torchmetrics import Metric

__all__ = ["RandError", "rand_error", "seeded_watershed"]
WATERSHED_KEYS = ("seed_threshold", "mask_threshold", "sigma")

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def _as_class_mask(mask: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(
            f"rand_error: {name} must be an (H, W) class mask, got shape {array.shape}"
        )
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise TypeError(
            f"rand_error: {name} must hold integer class ids, got dtype {array.dtype} "
            "(take the argmax over the class dimension of logits first)"
        )
    return array


def rand_error(
    pred_mask: np.ndarray | torch.Tensor,
    target_mask: np.ndarray | torch.Tensor,
    *,
    foreground: int = 1,
) -> float:
    """Adapted Rand error in [0, 1] between the 4-connected components of the ``foreground``
    (cell) class in the ground truth and in the prediction, as scikit-image's
    ``adapted_rand_error`` computes it (1 - F-score of Rand precision and recall over pixel pairs).

    Only pixels of the ground-truth foreground are scored (the ISBI 2012 challenge's
    foreground-restricted Rand score): membrane and any other non-foreground target pixel, such
    as an ignore label, are left out. Predicted non-foreground pixels inside ground-truth cells
    count as one segment together (scikit-image's convention; the SNEMI3D contest script counts
    each of them as a segment of its own). Returns 0 when every scored pixel is its own segment in both, and
    ``nan`` when the target has no foreground pixel, as there is nothing to score.

    Shapes: ``pred_mask`` and ``target_mask`` (H, W) integer or bool class masks.
    """
    pred = _as_class_mask(pred_mask, "pred_mask")
    target = _as_class_mask(target_mask, "target_mask")
    if pred.shape != target.shape:
        raise ValueError(
            f"rand_error: pred_mask shape {pred.shape} differs from target_mask shape {target.shape}"
        )
    test_segments, _ = ndimage.label(pred == foreground, structure=_FOUR_CONNECTED)
    return segments_rand_error(test_segments, target, foreground=foreground)


def segments_rand_error(
    segments: np.ndarray, target_mask: np.ndarray | torch.Tensor, *, foreground: int = 1
) -> float:
    """``rand_error`` of a predicted labelling ``segments`` (H, W) int, 0 = no segment (membrane),
    against the 4-connected ``foreground`` components of ``target_mask``, with the same rules."""
    target = _as_class_mask(target_mask, "target_mask")
    if segments.shape != target.shape:
        raise ValueError(
            f"rand_error: segments shape {segments.shape} differs from target_mask shape "
            f"{target.shape}"
        )
    true_segments, _ = ndimage.label(target == foreground, structure=_FOUR_CONNECTED)
    if not true_segments.any():
        return float("nan")
    test_segments = segments
    with np.errstate(divide="ignore", invalid="ignore"):
        error, _, _ = adapted_rand_error(true_segments, test_segments, ignore_labels=(0,))
    return 0.0 if np.isnan(error) else float(error)


def seeded_watershed(
    probability: np.ndarray,
    *,
    seed_threshold: float,
    mask_threshold: float = 0.5,
    sigma: float = 0.0,
) -> np.ndarray:
    """Cells from a foreground probability map (H, W): the map smoothed by a Gaussian of
    ``sigma`` px (0: none), seeds the 4-connected regions above ``seed_threshold``, flooded
    (scikit-image's ``watershed`` on the negated map) over the pixels above ``mask_threshold``.
    Returns (H, W) int labels, 0 where no cell (membrane). A thin bridge of lower probability
    between two cells ends up on the flooding front instead of merging them."""
    if not 0.0 < mask_threshold <= seed_threshold < 1.0:
        raise ValueError(
            f"seeded watershed: expected 0 < mask_threshold ({mask_threshold}) <= "
            f"seed_threshold ({seed_threshold}) < 1"
        )
    if sigma < 0:
        raise ValueError(f"seeded watershed: sigma={sigma} must be >= 0")
    smooth = ndimage.gaussian_filter(probability, sigma) if sigma > 0 else probability
    seeds, _ = ndimage.label(smooth > seed_threshold, structure=_FOUR_CONNECTED)
    return _watershed(-smooth, seeds, mask=smooth > mask_threshold)


class RandError(Metric):
    """Mean of ``rand_error`` over images (each image counts once, whatever its size); images
    whose target has no foreground pixel are skipped.

    ``update(preds, target)``: ``preds`` (N, H, W) or (H, W) integer class masks, or (N, K, H, W)
    float logits (argmax over K is taken); ``target`` (N, H, W) or (H, W) integer class masks.

    ``watershed``: ``{"seed_threshold": ..., "mask_threshold": 0.5, "sigma": 0.0}`` scores the
    ``seeded_watershed`` cells of the softmax foreground probability instead of the argmax
    components (``preds`` must then be logits).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self, *, foreground: int = 1, watershed: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.foreground = foreground
        self.watershed = None if watershed is None else dict(watershed)
        if self.watershed is not None:
            if unknown := sorted(set(self.watershed) - set(WATERSHED_KEYS)):
                raise ValueError(
                    f"rand_error watershed keys {unknown} unknown; valid: {list(WATERSHED_KEYS)}"
                )
            if "seed_threshold" not in self.watershed:
                raise ValueError("rand_error watershed: seed_threshold is required")
            seeded_watershed(np.zeros((1, 1)), **self.watershed)  # checks the values now
        self.add_state("error_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if self.watershed is not None:
            self._update_watershed(preds, target)
            return
        if preds.is_floating_point():
            if preds.ndim != 4:
                raise ValueError(
                    f"RandError: float preds must be (N, K, H, W) logits, got shape {tuple(preds.shape)}"
                )
            preds = preds.max(dim=1).indices
        if preds.ndim == 2:
            preds = preds.unsqueeze(0)
        if target.ndim == 2:
            target = target.unsqueeze(0)
        if preds.ndim != 3 or preds.shape != target.shape:
            raise ValueError(
                f"RandError: preds {tuple(preds.shape)} and target {tuple(target.shape)} must be "
                "matching (N, H, W) class masks"
            )
        for pred, true in zip(preds, target):
            error = rand_error(pred, true, foreground=self.foreground)
            if not np.isnan(error):
                self.error_sum += error
                self.count += 1

    def _update_watershed(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if not logits.is_floating_point() or logits.ndim != 4:
            raise ValueError(
                "RandError(watershed=...): preds must be (N, K, H, W) float logits, got "
                f"{logits.dtype} {tuple(logits.shape)}"
            )
        if target.ndim == 2:
            target = target.unsqueeze(0)
        if logits.shape[:1] + logits.shape[2:] != target.shape:
            raise ValueError(
                f"RandError: preds {tuple(logits.shape)} and target {tuple(target.shape)} "
                "must match in N, H, W"
            )
        probability = logits.float().softmax(dim=1)[:, self.foreground].cpu().numpy()
        for prob, true in zip(probability, target):
            segments = seeded_watershed(prob, **self.watershed)
            error = segments_rand_error(segments, true, foreground=self.foreground)
            if not np.isnan(error):
                self.error_sum += error
                self.count += 1

    def compute(self) -> torch.Tensor:
        return self.error_sum / self.count
