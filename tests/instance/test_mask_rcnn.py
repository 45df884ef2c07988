"""seglab.models.MaskRCNN: torchvision's detection contract, the paper's mask head, options."""

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from seglab.models import MaskRCNN

LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}


pytestmark = pytest.mark.usefixtures("one_thread")


def target(h: int, w: int, boxes: list[list[int]], labels: list[int]) -> dict:
    masks = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        masks[k, y0:y1, x0:x1] = 1
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": masks,
    }


@pytest.fixture(scope="module")
def net(small_maskrcnn):
    torch.manual_seed(0)
    return MaskRCNN(num_classes=3, backbone="resnet18", **small_maskrcnn)


def test_train_returns_losses_for_mixed_empty_odd_sized_batch(net):
    images = [torch.rand(3, 37, 53), torch.rand(3, 64, 48), torch.rand(3, 45, 45)]
    targets = [
        target(37, 53, [[0, 0, 53, 37], [52, 36, 53, 37]], [1, 2]),  # image-sized and one pixel
        target(64, 48, [], []),  # no instance
        target(45, 45, [[3, 5, 30, 40]], [2]),
    ]
    net.train()
    losses = net(images, targets)
    assert set(losses) == LOSSES
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert net.roi_heads.mask_predictor.mask_fcn_logits.weight.grad is not None


def test_train_on_images_without_any_instance(net):
    net.train()
    losses = net([torch.rand(3, 40, 40)], [target(40, 40, [], [])])
    assert losses["loss_mask"] == 0 and torch.isfinite(sum(losses.values()))


def test_eval_returns_detections_at_input_size(net, small_maskrcnn):
    net.eval()
    with torch.no_grad():
        out = net([torch.rand(3, 37, 53), torch.rand(3, 64, 64)])
    assert isinstance(out, list) and len(out) == 2
    for det, (h, w) in zip(out, [(37, 53), (64, 64)]):
        n = len(det["scores"])
        assert n <= small_maskrcnn["box_detections_per_img"]
        assert det["boxes"].shape == (n, 4) and det["labels"].shape == (n,)
        assert det["masks"].shape == (n, 1, h, w)
        assert ((det["labels"] >= 1) & (det["labels"] < 3)).all()
        assert ((det["masks"] >= 0) & (det["masks"] <= 1)).all()
        if n:
            assert (det["boxes"][:, 2:] <= torch.tensor([w, h])).all()


