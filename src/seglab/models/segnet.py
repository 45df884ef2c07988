"""SegNet (Badrinarayanan, Kendall, Cipolla; TPAMI 2017, arXiv:1511.00561)."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import torch
from torch import nn

from seglab.models import backbones

__all__ = ["SegNet"]

# Decoder widths, deepest stage first, mirroring VGG16's conv layers (conv5_3_D ... conv1_2_D).
_DECODER = (
    (512, 512, 512, 512),
    (512, 512, 512, 256),
    (256, 256, 256, 128),
    (128, 128, 64),
    (64, 64),
)


class SegNet(nn.Module):
    """SegNet: a VGG16-BN encoder and a mirrored decoder that upsamples with the pooling indices.

    Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture
    for Image Segmentation", TPAMI 39(12), 2017. As the reference Caffe model (segnet_train):
    the encoder is VGG16's 13 conv layers with batch norm, each stage ending in 2x2 max pooling
    that keeps its argmax indices; the decoder unpools with ``MaxUnpool2d`` from the matching
    encoder's indices (no learned upsampling), each unpooling followed by 3x3 conv + BN + ReLU
    layers mirroring the encoder, and a final 3x3 conv to K classes (29,449,355 parameters for
    K = 11). Decoder weights use He initialisation, as the paper.

    Deviations from the paper, each only where it applies:

    - Pretrained encoder weights are torchvision's VGG16-BN (RGB, ImageNet mean/std):
      ``backbone_weights`` is ``"imagenet"`` (``VGG16_BN_Weights.IMAGENET1K_V1``), another
      torchvision name or a local file (``seglab.models.backbones``); torchvision downloads its
      file only with ``download_weights=True``. The encoder's batch norm trains, as the paper's.
    - ``in_channels != 3`` replaces conv1_1 (pretrained filters averaged over RGB).
    - Odd feature sizes are pooled with floor and unpooled back to the size before pooling, so
      any H, W >= 32 works (the paper used 360x480).
    - Median-frequency class balancing is a loss option (``model.loss.class_weights``), not part
      of this module.

    Shapes: ``forward(x: (N, in_channels, H, W)) -> (N, num_classes, H, W)``.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 3,
        backbone_weights: str | Path | None = None,
        download_weights: bool = False,
    ) -> None:
        super().__init__()
        vgg = backbones.vgg16(
            batch_norm=True,
            in_channels=in_channels,
            weights=backbone_weights,
            download=download_weights,
        )
        stages: list[nn.Sequential] = []
        layers: list[nn.Module] = []
        for layer in vgg.features:
            if isinstance(layer, nn.MaxPool2d):
                stages.append(nn.Sequential(*layers))
                layers = []
            else:
                layers.append(layer)
        self.encoder = nn.ModuleList(stages)
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, stride=2)

        self.decoder = nn.ModuleList()
        for i, widths in enumerate(_DECODER):
            blocks: list[nn.Module] = []
            for c_in, c_out in pairwise(widths):
                # The encoder's VGG16-BN convolutions keep their bias; the mirror does too.
                blocks += [
                    nn.Conv2d(c_in, c_out, 3, padding=1),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(True),
                ]
            if i == len(_DECODER) - 1:
                blocks.append(nn.Conv2d(widths[-1], num_classes, 3, padding=1))
            self.decoder.append(nn.Sequential(*blocks))
        for module in self.decoder.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes: list[torch.Size] = []
        indices: list[torch.Tensor] = []
        for stage in self.encoder:
            x = stage(x)
            sizes.append(x.shape[-2:])
            x, idx = self.pool(x)
            indices.append(idx)
        for stage, idx, size in zip(self.decoder, reversed(indices), reversed(sizes)):
            x = stage(self.unpool(x, idx, output_size=size))
        return x
