"""PSPNet (Zhao, Shi, Qi, Wang, Jia; CVPR 2017, arXiv:1612.01105)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.models.segmentation.fcn import FCNHead

from seglab.models import backbones
from seglab.models.heads import SegmentationModel, resize

__all__ = ["PSPBlock", "PSPModule", "PSPNet"]


class PSPBlock(nn.Sequential):
    """One pyramid level: adaptive average pooling to ``bins x bins``, 1x1 conv + BN + ReLU,
    bilinear upsampling back to the input size. ``forward((N, C, h, w)) -> (N, channels, h, w)``.
    """

    def __init__(self, in_channels: int, channels: int, bins: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(bins),
            nn.Conv2d(in_channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize(super().forward(x), x.shape[-2:])


class PSPModule(nn.Module):
    """Pyramid pooling module: the input concatenated with one ``PSPBlock`` per bin size.

    ``forward((N, C, h, w)) -> (N, C + len(bins) * channels, h, w)``.
    """

    def __init__(self, in_channels: int, *, bins: Sequence[int], channels: int) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.blocks = nn.ModuleList(PSPBlock(in_channels, channels, b) for b in self.bins)
        self.out_channels = in_channels + len(self.bins) * channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, *(block(x) for block in self.blocks)], dim=1)


class PSPNet(SegmentationModel):
    """Pyramid scene parsing network on a dilated ResNet, with an auxiliary FCN head on res4.

    Zhao, Shi, Qi, Wang, Jia, "Pyramid Scene Parsing Network", CVPR 2017. Dilated ResNet-50 at
    output stride 8; pyramid pooling with bins (1, 2, 3, 6), each a 1x1 conv to c/4 = 512
    channels + BN + ReLU, upsampled and concatenated with the 2048-channel features (4096 in
    all); 3x3 conv to 512 + BN + ReLU, dropout 0.1, 1x1 classifier, bilinear upsampling to the
    input. The auxiliary head (3x3 conv to 256 + BN + ReLU, dropout 0.1, 1x1 classifier) on res4
    is used in training only; the task weighs its loss by ``model.loss.aux_weight`` (0.4).
    Widths of the head follow the authors' released code (the paper gives none).

    Deviations from the paper, each only where it applies:

    - torchvision's ResNet (one 7x7 stem conv) instead of the authors' deep-stem ResNet (three
      3x3 stem convs); pretrained weights are torchvision's ImageNet ones.
    - Bilinear resizing uses ``align_corners=False`` (Caffe's Interp layer aligns corners).
    - ``in_channels != 3`` replaces conv1 (pretrained filters averaged over RGB).

    Pretrained backbone: ``backbone_weights`` is ``"imagenet"``, a torchvision weights name or a
    local file (``seglab.models.backbones``); torchvision downloads its file only with
    ``download_weights=True``. The paper fine-tunes the backbone's batch norm and reports that
    the batch size it sees matters (Sec. 5.1): the default. ``frozen_batch_norm=True`` keeps the
    ImageNet statistics instead (torchvision's ``FrozenBatchNorm2d`` in the backbone; the head's
    batch norm still trains), for batches too small to estimate them; ``trainable_backbone_layers``
    below 5 also stops the gradient of the stem and the first stages (the paper trains all 5).

    Shapes: ``forward(x: (N, in_channels, H, W)) -> (N, num_classes, H, W)`` in eval mode;
    ``{"out": (N, K, H, W), "aux": (N, K, H, W)}`` in train mode when ``aux=True``.
    Training needs more than one value per BN channel in the 1x1 bin (batch size > 1).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet50",
        backbone_weights: str | Path | None = None,
        download_weights: bool = False,
        frozen_batch_norm: bool = False,
        trainable_backbone_layers: int = 5,
        output_stride: int = 8,
        ppm_bins: Sequence[int] = (1, 2, 3, 6),
        ppm_channels: int | None = None,
        head_channels: int = 512,
        dropout: float = 0.1,
        aux: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbones.resnet(
            backbone,
            in_channels=in_channels,
            output_stride=output_stride,
            weights=backbone_weights,
            download=download_weights,
            frozen_batch_norm=frozen_batch_norm,
            trainable_layers=trainable_backbone_layers,
        )
        c5 = self.backbone.out_channels["res5"]
        self.ppm = PSPModule(c5, bins=ppm_bins, channels=ppm_channels or c5 // len(ppm_bins))
        self.classifier = nn.Sequential(
            nn.Conv2d(self.ppm.out_channels, head_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(head_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(head_channels, num_classes, 1),
        )
        self.aux_classifier = (
            FCNHead(self.backbone.out_channels["res4"], num_classes) if aux else None
        )

    def decode(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.ppm(features["res5"]))
