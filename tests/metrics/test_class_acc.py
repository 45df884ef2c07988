"""Class average accuracy (SegNet's C, mmsegmentation's mAcc): the mean per-class recall, from
the same confusion matrix as pixel accuracy and IoU, logged per stage like mIoU."""

import pytest
import torch
from torch import nn

from seglab.metrics.semantic import SemanticMetrics
from seglab.tasks.semantic import SemanticSegmentationTask

# true class 0: 3 pixels, 2 right; class 1: 2 pixels, 1 right; class 2: 2 pixels, none right;
# class 3: predicted but never true (no recall: left out); 255: ignored
TARGET = torch.tensor([[0, 0, 0, 1, 1, 2, 255, 2]])
PREDS = torch.tensor([[0, 0, 1, 1, 0, 0, 3, 3]])


def test_class_acc_is_the_mean_recall_of_the_classes_present():
    metric = SemanticMetrics(num_classes=4, ignore_index=255)
    metric.update(PREDS, TARGET)
    out = metric.compute()
    assert out["confmat"].tolist() == [[2, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]]
    assert out["class_acc"].item() == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert out["pixel_acc"].item() == pytest.approx(3 / 7)  # global accuracy: not the same
    empty = SemanticMetrics(num_classes=4, ignore_index=255)
    empty.update(PREDS, torch.full_like(TARGET, 255))
    assert torch.isnan(empty.compute()["class_acc"])


def test_the_task_logs_class_acc():
    task = SemanticSegmentationTask(net=nn.Conv2d(1, 4, 1), num_classes=4, ignore_index=255)
    task.stage_metrics["train"]["metrics"].update(PREDS, TARGET)
    logs = task.epoch_metrics("train")
    assert logs["class_acc"].item() == pytest.approx(7 / 18)
