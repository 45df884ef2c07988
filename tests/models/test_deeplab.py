"""DeepLabv3 / DeepLabv3+ against Chen et al. (2017, 2018), and the ResNet backbone builder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models.segmentation import deeplabv3_resnet50

from seglab.models import DeepLabV3, DeepLabV3Plus
from seglab.models.backbones import resnet
from seglab.models.deeplab import ASPPPooling, DeepLabV3PlusDecoder


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    ("backbone", "expected"), [("resnet50", 39_048_533), ("resnet101", 58_040_661)]
)
def test_parameter_count(backbone: str, expected: int) -> None:
    with torch.device("meta"):
        assert _count(DeepLabV3(num_classes=21, backbone=backbone)) == expected


def test_extra_conv_adds_torchvision_layer() -> None:
    with torch.device("meta"):
        net = DeepLabV3(num_classes=21, backbone="resnet50", extra_conv=True)
    assert _count(net) == 39_048_533 + 590_336


def test_defaults_are_the_papers() -> None:
    with torch.device("meta"):
        net = DeepLabV3(num_classes=21)
    assert len(net.backbone.layer3) == 23  # ResNet-101
    assert net.aux_classifier is None
    assert net.classifier[0].rates == (6, 12, 18)
    assert [b.conv2.dilation[0] for b in net.backbone.layer4] == [2, 4, 8]


def _aspp_dilations(aspp: nn.Module) -> list[int]:
    return [branch[0].dilation[0] for branch in aspp.convs[1:-1]]


@pytest.mark.parametrize(("output_stride", "rates"), [(16, [6, 12, 18]), (8, [12, 24, 36])])
def test_aspp_rates(output_stride: int, rates: list[int]) -> None:
    with torch.device("meta"):
        v3 = DeepLabV3(num_classes=21, backbone="resnet50", output_stride=output_stride)
        plus = DeepLabV3Plus(num_classes=21, backbone="resnet50", output_stride=output_stride)
    for aspp in (v3.classifier[0], plus.aspp):
        assert _aspp_dilations(aspp) == rates
        one_by_one, pooling = aspp.convs[0][0], aspp.convs[-1]
        assert one_by_one.kernel_size == (1, 1) and one_by_one.out_channels == 256
        assert isinstance(pooling[0], nn.AdaptiveAvgPool2d) and pooling[1].out_channels == 256
        assert aspp.project[0].in_channels == 5 * 256 and aspp.project[0].out_channels == 256


def test_image_level_branch_is_broadcast() -> None:
    pooling = ASPPPooling(16, 8).eval()
    x = torch.randn(2, 16, 5, 7)
    with torch.no_grad():
        y = pooling(x)
    assert y.shape == (2, 8, 5, 7) and torch.equal(y, y[..., :1, :1].expand_as(y))


@pytest.mark.parametrize(
    ("output_stride", "multi_grid", "dilations", "res5"),
    [
        (16, (1, 2, 4), [2, 4, 8], 4),
        (8, (1, 2, 4), [4, 8, 16], 8),
        (16, None, [1, 2, 2], 4),
        (8, None, [2, 4, 4], 8),
    ],
)
def test_output_stride_and_multi_grid(
    output_stride: int, multi_grid: tuple[int, ...] | None, dilations: list[int], res5: int
) -> None:
    with torch.device("meta"):
        backbone = resnet("resnet50", output_stride=output_stride, multi_grid=multi_grid)
        features = backbone(torch.empty(1, 3, 64, 64))
    assert [b.conv2.dilation[0] for b in backbone.layer4] == dilations
    assert [b.conv2.padding[0] for b in backbone.layer4] == dilations
    assert features["res5"].shape == (1, 2048, res5, res5)
    assert features["res2"].shape == (1, 256, 16, 16)


def test_bad_multi_grid_and_output_stride() -> None:
    with pytest.raises(ValueError, match="multi_grid"):
        resnet("resnet50", output_stride=16, multi_grid=(1, 2))
    with pytest.raises(ValueError, match="output_stride=4"):
        resnet("resnet50", output_stride=4)


def test_same_network_as_torchvision_with_extra_conv() -> None:
    torch.manual_seed(0)
    ref = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
    net = DeepLabV3(
        num_classes=21,
        backbone="resnet50",
        output_stride=8,
        multi_grid=None,
        extra_conv=True,
        aspp_dropout=0.5,
    )
    net.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 48, 56)
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), ref.eval()(x)["out"], atol=1e-5)


def test_deeplabv3plus_decoder() -> None:
    with torch.device("meta"):
        net = DeepLabV3Plus(num_classes=21, backbone="resnet50").eval()
        features = net.backbone(torch.empty(1, 3, 72, 92))
        assert features["res2"].shape == (1, 256, 18, 23)
        assert net(torch.empty(1, 3, 72, 92)).shape == (1, 21, 72, 92)
    project = net.decoder.project[0]
    assert (project.in_channels, project.out_channels, project.kernel_size) == (256, 48, (1, 1))
    first, second = (block[0] for block in net.decoder.fuse)
    assert (first.in_channels, first.out_channels, first.kernel_size) == (256 + 48, 256, (3, 3))
    assert (second.in_channels, second.out_channels, second.kernel_size) == (256, 256, (3, 3))
    decoder = DeepLabV3PlusDecoder(8, 16, project_channels=3, channels=4).eval()
    high, low = torch.randn(1, 8, 5, 6), torch.randn(1, 16, 18, 23)
    with torch.no_grad():
        out = decoder(high, low)
        # Zeroing the encoder features leaves only the low-level path through the projection.
        low_only = decoder(torch.zeros_like(high), low)
    assert out.shape == (1, 4, 18, 23) and not torch.equal(out, low_only)


def test_deeplabv3plus_separable_convolutions() -> None:
    with torch.device("meta"):
        net = DeepLabV3Plus(num_classes=21, backbone="resnet50", separable=True)
    for branch, rate in zip(net.aspp.convs[1:-1], (6, 12, 18)):
        depthwise, pointwise = branch[0], branch[3]
        assert depthwise.groups == depthwise.in_channels == 2048 and depthwise.dilation[0] == rate
        assert pointwise.kernel_size == (1, 1) and pointwise.out_channels == 256
    for block in net.decoder.fuse:
        assert block[0].groups == block[0].in_channels and block[3].kernel_size == (1, 1)


def _save_resnet50(path: Path) -> torch.Tensor:
    model = resnet50()
    with torch.no_grad():
        model.conv1.weight.fill_(0.5)
        model.conv1.weight[:, 1] = 2.0
    torch.save(model.state_dict(), path)
    return model.conv1.weight.detach().clone()


def test_backbone_weights_from_local_file(tmp_path: Path) -> None:
    path = tmp_path / "r50.pth"
    conv1 = _save_resnet50(path)
    net = DeepLabV3(num_classes=3, backbone="resnet50", backbone_weights=str(path))
    assert torch.equal(net.backbone.conv1.weight, conv1)
    grey = DeepLabV3(num_classes=3, backbone="resnet50", in_channels=1, backbone_weights=path)
    assert grey.backbone.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.allclose(grey.backbone.conv1.weight, conv1.sum(dim=1, keepdim=True))


def test_backbone_weights_from_torchvision_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    expected = tmp_path / "checkpoints" / Path(ResNet50_Weights.IMAGENET1K_V1.url).name
    with pytest.raises(FileNotFoundError, match=re.escape(str(expected))):
        DeepLabV3Plus(num_classes=3, backbone="resnet50", backbone_weights="IMAGENET1K_V1")
    expected.parent.mkdir()
    conv1 = _save_resnet50(expected)
    net = DeepLabV3Plus(num_classes=3, backbone="resnet50", backbone_weights="IMAGENET1K_V1")
    assert torch.equal(net.backbone.conv1.weight, conv1)


def test_missing_or_wrong_weights_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "r101.pth"
    with pytest.raises(FileNotFoundError, match=f"backbone_weights=.*{re.escape(str(missing))}"):
        DeepLabV3(num_classes=3, backbone_weights=missing)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "head.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match=r"wrong\.pth: not a resnet50 state dict"):
        DeepLabV3(num_classes=3, backbone="resnet50", backbone_weights=wrong)
