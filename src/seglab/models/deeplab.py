"""DeepLabv3 (Chen et al. 2017, arXiv:1706.05587) and DeepLabv3+ (Chen et al.; ECCV 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.models.segmentation.fcn import FCNHead

from seglab.models import backbones
from seglab.models.heads import SegmentationModel, conv_bn_relu, resize

__all__ = [
    "ASPP",
    "ASPPPooling",
    "DeepLabV3",
    "DeepLabV3Head",
    "DeepLabV3Plus",
    "DeepLabV3PlusDecoder",
    "default_aspp_rates",
]

_ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


def default_aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """The paper's ASPP rates: (6, 12, 18) at output stride 16, doubled at output stride 8."""
    if output_stride not in _ASPP_RATES:
        raise ValueError(
            f"output_stride={output_stride}: ASPP rates are defined for 8 and 16; pass aspp_rates"
        )
    return _ASPP_RATES[output_stride]


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average pooling, 1x1 conv + BN + ReLU, upsampled to the input."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Bilinear upsampling of a 1x1 map is a broadcast.
        return super().forward(x).expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3, Sec. 3.3).

    One 1x1 conv, one 3x3 atrous conv per rate and the image-level branch, each ``channels``
    wide with BN and ReLU, concatenated and fused by a 1x1 conv + BN + ReLU and dropout.
    ``separable=True`` makes the 3x3 branches atrous separable convolutions (DeepLabv3+).
    Module names follow torchvision's ``ASPP``. ``forward((N, C, h, w)) -> (N, channels, h, w)``.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        rates: Sequence[int] = (6, 12, 18),
        channels: int = 256,
        dropout: float = 0.1,
        separable: bool = False,
    ) -> None:
        super().__init__()
        self.rates = tuple(rates)
        self.convs = nn.ModuleList(
            [
                conv_bn_relu(in_channels, channels, kernel_size=1),
                *(
                    conv_bn_relu(in_channels, channels, dilation=r, separable=separable)
                    for r in self.rates
                ),
                ASPPPooling(in_channels, channels),
            ]
        )
        self.project = nn.Sequential(
            nn.Conv2d(len(self.convs) * channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabV3Head(nn.Sequential):
    """ASPP, optionally a 3x3 conv + BN + ReLU (torchvision's extra layer), and a 1x1 classifier.

    With ``extra_conv=True`` the module names match torchvision's ``DeepLabHead``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        rates: Sequence[int],
        channels: int = 256,
        dropout: float = 0.1,
        extra_conv: bool = False,
    ) -> None:
        layers: list[nn.Module] = [
            ASPP(in_channels, rates=rates, channels=channels, dropout=dropout)
        ]
        if extra_conv:
            layers += [
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(channels, num_classes, 1))
        super().__init__(*layers)


class DeepLabV3(SegmentationModel):
    """DeepLabv3: an atrous ResNet with atrous spatial pyramid pooling.

    Chen, Papandreou, Schroff, Adam, "Rethinking Atrous Convolution for Semantic Image
    Segmentation", arXiv:1706.05587, 2017. ResNet-101 at output stride 16 (the last stage's stride
    replaced by dilation; OS 8 dilates the last two), multi-grid (1, 2, 4) in res5; ASPP with rates
    (6, 12, 18) at OS 16 and (12, 24, 36) at OS 8 plus the image-level branch, all 256 channels
    with BN, concatenated and fused by a 1x1 conv + BN; a 1x1 classifier; bilinear upsampling to
    the input. With K = 21 and no auxiliary head: 39,048,533 parameters on ResNet-50 and
    58,040,661 on ResNet-101.

    Atrous (dilated) convolution samples its input with gaps of ``rate - 1`` pixels at the same
    resolution; it is not a transposed convolution (which upsamples), as some lecture notes say.

    Deviations from the paper, each only where it applies:

    - torchvision's ResNet and ImageNet weights; ``multi_grid=None`` uses torchvision's dilation
      pattern (the first res5 block keeps the previous rate).
    - Dropout ``aspp_dropout`` = 0.1 after the fusing conv, from the authors' released code
      (the paper names none; torchvision uses 0.5).
    - Bilinear resizing uses ``align_corners=False`` (the TensorFlow code aligns corners).
    - ``extra_conv=True`` adds torchvision's 3x3 conv + BN + ReLU after ASPP (590,336 parameters).
    - ``aux=True`` adds torchvision's auxiliary FCN head on res4 (the paper has none).
    - ``in_channels != 3`` replaces conv1 (pretrained filters averaged over RGB).

    Pretrained backbone: ``backbone_weights`` is ``"imagenet"``, a torchvision weights name or a
    local file (``seglab.models.backbones``); torchvision downloads its file only with
    ``download_weights=True``. The paper fine-tunes the backbone's batch norm, having found it
    important to train (Sec. 4.1, batch 16 at output stride 16): the default. For its second
    training stage (output stride 8, on trainval) it freezes batch norm, which
    ``frozen_batch_norm=True`` gives (torchvision's ``FrozenBatchNorm2d`` in the backbone; the
    ASPP's own batch norm still trains). ``trainable_backbone_layers`` below 5 also stops the
    gradient of the stem and the first stages (the paper trains all 5).

    Shapes: ``forward(x: (N, in_channels, H, W)) -> (N, num_classes, H, W)``; with ``aux=True``,
    ``{"out", "aux"}`` of that shape in train mode. Training needs batch size > 1 (BN after the
    image-level pooling).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet101",
        backbone_weights: str | Path | None = None,
        download_weights: bool = False,
        frozen_batch_norm: bool = False,
        trainable_backbone_layers: int = 5,
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = (1, 2, 4),
        aspp_rates: Sequence[int] | None = None,
        aspp_channels: int = 256,
        aspp_dropout: float = 0.1,
        extra_conv: bool = False,
        aux: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbones.resnet(
            backbone,
            in_channels=in_channels,
            output_stride=output_stride,
            multi_grid=multi_grid,
            weights=backbone_weights,
            download=download_weights,
            frozen_batch_norm=frozen_batch_norm,
            trainable_layers=trainable_backbone_layers,
        )
        self.classifier = DeepLabV3Head(
            self.backbone.out_channels["res5"],
            num_classes,
            rates=aspp_rates or default_aspp_rates(output_stride),
            channels=aspp_channels,
            dropout=aspp_dropout,
            extra_conv=extra_conv,
        )
        self.aux_classifier = (
            FCNHead(self.backbone.out_channels["res4"], num_classes) if aux else None
        )

    def decode(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(features["res5"])


class DeepLabV3PlusDecoder(nn.Module):
    """DeepLabv3+ decoder: low-level features projected to 48 channels by 1x1 conv + BN + ReLU,
    concatenated with the upsampled encoder output, then two 3x3 convs + BN + ReLU.

    ``forward(high: (N, C, h, w), low: (N, C_low, H/4, W/4)) -> (N, channels, H/4, W/4)``.
    """

    def __init__(
        self,
        in_channels: int,
        low_level_channels: int,
        *,
        project_channels: int = 48,
        channels: int = 256,
        separable: bool = False,
    ) -> None:
        super().__init__()
        self.project = conv_bn_relu(low_level_channels, project_channels, kernel_size=1)
        self.fuse = nn.Sequential(
            conv_bn_relu(in_channels + project_channels, channels, separable=separable),
            conv_bn_relu(channels, channels, separable=separable),
        )

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.project(low)
        return self.fuse(torch.cat([resize(high, low.shape[-2:]), low], dim=1))


class DeepLabV3Plus(SegmentationModel):
    """DeepLabv3+: the DeepLabv3 encoder with a decoder on the res2 features.

    Chen, Zhu, Papandreou, Schroff, Adam, "Encoder-Decoder with Atrous Separable Convolution for
    Semantic Image Segmentation", ECCV 2018 (arXiv:1802.02611). Encoder: the DeepLabv3 backbone
    and ASPP (see ``DeepLabV3``) at output stride 16; decoder: res2 reduced by a 1x1 conv to 48
    channels, concatenated with the encoder output upsampled 4x, two 3x3 convs with 256 channels,
    a 1x1 classifier and 4x bilinear upsampling to the input. ``separable=True`` uses atrous
    separable (depthwise + pointwise) convolutions in ASPP and decoder, as the paper's Xception
    models. Atrous convolution is not a transposed convolution (see ``DeepLabV3``).

    Deviations from the paper, each only where it applies:

    - ResNet-101 from torchvision rather than the modified aligned Xception of the best models.
    - Dropout 0.1 after ASPP's fusing conv, from the authors' released code.
    - Bilinear resizing uses ``align_corners=False`` (the TensorFlow code aligns corners).
    - ``aux=True`` adds an auxiliary FCN head on res4 (the paper has none).
    - ``in_channels != 3`` replaces conv1 (pretrained filters averaged over RGB).

    Pretrained backbone, ``frozen_batch_norm`` and ``trainable_backbone_layers``: as
    ``DeepLabV3``, whose training protocol (batch norm fine-tuned) the paper keeps (Sec. 4).

    Shapes: ``forward(x: (N, in_channels, H, W)) -> (N, num_classes, H, W)``; with ``aux=True``,
    ``{"out", "aux"}`` of that shape in train mode.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet101",
        backbone_weights: str | Path | None = None,
        download_weights: bool = False,
        frozen_batch_norm: bool = False,
        trainable_backbone_layers: int = 5,
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = (1, 2, 4),
        aspp_rates: Sequence[int] | None = None,
        aspp_channels: int = 256,
        aspp_dropout: float = 0.1,
        decoder_project_channels: int = 48,
        decoder_channels: int = 256,
        separable: bool = False,
        aux: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbones.resnet(
            backbone,
            in_channels=in_channels,
            output_stride=output_stride,
            multi_grid=multi_grid,
            weights=backbone_weights,
            download=download_weights,
            frozen_batch_norm=frozen_batch_norm,
            trainable_layers=trainable_backbone_layers,
        )
        channels = self.backbone.out_channels
        self.aspp = ASPP(
            channels["res5"],
            rates=aspp_rates or default_aspp_rates(output_stride),
            channels=aspp_channels,
            dropout=aspp_dropout,
            separable=separable,
        )
        self.decoder = DeepLabV3PlusDecoder(
            aspp_channels,
            channels["res2"],
            project_channels=decoder_project_channels,
            channels=decoder_channels,
            separable=separable,
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)
        self.aux_classifier = FCNHead(channels["res4"], num_classes) if aux else None

    def decode(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.decoder(self.aspp(features["res5"]), features["res2"]))
