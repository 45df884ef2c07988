"""FCN-32s/16s/8s against Long et al. / Shelhamer et al. and the reference Caffe models."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from seglab.models import FCN, backbones
from seglab.models.fcn import bilinear_kernel

# K = 21, deconvolutions without bias (issue 3; the reference voc-fcn*s models).
PARAMS = {"32s": 136_152_917, "16s": 134_815_994, "8s": 134_489_759}
DECONVS = {
    "32s": ["upscore"],
    "16s": ["upscore2", "upscore"],
    "8s": ["upscore2", "upscore_pool4", "upscore"],
}


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.fixture(scope="module", params=list(PARAMS))
def meta_fcn(request: pytest.FixtureRequest) -> FCN:
    """An FCN with K = 21 on the meta device: structure without the cost of VGG16's init."""
    with torch.device("meta"):
        return FCN(num_classes=21, variant=request.param)


@pytest.fixture(scope="module")
def fcn8s() -> FCN:
    return FCN(num_classes=21, variant="8s")


def test_parameter_count(meta_fcn: FCN) -> None:
    assert _count(meta_fcn) == PARAMS[meta_fcn.variant]


def test_default_variant_is_8s() -> None:
    with torch.device("meta"):
        assert FCN(num_classes=21).variant == "8s"


def test_unknown_variant() -> None:
    with pytest.raises(ValueError, match="variant='4s'"):
        FCN(num_classes=21, variant="4s")


def test_vgg16_trunk_and_fc_layers(meta_fcn: FCN) -> None:
    convs = [m for m in meta_fcn.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs[:13]] == [64, 64, 128, 128, 256, 256, 256] + [512] * 6
    assert convs[0].padding == (100, 100)
    assert all(m.ceil_mode for m in meta_fcn.modules() if isinstance(m, nn.MaxPool2d))
    fc6, fc7 = meta_fcn.fc[0], meta_fcn.fc[3]
    assert (fc6.in_channels, fc6.out_channels, fc6.kernel_size) == (512, 4096, (7, 7))
    assert (fc7.in_channels, fc7.out_channels, fc7.kernel_size) == (4096, 4096, (1, 1))
    assert [type(m) for m in meta_fcn.fc] == [nn.Conv2d, nn.ReLU, nn.Dropout] * 2
    assert meta_fcn.fc[2].p == 0.5


def test_deconvolutions(meta_fcn: FCN) -> None:
    factors = {"upscore2": 2, "upscore_pool4": 2, "upscore": int(meta_fcn.variant[:-1])}
    for name in DECONVS[meta_fcn.variant]:
        deconv = getattr(meta_fcn, name)
        assert (
            deconv.stride == (factors[name],) * 2 and deconv.kernel_size == (2 * factors[name],) * 2
        )
        assert (deconv.in_channels, deconv.out_channels) == (21, 21)
        assert deconv.bias is None and deconv.weight.requires_grad


@pytest.mark.parametrize("factor", [2, 8, 16, 32])
def test_bilinear_initialisation(factor: int) -> None:
    deconv = FCN._deconv(21, factor, bias=False)
    assert torch.equal(deconv.weight, bilinear_kernel(21, 2 * factor))


def test_fcn8s_initialisation(fcn8s: FCN) -> None:
    for name in DECONVS["8s"]:
        deconv = getattr(fcn8s, name)
        assert torch.equal(deconv.weight, bilinear_kernel(21, deconv.kernel_size[0]))
    for name in ("score_fr", "score_pool4", "score_pool3"):
        layer = getattr(fcn8s, name)
        assert layer.kernel_size == (1, 1) and layer.out_channels == 21
        assert not layer.weight.any() and not layer.bias.any()
    assert (fcn8s.score_pool4.in_channels, fcn8s.score_pool3.in_channels) == (512, 256)


def test_bilinear_kernel_values() -> None:
    w = bilinear_kernel(2, 4)
    profile = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.allclose(w[0, 0], profile[:, None] * profile[None, :])
    assert torch.equal(w[0, 1], torch.zeros(4, 4)) and torch.equal(w[1, 1], w[0, 0])


def test_deconvolution_is_bilinear_interpolation() -> None:
    deconv = nn.ConvTranspose2d(3, 3, 4, stride=2, bias=False)
    deconv.weight.data = bilinear_kernel(3, 4)
    x = torch.randn(1, 3, 5, 6)
    up = deconv(x)[..., 1:-1, 1:-1]
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(up[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-6)


@pytest.mark.parametrize("variant", list(PARAMS))
def test_output_aligned_for_every_size(variant: str) -> None:
    with torch.device("meta"):
        net = FCN(num_classes=3, variant=variant)
        for h in [*range(1, 70), 97, 131, 224, 500, 511]:
            assert net(torch.empty(1, 3, h, h + 5)).shape == (1, 3, h, h + 5)


def test_deconvolution_bias_and_freezing() -> None:
    with torch.device("meta"):
        net = FCN(num_classes=21, variant="8s", upsample_bias=True, freeze_upsampling=True)
    assert _count(net) == PARAMS["8s"] + 3 * 21
    for name in DECONVS["8s"]:
        deconv = getattr(net, name)
        assert not deconv.weight.requires_grad and not deconv.bias.requires_grad
    assert not FCN._deconv(21, 8, bias=True).bias.any()


def test_fc_layers_take_the_vgg_classifier_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    build = backbones.vgg16

    def marked_vgg16(**kwargs):
        vgg = build(**kwargs)
        with torch.no_grad():
            vgg.classifier[0].weight[7, 3 * 49 + 2 * 7 + 5] = 42.0
            vgg.classifier[3].weight[9, 11] = -3.0
        return vgg

    monkeypatch.setattr(backbones, "vgg16", marked_vgg16)
    net = FCN(num_classes=2, variant="32s")
    assert net.fc[0].weight[7, 3, 2, 5] == 42.0
    assert net.fc[3].weight[9, 11, 0, 0] == -3.0


def test_missing_weights_file(tmp_path) -> None:
    path = tmp_path / "vgg16.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        FCN(num_classes=21, backbone_weights=str(path))
