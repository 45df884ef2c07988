import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seglab.data.base import SemanticDataset
from seglab.inference import mirror_pad
from seglab.losses import pixel_cross_entropy
from seglab.metrics.semantic import SemanticMetrics
from seglab.models import UNet
from seglab.tasks.semantic import SemanticSegmentationTask
from seglab.utils.tensors import crop_to


class ArrayDataset(SemanticDataset):
    def __init__(self, masks, **kwargs):
        super().__init__(num_classes=3, ignore_index=255, mean=(0.5,), std=(0.5,), **kwargs)
        self.masks = masks

    def __len__(self):
        return len(self.masks)

    def load_sample(self, index):
        mask = self.masks[index]
        return {
            "image": np.zeros((*mask.shape, 1), np.uint8),
            "mask": mask,
            "name": f"sample_{index}.png",
        }


def test_bad_mask_value_names_the_sample():
    masks = [np.zeros((4, 4), np.int64), np.full((4, 4), 7)]
    dataset = ArrayDataset(masks)
    assert dataset[0]["mask"].dtype == torch.int64
    with pytest.raises(ValueError, match=r"sample 'sample_1.png' holds label\(s\) \[7\]"):
        dataset[1]
    ok = np.full((4, 4), 255)
    assert ArrayDataset([ok])[0]["mask"].max() == 255


def test_loss_mean_sum_and_ignore():
    logits = torch.randn(2, 3, 5, 6)
    target = torch.randint(0, 3, (2, 5, 6))
    target[0, 0] = 255
    total, norm = pixel_cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(total / norm, F.cross_entropy(logits, target, ignore_index=255))
    assert torch.allclose(total, F.cross_entropy(logits, target, ignore_index=255, reduction="sum"))
    w = torch.tensor([1.0, 2.0, 0.5])
    total, norm = pixel_cross_entropy(logits, target, ignore_index=255, class_weights=w)
    assert torch.allclose(total / norm, F.cross_entropy(logits, target, weight=w, ignore_index=255))
    pw = torch.rand(2, 5, 6)
    total, _ = pixel_cross_entropy(logits, target, ignore_index=255, pixel_weights=pw)
    per_pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    assert torch.allclose(total, (per_pixel * pw).sum())


def test_semantic_metrics_by_hand():
    metric = SemanticMetrics(num_classes=3, ignore_index=255)
    target = torch.tensor([[0, 0, 1, 1, 255, 2]])
    preds = torch.tensor([[0, 1, 1, 1, 2, 0]])
    metric.update(preds, target)
    out = metric.compute()
    # Labelled: 5 pixels, 3 right. IoU: class 0 1/3, class 1 2/3, class 2 0/2.
    assert out["pixel_acc"].item() == pytest.approx(3 / 5)
    assert out["iou"].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert out["miou"].item() == pytest.approx(1 / 3)
    absent = SemanticMetrics(num_classes=4, ignore_index=255)
    absent.update(preds, target)
    assert torch.isnan(absent.compute()["iou"][3]) and absent.compute()[
        "miou"
    ].item() == pytest.approx(1 / 3)


def test_semantic_metrics_counts_equal_torchmetrics():
    from torchmetrics.classification import MulticlassConfusionMatrix

    gen = torch.Generator().manual_seed(0)
    ours, ref = SemanticMetrics(5, ignore_index=255), MulticlassConfusionMatrix(5, ignore_index=255)
    for _ in range(3):
        logits = torch.randn(2, 5, 7, 9, generator=gen)
        target = torch.randint(0, 5, (2, 7, 9), generator=gen)
        target[torch.rand(2, 7, 9, generator=gen) < 0.2] = 255
        ours.update(logits, target)
        ref.update(logits.argmax(1), target)
    assert ref.confmat.sum() > 0
    assert torch.equal(ours.confmat, ref.confmat)
    no_ignore = SemanticMetrics(5, ignore_index=None)
    no_ignore.update(torch.tensor([[0, 4, 4]]), torch.tensor([[0, 4, 1]]))
    assert no_ignore.confmat.sum() == 3 and no_ignore.confmat[1, 4] == 1


def make_task(**loss):
    net = UNet(in_channels=1, num_classes=3, base_channels=4, depth=2)
    return SemanticSegmentationTask(net=net, num_classes=3, ignore_index=255, loss=loss)


def test_unpadded_net_crops_target_and_weight():
    task = make_task()
    x = torch.randn(1, 1, 60, 60)
    out_size = task.net.output_size(60)
    mask = torch.randint(0, 3, (1, 60, 60))
    weight = torch.rand(1, 60, 60)
    loss = task.training_step({"image": x, "mask": mask, "weight": weight}, 0)
    logits = task.net(x)
    assert logits.shape[-1] == out_size < 60
    top = (60 - out_size) // 2
    crop = (slice(None), slice(top, top + out_size), slice(top, top + out_size))
    expected = (
        F.cross_entropy(logits, mask[crop], reduction="none") * weight[crop]
    ).sum() / out_size**2
    assert torch.allclose(loss, expected, rtol=1e-4)


