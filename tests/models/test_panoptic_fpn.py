"""seglab.models.PanopticFPN: the paper's semantic head, one backbone pass, the output contract."""

from __future__ import annotations

import pytest
import torch
from support import SMALL_MASKRCNN
from torch import nn
from torch.nn import functional as F
from torchvision.ops.misc import FrozenBatchNorm2d

from seglab.inference import panoptic_merge
from seglab.models import MaskRCNN, PanopticFPN
from seglab.models.panoptic_fpn import SemanticFPNHead

T, S = 3, 2  # thing and stuff categories
LOSSES = {
    "loss_classifier",
    "loss_box_reg",
    "loss_mask",
    "loss_objectness",
    "loss_rpn_box_reg",
    "loss_sem_seg",
}
SMALL = {"backbone": "resnet18", **SMALL_MASKRCNN}
# An untrained net scores everything low: keep its detections so that the merge has things.
KEEP_ALL = {"box_score_thresh": 0.0, "score_threshold": 0.0, "mask_threshold": 0.2, "stuff_area": 8}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net() -> PanopticFPN:
    torch.manual_seed(0)
    net = PanopticFPN(num_things=T, num_stuff=S, **SMALL, **KEEP_ALL)
    # Untrained logits are nearly flat; large predictor weights make the argmax vary over the
    # image, so that the merge sees stuff as well as things.
    nn.init.normal_(net.semantic_head.predictor.weight, std=1.0)
    return net


def target(h: int, w: int, boxes: list[list[int]], labels: list[int]) -> dict[str, torch.Tensor]:
    """Rectangle things on a semantic map of stuff stripes, things class on the things, a void
    border row."""
    masks = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
    semantic = (torch.arange(w) * S // w + 1).expand(h, w).clone()
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        masks[k, y0:y1, x0:x1] = 1
        semantic[y0:y1, x0:x1] = 0
    semantic[0] = 255
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": masks,
        "semantic": semantic,
    }


