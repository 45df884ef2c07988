"""FCN (Long, Shelhamer, Darrell; CVPR 2015 / Shelhamer, Long, Darrell; TPAMI 2017)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from seglab.models import backbones

__all__ = ["FCN", "bilinear_kernel"]

# Crop offsets of the reference Caffe models (fcn.berkeleyvision.org, voc-fcn{32,16,8}s), valid
# with the 100-pixel padding of conv1_1 and ceil-mode pooling for every input size.
_OFFSETS = {
    "32s": {"out": 19},
    "16s": {"pool4": 5, "out": 27},
    "8s": {"pool4": 5, "pool3": 9, "out": 31},
}


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Weights ``(channels, channels, k, k)`` making a transposed convolution bilinear upsampling.

    Each channel is upsampled on its own (the reference's ``surgery.interp``): the filter sits on
    the diagonal, every cross-channel weight is zero.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor
    filt = (filt1d[:, None] * filt1d[None, :]).float()
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt
    return weight


def _crop(x: torch.Tensor, offset: int, height: int, width: int) -> torch.Tensor:
    return x[..., offset : offset + height, offset : offset + width]


class FCN(nn.Module):
    """Fully convolutional network FCN-32s, FCN-16s or FCN-8s on VGG16.

    Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015,
    and Shelhamer, Long, Darrell, TPAMI 39(4), 2017 (arXiv:1605.06211). As the reference Caffe
    models: VGG16's 13 conv layers (conv1_1 padded by 100 pixels, ceil-mode pooling), fc6 as a 7x7
    conv and fc7 as a 1x1 conv with 4096 channels, ReLU and dropout, a zero-initialised 1x1 score
    layer, and transposed convolutions without bias initialised to bilinear interpolation
    (learnable). FCN-16s fuses a zero-initialised 1x1 score layer on pool4 with the 2x-upsampled
    scores, FCN-8s also one on pool3. Outputs are aligned with the input by the reference's
    crops (offsets 19 / 5, 27 / 5, 9, 31), which hold for every input size. With K = 21 the nets
    have 136,152,917 (32s), 134,815,994 (16s) and 134,489,759 (8s) parameters.

    Deviations from the paper, each only where it applies:

    - Pretrained weights are torchvision's VGG16 (RGB, ImageNet mean and std), not Caffe's
      (BGR, mean only): ``backbone_weights`` is ``"imagenet"`` (``VGG16_Weights.IMAGENET1K_V1``),
      another torchvision name or a local file (``seglab.models.backbones``); torchvision
      downloads its file only with ``download_weights=True``.
    - ``in_channels != 3`` replaces conv1_1 (pretrained filters averaged over RGB).
    - FCN-16s/8s are trained all at once; the staged schedule and the "at-once" pool3/pool4
      feature scaling (0.0001 / 0.01) of the reference models are left to the training recipe.
    - ``freeze_upsampling=True`` keeps the deconvolutions bilinear, as the reference models do
      (lr_mult 0); ``upsample_bias=True`` adds a bias (K parameters) to each of them.

    Shapes: ``forward(x: (N, in_channels, H, W)) -> (N, num_classes, H, W)`` for any H, W.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 3,
        variant: str = "8s",
        backbone_weights: str | Path | None = None,
        download_weights: bool = False,
        dropout: float = 0.5,
        upsample_bias: bool = False,
        freeze_upsampling: bool = False,
    ) -> None:
        super().__init__()
        if variant not in _OFFSETS:
            raise ValueError(f"FCN variant={variant!r}: expected '32s', '16s' or '8s'")
        self.variant = variant
        vgg = backbones.vgg16(
            in_channels=in_channels,
            weights=backbone_weights,
            download=download_weights,
            unused=("classifier.6.",),
        )
        features = vgg.features
        features[0].padding = (100, 100)
        for layer in features:
            if isinstance(layer, nn.MaxPool2d):
                layer.ceil_mode = True
        self.to_pool3 = features[:17]
        self.to_pool4 = features[17:24]
        self.to_pool5 = features[24:]

        # fc6/fc7 become convolutions sharing the (possibly pretrained) Linear weights.
        fc6 = nn.utils.skip_init(nn.Conv2d, 512, 4096, 7)
        fc7 = nn.utils.skip_init(nn.Conv2d, 4096, 4096, 1)
        fc6.weight = nn.Parameter(vgg.classifier[0].weight.detach().view(4096, 512, 7, 7))
        fc6.bias = nn.Parameter(vgg.classifier[0].bias.detach())
        fc7.weight = nn.Parameter(vgg.classifier[3].weight.detach().view(4096, 4096, 1, 1))
        fc7.bias = nn.Parameter(vgg.classifier[3].bias.detach())
        del vgg
        self.fc = nn.Sequential(
            fc6,
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            fc7,
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        if variant == "32s":
            self.upscore = self._deconv(num_classes, 32, upsample_bias)
        else:
            self.score_pool4 = nn.Conv2d(512, num_classes, 1)
            self.upscore2 = self._deconv(num_classes, 2, upsample_bias)
            if variant == "16s":
                self.upscore = self._deconv(num_classes, 16, upsample_bias)
            else:
                self.score_pool3 = nn.Conv2d(256, num_classes, 1)
                self.upscore_pool4 = self._deconv(num_classes, 2, upsample_bias)
                self.upscore = self._deconv(num_classes, 8, upsample_bias)
        for name in ("score_fr", "score_pool4", "score_pool3"):
            if hasattr(self, name):
                nn.init.zeros_(getattr(self, name).weight)
                nn.init.zeros_(getattr(self, name).bias)
        if freeze_upsampling:
            for module in self.modules():
                if isinstance(module, nn.ConvTranspose2d):
                    module.requires_grad_(False)

    @staticmethod
    def _deconv(channels: int, factor: int, bias: bool) -> nn.ConvTranspose2d:
        deconv = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, bias=bias)
        with torch.no_grad():
            deconv.weight.copy_(bilinear_kernel(channels, 2 * factor))
            if bias:
                deconv.bias.zero_()
        return deconv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        offsets = _OFFSETS[self.variant]
        pool3 = self.to_pool3(x)
        pool4 = self.to_pool4(pool3)
        scores = self.score_fr(self.fc(self.to_pool5(pool4)))
        if self.variant != "32s":
            scores = self.upscore2(scores)
            skip = self.score_pool4(pool4)
            scores = scores + _crop(skip, offsets["pool4"], *scores.shape[-2:])
        if self.variant == "8s":
            scores = self.upscore_pool4(scores)
            skip = self.score_pool3(pool3)
            scores = scores + _crop(skip, offsets["pool3"], *scores.shape[-2:])
        return _crop(self.upscore(scores), offsets["out"], h, w)