def test_crop_to_floors_the_offset_of_odd_differences():
    x = torch.arange(7 * 9).view(1, 7, 9)
    # (7 - 4) // 2 = 1 and (9 - 4) // 2 = 2 (torchvision's center_crop would start at row 2)
    assert torch.equal(crop_to(x, (4, 4)), x[:, 1:5, 2:6])
    assert torch.equal(crop_to(x, (7, 9)), x)


def test_loss_config_errors():
    with pytest.raises(ValueError, match="model.loss.reduction"):
        make_task(reduction="median")
    with pytest.raises(ValueError, match="model.loss has unknown key"):
        make_task(weights=[1, 2, 3])
    with pytest.raises(ValueError, match="model.loss.class_weights has 2 entries"):
        make_task(class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"valid: \['aux_weight', 'class_weights', 'reduction'\]"):
        make_task(weights=[1, 2, 3])


def test_weight_map_is_used_whenever_the_batch_has_one():
    torch.manual_seed(0)
    task = SemanticSegmentationTask(net=torch.nn.Conv2d(1, 3, 1), num_classes=3)
    batch = {"image": torch.randn(2, 1, 8, 8), "mask": torch.randint(0, 3, (2, 8, 8))}
    plain = task.training_step(batch, 0)
    weight = torch.rand(2, 8, 8)
    weighted = task.training_step({**batch, "weight": weight}, 0)
    per_pixel = F.cross_entropy(task.net(batch["image"]), batch["mask"], reduction="none")
    assert torch.allclose(plain, per_pixel.mean())
    assert torch.allclose(weighted, (per_pixel * weight).mean())
    # Checkpoints of the old two-switch design carry model.loss.weight_map: accepted, ignored.
    legacy = SemanticSegmentationTask(
        net=task.net, num_classes=3, loss={"weight_map": False, "reduction": "mean"}
    )
    assert torch.allclose(legacy.training_step({**batch, "weight": weight}, 0), weighted)


def test_predict_step_gives_class_indices_at_the_input_size():
    torch.manual_seed(0)
    net = UNet(in_channels=1, num_classes=3, base_channels=4, depth=2, padding=True).eval()
    task = SemanticSegmentationTask(net=net, num_classes=3).eval()
    image = torch.randn(2, 1, 12, 20)
    with torch.no_grad():
        labels = task.predict_step({"image": image}, 0)
        expected = net(image).argmax(dim=1)
    assert labels.dtype == torch.int64 and labels.shape == (2, 12, 20)
    assert torch.equal(labels, expected)


def test_predict_step_refuses_an_output_smaller_than_the_input():
    task = make_task().eval()
    with (
        pytest.raises(ValueError, match="model.inference.mode='whole'.*overlap_tile"),
        torch.no_grad(),
    ):
        task.predict_step({"image": torch.randn(1, 1, 60, 60)}, 0)
    task.inference = {"mode": "overlap_tile", "tile_size": 60}
    with torch.no_grad():
        labels = task.predict_step({"image": torch.randn(1, 1, 60, 60)}, 0)
    assert labels.shape == (1, 60, 60) and labels.dtype == torch.int64


def test_aux_loss_is_weighted():
    class AuxNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 3, 1)

        def forward(self, x):
            y = self.conv(x)
            return {"out": y, "aux": 2 * y} if self.training else y

    task = SemanticSegmentationTask(net=AuxNet(), num_classes=3, loss={"aux_weight": 0.4})
    batch = {"image": torch.randn(2, 1, 8, 8), "mask": torch.randint(0, 3, (2, 8, 8))}
    loss = task.training_step(batch, 0)
    y = task.net.conv(batch["image"])
    expected = F.cross_entropy(y, batch["mask"]) + 0.4 * F.cross_entropy(2 * y, batch["mask"])
    assert torch.allclose(loss, expected)


def test_unpadded_net_mirror_extends_a_side_it_cannot_take():
    """64-px scenes (data=shapes) through the paper U-Net: the images are mirror-extended to the
    smallest input whose output covers them, the output cropped back to the image (one
    overlap tile), so the loss and the prediction cover every pixel."""
    task = make_task()
    x = torch.randn(2, 1, 30, 34)
    with pytest.raises(ValueError, match="odd or empty"):
        task.net.output_size(30)
    task.eval()
    with torch.no_grad():
        logits = task._run_net(x)
        # reference: a wider mirror extension (120 x 124, a size the net takes), cropped
        wide = task.net(mirror_pad(x, 45, 45, 45, 45))
        m = (124 - wide.shape[-1]) // 2
        reference = wide[..., 45 - m : 45 - m + 30, 45 - m : 45 - m + 34]
    assert logits.shape[-2:] == (30, 34)
    assert torch.allclose(logits, reference, atol=1e-5)
    task.train()
    mask = torch.randint(0, 3, (2, 30, 34))
    loss = task.training_step({"image": x, "mask": mask}, 0)
    assert torch.allclose(loss, F.cross_entropy(task._run_net(x), mask), rtol=1e-4)
    # a side the net can take is left as it is (the paper's 572 -> 388 training)
    assert task._run_net(torch.randn(1, 1, 60, 60)).shape[-1] == task.net.output_size(60)
