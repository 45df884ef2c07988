"""PSPNet against Zhao et al. (CVPR 2017) and the authors' released code."""

from __future__ import annotations

import pytest
import torch

from seglab.models import PSPNet
from seglab.models.pspnet import PSPBlock, PSPModule


@pytest.fixture(scope="module")
def pspnet() -> PSPNet:
    with torch.device("meta"):
        return PSPNet(num_classes=21)


def test_pyramid_bins_and_widths(pspnet: PSPNet) -> None:
    assert pspnet.ppm.bins == (1, 2, 3, 6)
    for block, bins in zip(pspnet.ppm.blocks, (1, 2, 3, 6)):
        pool, conv, bn, _ = block
        assert pool.output_size == bins
        assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (2048, 512, (1, 1))
        assert bn.num_features == 512
    assert pspnet.ppm.out_channels == 2048 + 4 * 512
    conv, bn, _, dropout, cls = pspnet.classifier
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (4096, 512, (3, 3))
    assert dropout.p == 0.1 and (cls.in_channels, cls.out_channels) == (512, 21)


def test_aux_head_on_res4(pspnet: PSPNet) -> None:
    conv, _, _, dropout, cls = pspnet.aux_classifier
    assert (conv.in_channels, conv.out_channels) == (1024, 256)
    assert dropout.p == 0.1 and cls.out_channels == 21


def test_parameter_count_follows_the_widths(pspnet: PSPNet) -> None:
    resnet50_trunk = 23_508_032  # torchvision's resnet50 without fc
    ppm = 4 * (2048 * 512 + 2 * 512)
    head = 4096 * 512 * 9 + 2 * 512 + 512 * 21 + 21
    aux = 1024 * 256 * 9 + 2 * 256 + 256 * 21 + 21
    assert sum(p.numel() for p in pspnet.parameters()) == resnet50_trunk + ppm + head + aux


def test_dilated_resnet50_at_output_stride_8(pspnet: PSPNet) -> None:
    backbone = pspnet.backbone
    assert backbone.layer3[1].conv2.dilation == (2, 2)
    assert backbone.layer4[1].conv2.dilation == (4, 4)
    with torch.device("meta"):
        features = backbone(torch.empty(1, 3, 64, 80))
    assert features["res5"].shape == (1, 2048, 8, 10)
    assert features["res4"].shape == (1, 1024, 8, 10)


def test_psp_block_averages_bins_and_upsamples() -> None:
    block = PSPBlock(2, 3, bins=3).eval()
    x = torch.arange(2 * 12 * 12, dtype=torch.float32).view(1, 2, 12, 12)
    pooled = block[0](x)
    assert pooled.shape == (1, 2, 3, 3)
    assert torch.allclose(pooled[0, 1, 1, 2], x[0, 1, 4:8, 8:12].mean())
    out = block(x)
    assert out.shape == (1, 3, 12, 12)
    # Bilinear upsampling (align_corners=False) keeps each corner bin's value on 2x2 pixels.
    levels = block[3](block[2](block[1](pooled)))
    assert torch.allclose(out[..., :2, :2], levels[..., :1, :1])
    assert torch.allclose(out[..., -2:, -2:], levels[..., -1:, -1:])


def test_psp_module_concatenates_input_and_levels() -> None:
    module = PSPModule(8, bins=(1, 2, 3, 6), channels=2)
    x = torch.randn(2, 8, 13, 9)
    out = module(x)
    assert out.shape == (2, 8 + 4 * 2, 13, 9)
    assert torch.equal(out[:, :8], x)


def test_aux_head_can_be_left_out() -> None:
    net = PSPNet(num_classes=4, output_stride=16, aux=False).train()
    assert net.aux_classifier is None
    with torch.no_grad():
        out = net(torch.randn(2, 3, 40, 56))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4, 40, 56)
