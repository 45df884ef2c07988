"""SegNet against Badrinarayanan et al. (TPAMI 2017) and its reference Caffe model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seglab.models import SegNet


@pytest.fixture(scope="module")
def segnet() -> SegNet:
    return SegNet(num_classes=11)


def test_parameter_count(segnet: SegNet) -> None:
    n = sum(p.numel() for p in segnet.parameters())
    assert n == 29_449_355
    assert abs(n - 29.45e6) / 29.45e6 < 1e-3


def test_encoder_is_vgg16_bn_and_decoder_mirrors_it(segnet: SegNet) -> None:
    def widths(stages: nn.ModuleList) -> list[list[int]]:
        return [[m.out_channels for m in s if isinstance(m, nn.Conv2d)] for s in stages]

    assert widths(segnet.encoder) == [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3]
    assert widths(segnet.decoder) == [
        [512] * 3,
        [512, 512, 256],
        [256, 256, 128],
        [128, 64],
        [64, 11],
    ]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in segnet.encoder.modules()) == 13
    assert sum(isinstance(m, nn.BatchNorm2d) for m in segnet.decoder.modules()) == 12
    last = segnet.decoder[-1][-1]
    assert isinstance(last, nn.Conv2d) and last.kernel_size == (3, 3)


def test_no_learned_upsampling(segnet: SegNet) -> None:
    assert not any(isinstance(m, nn.ConvTranspose2d | nn.Upsample) for m in segnet.modules())
    assert isinstance(segnet.unpool, nn.MaxUnpool2d) and segnet.pool.return_indices


def test_unpooling_puts_values_back_at_the_argmax(segnet: SegNet) -> None:
    # Odd size: the last row and column are dropped by pooling and restored as zeros.
    x = torch.tensor(
        [
            [1.0, 5.0, 0.0, 2.0, 9.0],
            [3.0, 2.0, 7.0, 1.0, 9.0],
            [0.0, 0.0, 4.0, 6.0, 9.0],
            [8.0, 1.0, 3.0, 2.0, 9.0],
            [9.0, 9.0, 9.0, 9.0, 9.0],
        ]
    )[None, None]
    pooled, idx = segnet.pool(x)
    assert pooled.flatten().tolist() == [5.0, 7.0, 8.0, 6.0]
    expected = torch.tensor(
        [
            [0.0, 5.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 7.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 6.0, 0.0],
            [8.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )[None, None]
    assert torch.equal(segnet.unpool(pooled, idx, output_size=x.shape[-2:]), expected)


def test_decoder_unpools_with_the_matching_encoder_indices(segnet: SegNet) -> None:
    pooled: list[torch.Tensor] = []
    unpooled: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [
        segnet.pool.register_forward_hook(lambda m, args, out: pooled.append(out[1])),
        segnet.unpool.register_forward_hook(lambda m, args, out: unpooled.append((args[1], out))),
    ]
    try:
        with torch.no_grad():
            y = segnet.eval()(torch.randn(1, 3, 64, 96))
    finally:
        for h in hooks:
            h.remove()
    assert y.shape == (1, 11, 64, 96)
    assert len(pooled) == len(unpooled) == 5
    for enc_idx, (dec_idx, out) in zip(reversed(pooled), unpooled):
        assert dec_idx is enc_idx
        # Only the argmax position of each 2x2 window may be non-zero.
        n, c, h, w = out.shape
        mask = torch.zeros(n, c, h * w, dtype=torch.bool)
        mask.scatter_(2, enc_idx.flatten(2), True)
        assert not out.flatten(2)[~mask].any()


def test_missing_weights_file(tmp_path) -> None:
    path = tmp_path / "missing" / "vgg16_bn.pth"
    with pytest.raises(FileNotFoundError, match="vgg16_bn weights file not found"):
        SegNet(num_classes=11, backbone_weights=path)