def test_mask_head_is_the_papers(net):
    heads = net.roi_heads
    assert heads.mask_roi_pool.output_size == (14, 14)
    assert heads.box_roi_pool.output_size == (7, 7)
    convs = [m for m in heads.mask_head.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (256, 256, (3, 3), (1, 1))
    ] * 4
    deconv = heads.mask_predictor.conv5_mask
    assert isinstance(deconv, nn.ConvTranspose2d)
    assert (deconv.kernel_size, deconv.stride, deconv.out_channels) == ((2, 2), (2, 2), 256)
    assert heads.mask_predictor.mask_fcn_logits.out_channels == 3  # one mask per class
    assert heads.box_head.fc7.out_features == 1024
    # RoIAlign 14x14 -> four convs -> deconv -> 28x28 per-class logits
    features = {str(k): torch.rand(1, 256, 16 // 2**k, 16 // 2**k) for k in range(4)}
    boxes = [torch.tensor([[2.0, 2.0, 30.0, 40.0], [10.0, 0.0, 60.0, 20.0]])]
    pooled = heads.mask_roi_pool(features, boxes, [(64, 64)])
    assert pooled.shape == (2, 256, 14, 14)
    assert heads.mask_predictor(heads.mask_head(pooled)).shape == (2, 3, 28, 28)


def test_group_norm_mask_head(net, small_maskrcnn):
    """mask_head_norm="gn": GroupNorm(32) after each of the four convs, which lose their bias;
    the rest of the net, and the default head's parameters, are unchanged."""
    torch.manual_seed(0)
    gn = MaskRCNN(num_classes=3, backbone="resnet18", mask_head_norm="gn", **small_maskrcnn)
    norms = [m for m in gn.roi_heads.mask_head.modules() if isinstance(m, nn.GroupNorm)]
    assert [(m.num_groups, m.num_channels) for m in norms] == [(32, 256)] * 4
    convs = [m for m in gn.roi_heads.mask_head.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(c.bias is None for c in convs)
    assert not any(isinstance(m, nn.GroupNorm) for m in net.roi_heads.mask_head.modules())
    plain, normed = net.state_dict(), gn.state_dict()
    outside = {k for k in plain if not k.startswith("roi_heads.mask_head.")}
    assert outside == {k for k in normed if not k.startswith("roi_heads.mask_head.")}
    gn.train()
    losses = gn([torch.rand(3, 48, 40)], [target(48, 40, [[4, 6, 30, 40]], [1])])
    assert set(losses) == LOSSES and all(torch.isfinite(v) for v in losses.values())
    losses["loss_mask"].backward()
    assert norms[0].weight.grad is not None and norms[0].weight.grad.abs().sum() > 0


def test_defaults_are_the_papers():
    torch.manual_seed(0)
    net = MaskRCNN(num_classes=2)  # R50-FPN
    assert net.backbone_name == "resnet50"
    assert (net.transform.min_size, net.transform.max_size) == ((800,), 1333)
    assert net.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert net.rpn.anchor_generator.aspect_ratios == ((0.5, 1.0, 2.0),) * 5
    assert net.rpn._pre_nms_top_n == {"training": 2000, "testing": 1000}
    assert net.rpn._post_nms_top_n == {"training": 2000, "testing": 1000}
    assert net.rpn.fg_bg_sampler.batch_size_per_image == 256
    assert net.roi_heads.fg_bg_sampler.batch_size_per_image == 512
    assert net.roi_heads.fg_bg_sampler.positive_fraction == 0.25
    assert (net.roi_heads.score_thresh, net.roi_heads.nms_thresh) == (0.05, 0.5)
    assert net.roi_heads.detections_per_img == 100
    # from scratch: every backbone stage trains, with ordinary batch norm
    assert all(p.requires_grad for p in net.backbone.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.backbone.modules())


@pytest.mark.parametrize("backbone", ["resnet34", "mobilenet_v3_large"])
def test_other_backbones(backbone, small_maskrcnn):
    net = MaskRCNN(num_classes=2, backbone=backbone, **small_maskrcnn).eval()
    with torch.no_grad():
        (det,) = net([torch.rand(3, 40, 56)])
    assert det["masks"].shape[1:] == (1, 40, 56)


def test_weights_files(tmp_path, net, small_maskrcnn):
    with pytest.raises(FileNotFoundError, match=r"model.net.weights=.*no such file"):
        MaskRCNN(num_classes=3, backbone="resnet18", weights=str(tmp_path / "none.pth"))
    with pytest.raises(FileNotFoundError, match="model.net.backbone_weights="):
        MaskRCNN(num_classes=3, backbone="resnet18", backbone_weights=str(tmp_path / "x.pth"))
    path = tmp_path / "maskrcnn.pth"
    torch.save(net.state_dict(), path)
    other = MaskRCNN(num_classes=5, backbone="resnet18", weights=str(path), **small_maskrcnn)
    assert torch.equal(other.backbone.body.conv1.weight, net.backbone.body.conv1.weight)
    assert other.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 5
    assert isinstance(other.backbone.body.bn1, FrozenBatchNorm2d)  # fine-tuning: frozen BN
    with pytest.raises(ValueError, match="does not fit"):
        MaskRCNN(num_classes=3, backbone="resnet34", weights=str(path))

    import torchvision

    classifier = torchvision.models.resnet18(weights=None, num_classes=10)
    torch.save(classifier.state_dict(), tmp_path / "resnet18.pth")
    fine = MaskRCNN(
        num_classes=3, backbone="resnet18", backbone_weights=str(tmp_path / "resnet18.pth")
    )
    assert torch.equal(fine.backbone.body.layer4[1].conv2.weight, classifier.layer4[1].conv2.weight)
    trainable = {
        n.split(".")[0] for n, p in fine.backbone.body.named_parameters() if p.requires_grad
    }
    assert trainable == {"layer2", "layer3", "layer4"}  # torchvision's 3 stages when fine-tuning


def test_bad_options():
    with pytest.raises(ValueError, match="model.net.backbone="):
        MaskRCNN(num_classes=3, backbone="vgg16")
    with pytest.raises(ValueError, match="num_classes=1"):
        MaskRCNN(num_classes=1)
    with pytest.raises(ValueError, match="anchor_sizes"):
        MaskRCNN(num_classes=3, backbone="resnet18", anchor_sizes=[32, 64])
    with pytest.raises(ValueError, match="trainable_backbone_layers=7"):
        MaskRCNN(num_classes=3, backbone="resnet18", trainable_backbone_layers=7)
    with pytest.raises(ValueError, match="model.net.test_scale=0"):
        MaskRCNN(num_classes=3, backbone="resnet18", test_scale=0)
    with pytest.raises(ValueError, match="model.net.mask_head_norm='bn'"):
        MaskRCNN(num_classes=3, backbone="resnet18", mask_head_norm="bn")


def test_test_scale_resizes_every_image_by_one_factor(small_maskrcnn):
    """test_scale: evaluation scales each image by the factor (long side capped by max_size),
    whatever its size; training keeps torchvision's short-side resize; detections come back at
    the input size."""
    options = {**small_maskrcnn, "min_size": 64, "max_size": 400}
    torch.manual_seed(0)
    net = MaskRCNN(num_classes=2, backbone="resnet18", test_scale=1.5, **options)
    plain = MaskRCNN(num_classes=2, backbone="resnet18", **options)
    transform = net.transform.eval()
    for (h, w), expected in [
        ((40, 60), (60, 90)),
        ((100, 50), (150, 75)),
        ((300, 200), (400, 266)),
    ]:
        resized, _ = transform.resize(torch.rand(3, h, w))
        assert tuple(resized.shape[-2:]) == expected
        short_side, _ = plain.transform.eval().resize(torch.rand(3, h, w))
        assert min(short_side.shape[-2:]) == 64 or max(short_side.shape[-2:]) == 400
    image = torch.rand(3, 40, 60)
    box = target(40, 60, [[4, 4, 20, 30]], [1])
    _, scaled = transform.resize(image, dict(box))  # evaluation with targets: scaled alike
    assert torch.allclose(scaled["boxes"], box["boxes"] * 1.5)
    assert scaled["masks"].shape == (1, 60, 90) and scaled["masks"].sum() == 24 * 39
    transform.train()
    trained, scaled = transform.resize(image, dict(box))
    assert tuple(trained.shape[-2:]) == (64, 96)  # short side 64, as torchvision
    assert torch.allclose(scaled["boxes"], box["boxes"] * 64 / 40)
    net.eval()
    with torch.no_grad():
        (det,) = net([torch.rand(3, 37, 53)])
    assert det["masks"].shape[-2:] == (37, 53)
    if len(det["boxes"]):
        assert (det["boxes"][:, 2:] <= torch.tensor([53, 37])).all()
