"""Parts shared by several semantic networks."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["SegmentationModel", "conv_bn_relu", "resize"]


def resize(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of the last two dimensions of ``x`` to ``size`` (align_corners=False)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def conv_bn_relu(
    in_channels: int,
    out_channels: int,
    *,
    kernel_size: int = 3,
    dilation: int = 1,
    separable: bool = False,
) -> nn.Sequential:
    """Convolution (no bias), batch norm and ReLU, keeping the spatial size.

    ``separable=True`` gives an atrous separable convolution (DeepLabv3+): a depthwise
    convolution, batch norm and ReLU, then a 1x1 pointwise convolution, batch norm and ReLU.
    """
    padding = dilation * (kernel_size - 1) // 2
    if separable and kernel_size > 1:
        return nn.Sequential(
            nn.Conv2d(
                in_channels,
                in_channels,
                kernel_size,
                padding=padding,
                dilation=dilation,
                groups=in_channels,
                bias=False,
            ),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SegmentationModel(nn.Module):
    """Backbone -> head -> logits upsampled to the input, plus an auxiliary head on the backbone's
    ``res4`` in train mode: the forward of torchvision's ``_SimpleSegmentationModel``, shared by
    PSPNet, DeepLabV3 and DeepLabV3Plus.

    A subclass sets ``self.backbone`` (features by stage name, see ``backbones.ResNetFeatures``),
    ``self.aux_classifier`` (a module or None) and its head's modules, and implements
    ``decode(features) -> logits (N, K, h, w)``.

    ``forward(x: (N, C, H, W)) -> (N, K, H, W)``; ``{"out", "aux"}`` of that shape in train mode
    when there is an auxiliary head.
    """

    backbone: nn.Module
    aux_classifier: nn.Module | None

    def decode(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (N, K, h, w) at the head's resolution from the backbone's features."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        out = resize(self.decode(features), size)
        if self.aux_classifier is not None and self.training:
            return {"out": out, "aux": resize(self.aux_classifier(features["res4"]), size)}
        return out
