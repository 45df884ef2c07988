"""InstanceSegmentationTask: losses, BN-preserving validation losses, COCO AP, the train path."""

import contextlib
import io
import json
import logging
from collections.abc import Callable

import numpy as np
import pytest
import torch
from coco_tree import write_edge_case_tree, write_shapes_tree
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from seglab.coco_results import detections_to_coco
from seglab.data.coco import CocoDataModule
from seglab.eval import evaluate
from seglab.metrics import MaskAP
from seglab.models import MaskRCNN
from seglab.predict import predict
from seglab.tasks.instance import InstanceSegmentationTask, loss_mode
from seglab.train import train
from seglab.utils.instantiate import build_datamodule, build_task

STATS = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_task(small_maskrcnn) -> Callable[..., InstanceSegmentationTask]:
    def build(num_classes: int = 3) -> InstanceSegmentationTask:
        torch.manual_seed(0)
        net = MaskRCNN(num_classes=num_classes, backbone="resnet18", **small_maskrcnn)
        return InstanceSegmentationTask(net=net, num_classes=num_classes)

    return build


def coco_module(root, task="instance", **kwargs) -> CocoDataModule:
    files = {"images": "images", "annotations": "annotations.json"}
    return CocoDataModule(
        task=task,
        data_dir=str(root),
        split_files={"train": files, "val": files},
        num_classes=3,
        class_names=None,
        **kwargs,
    )


def coco_eval(gt: COCO, results: list[dict], iou_type: str) -> np.ndarray:
    """pycocotools' COCOeval run directly; for masks without the boxes (so areas are mask areas)."""
    if iou_type == "segm":
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(results), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


@pytest.fixture
def edge_tree(tmp_path):
    write_edge_case_tree(tmp_path)
    return tmp_path


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_step_keeps_crowd_out_of_the_losses(tiny_task):
    task = tiny_task()
    masks = torch.zeros(2, 40, 40, dtype=torch.uint8)
    masks[0, 5:20, 5:20] = 1
    masks[1, 0:40, 0:40] = 1
    target = {
        "boxes": torch.tensor([[5.0, 5, 20, 20], [0, 0, 40, 40]]),
        "labels": torch.tensor([1, 2]),
        "masks": masks,
        "iscrowd": torch.tensor([0, 1]),
        "image_id": 7,
    }
    (kept,) = task.net_targets([target])
    assert set(kept) == {"boxes", "labels", "masks"} and kept["labels"].tolist() == [1]
    crowd_only = {**target, "iscrowd": torch.tensor([1, 1])}
    assert task.net_targets([crowd_only])[0]["boxes"].shape == (0, 4)
    task.net.train()
    loss = task.training_step(([torch.rand(3, 40, 40)], [crowd_only]), 0)
    assert torch.isfinite(loss)


def test_validation_losses_leave_batch_norm_dropout_and_rng_alone(tiny_task):
    task = tiny_task()
    # A dropout in the box head: must be off while the validation losses are computed.
    seen = []
    dropout = nn.Dropout(0.5)
    dropout.register_forward_hook(lambda module, *_: seen.append(module.training))
    task.net.roi_heads.box_head = nn.Sequential(dropout, task.net.roi_heads.box_head)
    task.net.train()
    images = [torch.rand(3, 48, 48), torch.rand(3, 40, 56)]
    masks = torch.zeros(1, 48, 48, dtype=torch.uint8)
    masks[0, 10:30, 5:40] = 1
    targets = [
        {"boxes": torch.tensor([[5.0, 10, 40, 30]]), "labels": torch.tensor([2]), "masks": masks},
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, 40, 56, dtype=torch.uint8),
        },
    ]
    for target, image_id in zip(targets, (3, 4)):
        target.update(iscrowd=torch.zeros_like(target["labels"]), image_id=image_id)
    for _ in range(2):  # give the running statistics values of their own
        sum(task.net(images, task.net_targets(targets)).values()).backward()
    task.eval()  # as Lightning does for validation
    buffers = {k: v.clone() for k, v in task.net.state_dict().items() if "bn" in k}
    assert any(k.endswith("running_mean") for k in buffers)
    modes = {name: m.training for name, m in task.net.named_modules()}
    rng = torch.get_rng_state()

    seen.clear()
    with torch.no_grad():
        task.validation_step((images, targets), 0)
        first = {k: v.compute().item() for k, v in task.val_loss.items()}
        task.validation_step((images, targets), 1)
    assert seen and not any(seen)
    assert task.val_loss["loss"].compute().item() == pytest.approx(first["loss"], rel=1e-6)
    assert all(np.isfinite(v) for v in first.values()) and first["loss"] > 0
    after = task.net.state_dict()
    for key, value in buffers.items():
        assert torch.equal(after[key], value), key
    assert {name: m.training for name, m in task.net.named_modules()} == modes
    assert torch.equal(torch.get_rng_state(), rng)

    # Without loss_mode the same pass would move the statistics: the check above has teeth.
    with loss_mode(task.net):
        assert task.net.training and not dropout.training
    task.net.train()
    with torch.no_grad():
        task.net(images, task.net_targets(targets))
    assert not torch.equal(
        task.net.state_dict()["backbone.body.bn1.running_mean"],
        buffers["backbone.body.bn1.running_mean"],
    )


