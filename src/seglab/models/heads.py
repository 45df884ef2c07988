"""Parts shared by several semantic networks."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FCNHead", "conv_bn_relu", "resize"]


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


class FCNHead(nn.Sequential):
    """Auxiliary head: 3x3 conv to ``in_channels // 4`` + BN + ReLU, dropout, 1x1 conv to K.

    The auxiliary classifier of PSPNet (on res4, weighted 0.4 in the loss) and torchvision's
    segmentation models. ``forward(x: (N, C, h, w)) -> (N, K, h, w)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        channels: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        channels = channels or in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(channels, num_classes, 1),
        )