class Capture:
    """Counts a module's forward calls and keeps its last output."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        self.output: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self)

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.calls += 1
        self.output = output

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def test_semantic_head_layers_are_the_papers():
    head = SemanticFPNHead(num_classes=S + 1)
    for level, scale_head in enumerate(head.scale_heads):
        convs = [m for m in scale_head if isinstance(m, nn.Conv2d)]
        norms = [m for m in scale_head if isinstance(m, nn.GroupNorm)]
        ups = [m for m in scale_head if isinstance(m, nn.Upsample)]
        assert len(convs) == max(level, 1)  # P2: 1, P3: 1, P4: 2, P5: 3
        assert len(ups) == level  # up to stride 4
        assert [(c.in_channels, c.out_channels) for c in convs] == [(256, 128)] + [(128, 128)] * (
            len(convs) - 1
        )
        assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
        assert all(c.bias is None for c in convs)
        assert all((n.num_groups, n.num_channels) == (32, 128) for n in norms)
        assert len(norms) == len(convs)
        assert all(u.scale_factor == 2.0 and u.mode == "bilinear" for u in ups)
        # conv -> GN -> ReLU (-> upsample) per stage
        kinds = [type(m) for m in scale_head]
        stage = [nn.Conv2d, nn.GroupNorm, nn.ReLU] + ([nn.Upsample] if level else [])
        assert kinds == stage * len(convs)
    predictor = head.predictor
    assert (predictor.in_channels, predictor.out_channels, predictor.kernel_size) == (
        128,
        S + 1,
        (1, 1),
    )
    assert predictor.bias is not None


def test_semantic_head_parameter_count():
    head = SemanticFPNHead(num_classes=S + 1)
    first = 256 * 128 * 9 + 2 * 128  # conv from the FPN's 256 channels + GroupNorm
    later = 128 * 128 * 9 + 2 * 128
    # one first block per level (4), then 0 + 0 + 1 + 2 more blocks on P2..P5
    expected = 4 * first + 3 * later + 128 * (S + 1) + (S + 1)
    assert sum(p.numel() for p in head.parameters()) == expected


def test_semantic_head_output_is_at_the_input_scale():
    head = SemanticFPNHead(num_classes=5, channels=64, norm_groups=16)
    features = [torch.rand(2, 256, 64 // 2 ** (k + 2), 96 // 2 ** (k + 2)) for k in range(4)]
    assert head(features).shape == (2, 5, 64, 96)
    with pytest.raises(ValueError, match="expected 4 FPN levels"):
        head(features[:3])


def test_net_attributes_and_detector_classes(net):
    assert (net.num_things, net.num_stuff, net.num_classes) == (T, S, 1 + T + S)
    assert net.roi_heads.box_predictor.cls_score.out_features == T + 1
    assert net.roi_heads.mask_predictor.mask_fcn_logits.out_channels == T + 1
    assert net.semantic_head.predictor.out_channels == S + 1
    assert "num_things=3" in repr(net)


@pytest.mark.parametrize("training", [True, False])
def test_backbone_runs_once_per_forward(net, training):
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    targets = [target(64, 80, [[4, 6, 30, 40]], [1]), target(72, 64, [[10, 10, 50, 60]], [3])]
    net.train(training)
    with (
        Capture(net.backbone) as backbone,
        Capture(net.semantic_head) as head,
        torch.set_grad_enabled(training),
    ):
        net(images, targets if training else None)
    assert (backbone.calls, head.calls) == (1, 1)


def test_train_losses_finite_and_backward_reaches_both_branches(net):
    images = [torch.rand(3, 64, 80), torch.rand(3, 96, 72)]  # different sizes
    targets = [
        target(64, 80, [[4, 6, 30, 40], [40, 10, 79, 63]], [1, 2]),
        target(96, 72, [[10, 20, 50, 90]], [3]),
    ]
    net.train()
    net.zero_grad()
    losses = net(images, targets)
    assert set(losses) == LOSSES
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert net.semantic_head.predictor.weight.grad.abs().sum() > 0
    assert net.roi_heads.mask_predictor.mask_fcn_logits.weight.grad is not None
    assert net.backbone.body.conv1.weight.grad.abs().sum() > 0


def test_images_without_things(net):
    net.train()
    losses = net([torch.rand(3, 64, 64), torch.rand(3, 48, 64)], [target(64, 64, [], [])] * 2)
    assert set(losses) == LOSSES
    assert losses["loss_mask"] == 0 and losses["loss_sem_seg"] > 0
    assert all(torch.isfinite(v) for v in losses.values())


def test_all_void_semantic_target_gives_zero_loss(net):
    t = target(64, 64, [[4, 4, 30, 30]], [1])
    t["semantic"] = torch.full((64, 64), 255)
    net.train()
    losses = net([torch.rand(3, 64, 64)], [t])
    assert losses["loss_sem_seg"] == 0 and losses["loss_sem_seg"].requires_grad


def test_semantic_loss_follows_the_detector_resize(net):
    # 40x48 -> 53x64 (short side 64 capped by max_size 64 on the long side), padded to 64x64.
    image = torch.rand(3, 40, 48)
    t = target(40, 48, [[5, 5, 20, 30]], [2])
    net.train()
    with Capture(net.semantic_head) as head:
        losses = net([image], [t])
    logits = head.output
    assert logits.shape == (1, S + 1, 64, 64)
    resized = F.interpolate(t["semantic"][None, None].float(), size=(53, 64), mode="nearest")
    expected_target = torch.full((1, 64, 64), 255)
    expected_target[0, :53] = resized[0, 0].long()
    expected = F.cross_entropy(logits, expected_target, ignore_index=255)
    torch.testing.assert_close(losses["loss_sem_seg"], expected)


def test_eval_outputs_follow_the_contract(net):
    images = [torch.rand(3, 40, 48), torch.rand(3, 96, 72)]
    net.eval()
    with torch.no_grad(), Capture(net.semantic_head) as head:
        outputs = net(images)
    resized_sizes = net.transform(images)[0].image_sizes
    assert isinstance(outputs, list) and len(outputs) == 2
    kinds = set()
    for k, (out, image, (resized_h, resized_w)) in enumerate(zip(outputs, images, resized_sizes)):
        h, w = image.shape[-2:]
        n = len(out["scores"])
        assert out["boxes"].shape == (n, 4) and out["labels"].shape == (n,)
        assert ((out["labels"] >= 1) & (out["labels"] <= T)).all()
        assert out["masks"].shape == (n, 1, h, w)
        assert out["sem_seg"].shape == (S + 1, h, w) and out["sem_seg"].is_floating_point()
        # the head's logits cropped to the resized image, then resized to the input
        crop = head.output[k : k + 1, :, :resized_h, :resized_w]
        expected = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(out["sem_seg"], expected)

        panoptic, segments = out["panoptic"], out["segments_info"]
        assert panoptic.shape == (h, w, 2) and panoptic.dtype == torch.int64
        classes, instances = panoptic[..., 0], panoptic[..., 1]
        assert classes.min() >= 0 and classes.max() <= T + S
        thing_ids = {s["id"] for s in segments if s["isthing"]}
        assert set(instances.unique().tolist()) - {0} == thing_ids
        assert ((instances > 0) == ((classes >= 1) & (classes <= T))).all()
        for s in segments:
            if s["isthing"]:
                pixels = instances == s["id"]
                assert 1 <= s["category_id"] <= T and isinstance(s["score"], float)
                assert (classes[pixels] == s["category_id"]).all()
            else:
                assert T < s["category_id"] <= T + S and s["score"] is None
            assert set(s) == {"id", "category_id", "isthing", "score", "area"}
        # exactly panoptic_merge of the thresholded masks and the semantic argmax
        segment_ids, merged = panoptic_merge(
            out["masks"][:, 0] >= KEEP_ALL["mask_threshold"],
            out["scores"],
            out["labels"],
            out["sem_seg"].argmax(0),
            score_threshold=0.0,
            overlap_threshold=0.5,
            stuff_area=KEEP_ALL["stuff_area"],
        )
        assert [s["id"] for s in merged] == [s["id"] for s in segments]
        for m, s in zip(merged, segments):
            offset = 0 if m["isthing"] else T
            assert s["category_id"] == m["category_id"] + offset and s["area"] == m["area"]
            assert (classes[segment_ids == m["id"]] == s["category_id"]).all()
        assert (classes[segment_ids == 0] == 0).all()
        kinds |= {s["isthing"] for s in segments}
    assert kinds == {True, False}


def test_state_dict_round_trip_and_weights_files(tmp_path, net):
    path = tmp_path / "panoptic_fpn.pth"
    torch.save(net.state_dict(), path)
    images = [torch.rand(3, 64, 64)]
    net.eval()
    with torch.no_grad():
        before = net(images)[0]
    torch.manual_seed(1)
    other = PanopticFPN(num_things=T, num_stuff=S, **SMALL, **KEEP_ALL)
    other.load_state_dict(torch.load(path, weights_only=True))
    other.eval()
    with torch.no_grad():
        after = other(images)[0]
    torch.testing.assert_close(after["sem_seg"], before["sem_seg"])
    assert torch.equal(after["panoptic"], before["panoptic"])

    # model.net.weights: a Panoptic FPN file with other stuff classes fine-tunes (frozen BN)
    tuned = PanopticFPN(num_things=T, num_stuff=S + 3, weights=str(path), **SMALL)
    assert tuned.semantic_head.predictor.out_channels == S + 4
    head = net.semantic_head.scale_heads[3][4].weight
    assert torch.equal(tuned.semantic_head.scale_heads[3][4].weight, head)
    assert isinstance(tuned.backbone.body.bn1, FrozenBatchNorm2d)
    # ... and a plain Mask R-CNN file leaves the semantic head at init
    maskrcnn = MaskRCNN(num_classes=T + 1, **SMALL)
    torch.save(maskrcnn.state_dict(), tmp_path / "maskrcnn.pth")
    from_maskrcnn = PanopticFPN(
        num_things=T, num_stuff=S, weights=str(tmp_path / "maskrcnn.pth"), **SMALL
    )
    assert torch.equal(
        from_maskrcnn.backbone.body.conv1.weight, maskrcnn.backbone.body.conv1.weight
    )
    # the detector's keys are Mask R-CNN's own
    detector_keys = {k for k in net.state_dict() if not k.startswith("semantic_head.")}
    assert detector_keys == set(maskrcnn.state_dict())


def test_bad_options():
    with pytest.raises(ValueError, match="model.net.backbone='mobilenet_v3_large'"):
        PanopticFPN(num_things=T, num_stuff=S, backbone="mobilenet_v3_large")
    with pytest.raises(ValueError, match="model.net.num_things=0"):
        PanopticFPN(num_things=0, num_stuff=S, **SMALL)
    with pytest.raises(ValueError, match="model.net.ignore_index=2"):
        PanopticFPN(num_things=T, num_stuff=S, ignore_index=2, **SMALL)
    with pytest.raises(ValueError, match="model.net.num_classes"):
        PanopticFPN(num_things=T, num_stuff=S, num_classes=4, **SMALL)
    with pytest.raises(ValueError, match="semantic_channels=100"):
        PanopticFPN(num_things=T, num_stuff=S, semantic_channels=100, **SMALL)
    with pytest.raises(ValueError, match="model.net.overlap_threshold=2"):
        PanopticFPN(num_things=T, num_stuff=S, overlap_threshold=2, **SMALL)


def test_bad_targets(net):
    net.train()
    t = target(64, 64, [[4, 4, 30, 30]], [1])
    with pytest.raises(ValueError, match="needs targets"):
        net([torch.rand(3, 64, 64)])
    with pytest.raises(ValueError, match=r"lacks \['semantic'\]"):
        net([torch.rand(3, 64, 64)], [{k: v for k, v in t.items() if k != "semantic"}])
    t["boxes"] = torch.tensor([[4.0, 4.0, 4.0, 30.0]])
    with pytest.raises(ValueError, match="box without area"):
        net([torch.rand(3, 64, 64)], [t])