def fake_detections(target: dict, rng: np.random.Generator, num_classes: int) -> dict:
    """Perturbed copies of the ground truth (some with the wrong class) plus false positives."""
    h, w = target["masks"].shape[-2:]
    boxes, masks, labels = [], [], []
    for box, mask, label in zip(target["boxes"], target["masks"], target["labels"]):
        shift = int(rng.integers(-3, 4))
        moved = torch.roll(mask, shifts=shift, dims=int(rng.integers(0, 2)))
        boxes.append(box + torch.tensor(rng.uniform(-3, 3, 4), dtype=torch.float32))
        masks.append(moved.float())
        labels.append(int(label) if rng.random() < 0.8 else int(rng.integers(1, num_classes)))
    for _ in range(int(rng.integers(0, 4))):
        x0, y0 = rng.integers(0, w - 4), rng.integers(0, h - 4)
        x1, y1 = rng.integers(x0 + 2, w + 1), rng.integers(y0 + 2, h + 1)
        mask = torch.zeros(h, w)
        mask[y0:y1, x0:x1] = 1
        boxes.append(torch.tensor([x0, y0, x1, y1], dtype=torch.float32))
        masks.append(mask)
        labels.append(int(rng.integers(1, num_classes)))
    n = len(labels)
    return {
        "boxes": torch.stack(boxes).clamp(min=0) if n else torch.zeros(0, 4),
        "scores": torch.tensor(rng.uniform(0.05, 1.0, n), dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": torch.stack(masks)[:, None] if n else torch.zeros(0, 1, h, w),
    }


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_mask_and_box_ap_equal_cocoeval_on_the_same_detections(edge_tree, tiny_task, backend):
    dm = coco_module(edge_tree)
    dataset = dm.dataset("val")
    task = tiny_task()
    rng = np.random.default_rng(1)
    items = [dataset[i][1] for i in range(len(dataset))]
    detections = [fake_detections(t, rng, 3) for t in items]
    results = []
    for det, t in zip(detections, items):
        results += detections_to_coco(det, t["image_id"], dm.label_to_category)
    assert {r["category_id"] for r in results} <= {3, 7}

    metric = MaskAP(backend=backend)
    assert metric.backend == backend
    order = [2, 0, 3, 1]  # any order, any batching: the result may not depend on it
    metric.update(
        *task.metric_inputs([detections[i] for i in order[:3]], [items[i] for i in order[:3]])
    )
    metric.update(*task.metric_inputs([detections[order[3]]], [items[order[3]]]))
    values = metric.compute()

    gt = COCO(str(edge_tree / "annotations.json"))  # ids from 1, as COCOeval needs
    for iou_type in ("bbox", "segm"):
        expected = coco_eval(gt, results, iou_type)
        got = [values[f"{iou_type}_{k}"].item() for k in STATS]
        # to the last digit of the float32 values torchmetrics returns
        assert got == [float(np.float32(v)) for v in expected], iou_type
    assert 0 < values["segm_map"] < 1 and 0 < values["bbox_map_50"] <= 1


def test_mask_ap_backends_agree_on_tied_scores_and_crowd(edge_tree, tiny_task):
    """Ties between images (decided by image order), crowd, a one-pixel object, empty images."""
    dataset = coco_module(edge_tree).dataset("val")
    task = tiny_task()
    rng = np.random.default_rng(2)
    items = [dataset[i][1] for i in range(len(dataset))]
    detections = [fake_detections(t, rng, 3) for t in items]
    for det in detections:
        det["scores"] = (det["scores"] * 4).round() / 4
    values = {}
    for backend in ("pycocotools", "faster_coco_eval"):
        metric = MaskAP(backend=backend)
        metric.update(*task.metric_inputs(detections, items))
        values[backend] = metric.compute()
    ours, theirs = values["pycocotools"], values["faster_coco_eval"]
    assert 0 < ours["segm_map"] < 1 and 0 < ours["bbox_map"] < 1
    for key in (f"{t}_{k}" for t in ("bbox", "segm") for k in STATS):
        assert torch.equal(ours[key], theirs[key]), key


def test_mask_ap_backend_choice(monkeypatch, tiny_task, caplog):
    from seglab.metrics import mask_ap

    assert MaskAP().backend == "faster_coco_eval"  # installed (the dev extra): auto takes it
    assert tiny_task().val_ap.backend == "faster_coco_eval"
    with pytest.raises(ValueError, match=r"backend='cocoapi' \(model.map_backend\)"):
        MaskAP(backend="cocoapi")
    monkeypatch.setattr(mask_ap, "_faster_coco_eval_usable", lambda: False)
    assert MaskAP().backend == "pycocotools"
    with pytest.raises(ImportError, match=r"pip install seglab\[fast-eval\]"):
        MaskAP(backend="faster_coco_eval")
    monkeypatch.undo()

    # faster-coco-eval logs its summary at INFO, which Hydra's job logging shows
    metric = MaskAP(backend="faster_coco_eval")
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 2:6, 2:6] = True
    box = torch.tensor([[2.0, 2, 6, 6]])
    target = {"boxes": box, "labels": torch.tensor([1]), "masks": mask, "image_id": 1}
    pred = {**target, "scores": torch.tensor([0.9])}
    metric.update([pred], [target])
    with caplog.at_level(logging.INFO):
        assert metric.compute()["segm_map"] == 1
    assert not [r for r in caplog.records if r.name.startswith("faster_coco_eval")]


