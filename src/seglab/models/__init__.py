"""Segmentation networks: plain ``nn.Module``s, one file per paper."""

from seglab.models.deeplab import DeepLabV3, DeepLabV3Plus
from seglab.models.fcn import FCN
from seglab.models.mask_rcnn import MaskRCNN
from seglab.models.panoptic_fpn import PanopticFPN
from seglab.models.pspnet import PSPNet
from seglab.models.segnet import SegNet
from seglab.models.unet import UNet

__all__ = [
    "FCN",
    "DeepLabV3",
    "DeepLabV3Plus",
    "MaskRCNN",
    "PSPNet",
    "PanopticFPN",
    "SegNet",
    "UNet",
]
