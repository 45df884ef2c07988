"""PanopticSegmentationTask on a stand-in net with Panoptic FPN's contract: the weighted loss,
PQ / semantic metrics, and COCO panoptic files that score as the metric does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from seglab.callbacks.writers import CocoPanopticWriter, segment_ids_to_rgb
from seglab.metrics.panoptic_quality import pq_compute
from seglab.tasks.panoptic import PanopticSegmentationTask

T, S = 2, 2  # things 1..2, stuff classes 3..4 (semantic 1..2), void 0
LOSSES = {
    "loss_classifier": 1.0,
    "loss_box_reg": 2.0,
    "loss_mask": 3.0,
    "loss_objectness": 4.0,
    "loss_rpn_box_reg": 5.0,
    "loss_sem_seg": 10.0,
}


class StandInNet(nn.Module):
    """Returns fixed losses in train mode and the given outputs in eval mode."""

    num_things = T
    num_stuff = S
    num_classes = 1 + T + S

    def __init__(self, outputs: list[dict] | None = None) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.outputs = outputs or []
        self.seen_targets: list = []

    def forward(self, images, targets=None):
        if self.training:
            self.seen_targets.append(targets)
            return {k: self.scale * v for k, v in LOSSES.items()}
        return self.outputs[: len(images)]


def scene(shift: int = 0) -> tuple[torch.Tensor, dict]:
    """An 8x8 ground truth: stuff 3 on the left, stuff 4 on the right, thing 1 (id 1) and a crowd
    of thing 2 (id 2) on it, a void corner."""
    panoptic = torch.zeros(8, 8, 2, dtype=torch.long)
    panoptic[:, :4, 0] = 3
    panoptic[:, 4:, 0] = 4
    panoptic[1:4, 1 + shift : 4 + shift] = torch.tensor([1, 1])
    panoptic[5:7, 5:7] = torch.tensor([2, 2])
    panoptic[7, 7] = torch.tensor([0, 0])
    crowd = (panoptic[..., 1] == 2).clone()
    semantic = torch.where(panoptic[..., 0] > T, panoptic[..., 0] - T, 0)
    semantic[panoptic[..., 0] == 0] = 255
    thing = (panoptic[..., 1] == 1).to(torch.uint8)
    crowd_mask = crowd.to(torch.uint8)
    target = {
        "boxes": torch.tensor([[1.0 + shift, 1, 4 + shift, 4], [5, 5, 7, 7]]),
        "labels": torch.tensor([1, 2]),
        "masks": torch.stack([thing, crowd_mask]),
        "iscrowd": torch.tensor([0, 1]),
        "area": torch.tensor([9.0, 4.0]),
        "image_id": 7 + shift,
        "name": f"/data/img{shift}.png",
        "semantic": semantic,
        "panoptic": panoptic,
        "crowd": crowd,
    }
    return torch.rand(3, 8, 8), target


def as_output(target: dict, score: float = 0.9) -> dict:
    """A prediction equal to the ground truth, crowd predicted as an ordinary thing."""
    panoptic = target["panoptic"]
    segments = []
    for cls, inst in torch.unique(panoptic.reshape(-1, 2), dim=0).tolist():
        if cls == 0:
            continue
        segments.append(
            {"id": inst if cls <= T else 10 + cls, "category_id": cls, "isthing": cls <= T}
        )
    semantic = target["semantic"].clone()
    semantic[semantic == 255] = 0
    return {
        "boxes": target["boxes"],
        "labels": target["labels"],
        "scores": torch.full((2,), score),
        "masks": target["masks"][:, None].float(),
        "sem_seg": nn.functional.one_hot(semantic, S + 1).permute(2, 0, 1).float(),
        "panoptic": panoptic,
        "segments_info": segments,
    }


def build(outputs=None, **kwargs) -> PanopticSegmentationTask:
    return PanopticSegmentationTask(
        net=StandInNet(outputs), num_classes=1 + T + S, num_things=T, **kwargs
    )


def test_loss_is_weighted_by_lambda_i_and_lambda_s() -> None:
    task = build(loss={"instance_weight": 2.0, "semantic_weight": 0.25})
    image, target = scene()
    loss = task.training_step(([image], [target]), 0)
    assert loss.item() == pytest.approx(2.0 * (1 + 2 + 3 + 4 + 5) + 0.25 * 10)
    # the paper's COCO setting by default: lambda_i = 1, lambda_s = 0.5
    assert build().total_loss({k: torch.tensor(v) for k, v in LOSSES.items()}).item() == 20.0
    # the net learns from the non-crowd thing and the semantic map
    (seen,) = task.net.seen_targets[0]
    assert set(seen) == {"boxes", "labels", "masks", "semantic"}
    assert seen["labels"].tolist() == [1]
    assert torch.equal(seen["semantic"], target["semantic"])


def test_loss_options_and_class_counts_are_checked() -> None:
    with pytest.raises(ValueError, match=r"model.loss has unknown key\(s\) \['semantic'\]"):
        build(loss={"semantic": 1.0})
    with pytest.raises(ValueError, match="model.loss.semantic_weight=-1"):
        build(loss={"semantic_weight": -1})
    with pytest.raises(ValueError, match="model.num_things=1 but model.net.num_things=2"):
        PanopticSegmentationTask(net=StandInNet(), num_classes=5, num_things=1)


def test_a_perfect_prediction_scores_one_and_a_shifted_one_less() -> None:
    _, exact = scene()
    _, shifted = scene(shift=1)
    task = build([as_output(exact), as_output(shifted)])
    task.net.eval()
    task.eval_step(([torch.zeros(3, 8, 8)] * 2, [exact, exact]), "val")
    values = task.epoch_metrics("val")
    # Image 1 exact. Image 2 predicts thing 1 one column to the right: IoU 6 / 12 = 0.5, no
    # match (IoU > 0.5 strictly), so thing 1 has TP 1 (IoU 1), FP 1, FN 1; stuff 3 grows from 23
    # to 26 pixels (IoU 23 / 26), stuff 4 loses 3 of its 27 (24 / 27). The crowd (thing 2) counts
    # nowhere: never a false negative, and its prediction lies on it, so no false positive.
    stuff = [(1 + 23 / 26) / 2, (1 + 24 / 27) / 2]
    assert values["pq_things"].item() == pytest.approx(0.5)
    assert values["rq_things"].item() == pytest.approx(0.5)
    assert values["sq_things"].item() == pytest.approx(1.0)
    assert values["pq_stuff"].item() == pytest.approx(sum(stuff) / 2)
    assert values["pq"].item() == pytest.approx((0.5 + sum(stuff)) / 3)
    assert values["miou"].item() < 1.0
    assert {"map_segm", "loss_sem_seg", "loss", "pixel_acc"} <= set(values)


def write_panoptic(writer: CocoPanopticWriter, outputs: list[dict], targets: list[dict]) -> None:
    class Trainer:
        is_global_zero = True

    writer.on_predict_start(Trainer(), None)
    images = [torch.rand(3, 8, 8) for _ in targets]
    writer.write_on_batch_end(Trainer(), None, outputs, None, (images, targets), 0, 0)
    writer.write_on_epoch_end(Trainer(), None, [], [])
    writer.on_predict_end(Trainer(), None)  # puts the files in place


def test_written_files_score_as_the_metric_does(tmp_path) -> None:
    category_ids = [11, 12, 31, 32]  # the dataset's own ids of classes 1..4
    names = ["void", "a", "b", "c", "d"]
    palette = [[0, 0, 0], [200, 0, 0], [0, 200, 0], [0, 0, 200], [90, 90, 90]]
    _, exact = scene()
    _, other = scene(shift=1)
    other["image_id"], other["name"] = 8, "/data/img1.png"
    targets = [exact, other]
    gt = CocoPanopticWriter(
        output=tmp_path / "gt", stem="val", category_ids=category_ids, class_names=names,
        num_things=T, palette=palette, overlay=False,
    )  # fmt: skip
    write_panoptic(gt, [as_output(t) for t in targets], targets)
    # the ground truth's crowd segment, marked as such
    gt_json = json.loads(gt.json_path.read_text())
    for annotation in gt_json["annotations"]:
        for segment in annotation["segments_info"]:
            segment["iscrowd"] = int(segment["category_id"] == 12)
    gt.json_path.write_text(json.dumps(gt_json))
    pred = CocoPanopticWriter(
        output=tmp_path / "pred", stem="val", category_ids=category_ids, class_names=names,
        num_things=T, palette=palette,
    )  # fmt: skip
    outputs = [as_output(exact), as_output(exact)]  # wrong on the second image
    write_panoptic(pred, outputs, targets)

    files = pq_compute(gt.json_path, pred.json_path, workers=1)
    task = build(outputs)
    task.net.eval()
    task.eval_step(([torch.zeros(3, 8, 8)] * 2, targets), "val")
    metric = task.epoch_metrics("val")
    assert files["All"]["pq"] == pytest.approx(metric["pq"].item())
    assert files["Things"]["pq"] == pytest.approx(metric["pq_things"].item())
    assert files["All"]["pq"] < 1.0

    png = np.asarray(Image.open(pred.png_dir / "img0.png"), np.int64)
    ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
    segments = json.loads(pred.json_path.read_text())["annotations"][0]["segments_info"]
    assert sorted(np.unique(ids[ids > 0]).tolist()) == sorted(s["id"] for s in segments)
    assert {s["category_id"] for s in segments} == {11, 12, 31, 32}
    assert (pred.overlay_dir / "img0.png").is_file()


def test_segment_ids_round_trip_through_rgb() -> None:
    ids = np.array([[0, 1, 255], [256, 65_535, 2**24 - 1]])
    rgb = segment_ids_to_rgb(ids).astype(np.int64)
    assert np.array_equal(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2], ids)