def test_predict_step_detections_give_coco_results_for_every_image(edge_tree, tiny_task):
    dm = coco_module(edge_tree)
    dataset = dm.dataset("val")
    task = tiny_task().eval()
    images, targets = zip(*(dataset[i] for i in range(len(dataset))))
    with torch.no_grad():
        detections = task.predict_step((list(images), list(targets)), 0)
    assert len(detections) == len(images)
    results = []
    for image, det, t in zip(images, detections, targets):
        n = len(det["labels"])
        assert det["boxes"].shape == (n, 4) and det["scores"].shape == (n,)
        assert det["masks"].shape == (n, 1, *image.shape[-2:])
        assert det["masks"].is_floating_point()
        results += detections_to_coco(
            det, t["image_id"], dm.label_to_category, mask_threshold=task.mask_threshold
        )
    gt = COCO(str(edge_tree / "annotations.json"))
    assert {r["image_id"] for r in results} <= set(gt.imgs)
    assert {r["category_id"] for r in results} <= {3, 7}
    for r in results[:5]:
        info = gt.imgs[r["image_id"]]
        assert r["segmentation"]["size"] == [info["height"], info["width"]]
        assert isinstance(r["segmentation"]["counts"], str)
    json.dumps(results)
    if results:
        gt.loadRes(results)


