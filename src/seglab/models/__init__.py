"""Segmentation networks: plain ``nn.Module``s, one file per paper."""

from seglab.models.unet import UNet

__all__ = ["UNet"]
