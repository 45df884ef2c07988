"""Pixel accuracy, class average accuracy, per-class IoU and mIoU from one torchmetrics confusion
matrix."""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

__all__ = ["SemanticMetrics"]


class SemanticMetrics(MulticlassConfusionMatrix):
    """torchmetrics' confusion matrix whose ``compute`` returns the semantic metrics.

    One (K, K) sum state, so DDP sync and accumulation over batches are exact. ``compute``
    returns ``pixel_acc`` (labelled pixels predicted correctly: SegNet's global accuracy),
    ``class_acc`` (the mean over the classes present in the target of each one's recall, its
    pixels predicted as it: SegNet's class average accuracy, mmsegmentation's mAcc), ``iou`` (K,)
    with NaN for classes absent from both prediction and target, ``miou`` (mean over the non-NaN
    classes, as mmsegmentation does) and ``confmat`` (K, K), the synced counts (rows: the true
    class). ``update(preds, target)`` takes class indices (N, H, W) or logits (N, K, H, W).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, validate_args=False)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        if preds.dim() == target.dim() + 1:
            # max().indices: same first-maximum rule as argmax, ~10x faster on CPU for dim=1
            preds = preds.max(dim=1).indices
        if preds.is_cuda and torch.are_deterministic_algorithms_enabled():
            # CUDA bincount has no deterministic kernel; torchmetrics has a fallback.
            super().update(preds, target)
            return
        # The same counts as torchmetrics' update, without its boolean indexing (the slow part
        # on CPU): ignored pixels go to an overflow bin K*K that is dropped.
        k = self.num_classes
        codes = target.long() * k + preds.long()
        if self.ignore_index is not None:
            codes = codes.masked_fill(target == self.ignore_index, k * k)
        self.confmat += torch.bincount(codes.flatten(), minlength=k * k + 1)[: k * k].view(k, k)

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        cm = self.confmat.double()
        tp = cm.diagonal()
        union = cm.sum(0) + cm.sum(1) - tp
        nan = torch.full_like(tp, float("nan"))
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        labelled = cm.sum(1)
        recall = torch.where(labelled > 0, tp / labelled.clamp(min=1), nan)
        total = cm.sum()
        pixel_acc = tp.sum() / total if total > 0 else torch.tensor(float("nan"), dtype=cm.dtype)
        return {
            "pixel_acc": pixel_acc.float(),
            "class_acc": recall.nanmean().float(),
            "miou": iou.nanmean().float(),
            "iou": iou.float(),
            "confmat": self.confmat.clone(),
        }