def test_used_by_line_composes(compose_cfg):
    """python src/train.py model=maskrcnn data=coco trainer=ddp"""
    cfg = compose_cfg(overrides=["model=maskrcnn", "data=coco", "trainer=ddp"], quick=False)
    assert cfg.trainer.strategy == "ddp" and cfg.data.task == cfg.model.task == "instance"
    assert cfg.callbacks.model_checkpoint.monitor == "val/map_segm"
    assert cfg.callbacks.early_stopping.monitor == "val/map_segm"
    dm = build_datamodule(cfg.data)  # reads no file before setup: COCO's names are in the yaml
    task = build_task(cfg, dm)
    assert task.num_classes == dm.num_classes == 81 and task.class_names[1] == "person"
    assert isinstance(task.net, MaskRCNN) and task.net.backbone_name == "resnet50"


def test_fast_dev_run_on_shapes(compose_cfg, small_maskrcnn_overrides):
    cfg = compose_cfg(
        overrides=[
            "model=maskrcnn",
            "debug=fast_dev_run",
            "data.batch_size=2",
            "data.image_size=64",
            *small_maskrcnn_overrides,
        ]
    )
    assert cfg.data.num_classes == 4 and cfg.model.monitor == "val/map_segm"
    metrics, objects = train(cfg)
    fit, val = metrics["fit"], metrics["val"]
    for key in (
        "loss",
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
        "loss_objectness",
        "loss_rpn_box_reg",
    ):
        assert np.isfinite(fit[f"train/{key}"]) and np.isfinite(val[f"val/{key}"])
    for key in (
        "map_segm",
        "map_50_segm",
        "map_75_segm",
        "map_bbox",
        "map_50_bbox",
        "mar_100_segm",
    ):
        assert -1 <= val[f"val/{key}"] <= 1
    assert objects["model"].net is objects["model"].net  # the task exposes the net as self.net
    assert isinstance(objects["model"].net, MaskRCNN)


def test_train_eval_predict_on_a_coco_tree(
    compose_cfg, tmp_path, small_maskrcnn_overrides, untrained_but_scored
):
    """Checkpoint -> eval gives the same AP; predict's COCO results scored by COCOeval directly
    give the AP the task logged."""
    root = tmp_path / "coco"
    write_shapes_tree(root, counts={"train": 4, "val": 3})
    files = "{train: {images: train, annotations: train.json}, val: {images: val, annotations: val.json}}"
    data = [
        "data=coco",
        f"data.data_dir={root}",
        f"data.split_files={files}",
        "data.class_names=null",
        "data.num_classes=2",
        "data.num_workers=0",
        "data.batch_size=2",
    ]
    cfg = compose_cfg(
        overrides=[
            "model=maskrcnn",
            "trainer.accelerator=cpu",
            "trainer.max_epochs=1",
            "logger=csv",
            *data,
            *small_maskrcnn_overrides,
            *untrained_but_scored,
        ],
        quick=False,
    )
    metrics, _ = train(cfg)
    best = metrics["best_checkpoint"]
    assert best and torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    val = metrics["val"]  # model.map_backend=auto: faster-coco-eval, installed here
    for edit in ([], ["+model.map_backend=pycocotools"]):
        again, objects = evaluate(compose_cfg("eval", overrides=[f"ckpt_path={best}", *edit]))
        assert objects["model"].val_ap.backend == ("pycocotools" if edit else "faster_coco_eval")
        for key, value in val.items():
            if "/ma" in key:  # map_*, mar_*: the same float32 either way
                assert again["val"][key] == value, key
            else:
                assert again["val"][key] == pytest.approx(value, abs=1e-6), key

    out = tmp_path / "pred"
    written, _ = predict(
        compose_cfg("predict", overrides=[f"ckpt_path={best}", "input=val", f"output={out}"])
    )
    assert written == [out / "val_results.json"]
    results = json.loads(written[0].read_text())
    gt = COCO(str(root / "val.json"))
    assert {r["image_id"] for r in results} <= set(gt.imgs)
    assert results and val["val/map_segm"] > 0 and val["val/map_bbox"] > 0
    for iou_type in ("bbox", "segm"):
        stats = coco_eval(gt, results, iou_type)
        got = [val[f"val/{key}_{iou_type}"] for key in STATS]
        assert got == pytest.approx(stats.tolist(), abs=1e-6), iou_type
    with pytest.raises(ValueError, match="input= one of"):
        predict(compose_cfg("predict", overrides=[f"ckpt_path={best}", "input=x", "output=y"]))
