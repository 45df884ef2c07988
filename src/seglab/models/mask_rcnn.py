"""Mask R-CNN: torchvision's implementation behind a keyword-only constructor.

He, Gkioxari, Dollar, Girshick, "Mask R-CNN", ICCV 2017 (arXiv:1703.06870), with the FPN backbone
of Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN as TorchvisionMaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops.misc import FrozenBatchNorm2d

from seglab.models import backbones
from seglab.utils.safe_load import UntrustedFileError, read_torch_file

__all__ = [
    "BACKBONES",
    "FixedScaleTransform",
    "Float32BoxPredictor",
    "Float32MaskPredictor",
    "Float32RPNHead",
    "MaskRCNN",
    "backbone_training",
]

log = logging.getLogger(__name__)

# name -> (number of trainable stages when everything trains, feature maps given to the heads)
BACKBONES: dict[str, tuple[int, int]] = {
    "resnet18": (5, 5),
    "resnet34": (5, 5),
    "resnet50": (5, 5),
    "resnet101": (5, 5),
    "mobilenet_v3_large": (6, 3),
}


def backbone_training(
    backbone: str,
    *,
    pretrained: bool,
    trainable_backbone_layers: int | None,
    frozen_batch_norm: bool | None,
) -> tuple[int, bool]:
    """The backbone stages that train and whether its batch norm is frozen; None picks every
    stage and ordinary batch norm from scratch, 3 stages and frozen batch norm when ``pretrained``
    (backbone or whole-model weights are loaded): the stem and res2 frozen and batch norm fixed,
    as the Detectron code released with Mask R-CNN (``FREEZE_AT: 2``, batch norm as fixed affine
    layers) and torchvision's ``maskrcnn_resnet50_fpn``, after He et al.'s ResNet paper, which
    fixes the ImageNet batch-norm statistics when fine-tuning for detection (Appendix A)."""
    max_layers, _ = BACKBONES[backbone]
    if trainable_backbone_layers is None:
        trainable_backbone_layers = 3 if pretrained else max_layers
    if not 0 <= trainable_backbone_layers <= max_layers:
        raise ValueError(
            f"model.net.trainable_backbone_layers={trainable_backbone_layers}: expected "
            f"0..{max_layers} for {backbone}"
        )
    if frozen_batch_norm is None:
        frozen_batch_norm = pretrained
    return trainable_backbone_layers, frozen_batch_norm


def _read_state_dict(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"model.net.{key}={str(path)!r}: no such file (no weights are downloaded; put a "
            f"state-dict file there or set model.net.{key}=null to train from scratch)"
        )
    try:
        state = read_torch_file(path, f"model.net.{key}={str(path)!r}")
    except UntrustedFileError:
        raise
    except Exception as err:
        raise ValueError(
            f"model.net.{key}={str(path)!r} is not a readable state dict ({err})"
        ) from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(
            f"model.net.{key}={str(path)!r} holds a {type(state).__name__}, not a dict"
        )
    prefix = "net."  # a seglab Lightning checkpoint
    if state and all(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


MASK_HEAD_NORMS = ("gn",)


def mask_head(in_channels: int, norm: str | None) -> MaskRCNNHeads:
    """The paper's mask head: four 3x3 convs of 256 channels with ReLU (``norm`` None), or with
    GroupNorm of 32 groups after each conv (``norm="gn"``)."""
    if norm is not None and norm not in MASK_HEAD_NORMS:
        raise ValueError(
            f"model.net.mask_head_norm={norm!r}: expected null (none, the paper's) or one of "
            f"{list(MASK_HEAD_NORMS)}"
        )
    norm_layer = None if norm is None else functools.partial(nn.GroupNorm, 32)
    return MaskRCNNHeads(in_channels, [256, 256, 256, 256], 1, norm_layer=norm_layer)


class Float32RPNHead(RPNHead):
    """torchvision's ``RPNHead`` whose objectness logits and box deltas are float32 whatever the
    autocast precision. The three float32 heads change no weight and no name; under bf16-mixed /
    16-mixed they keep the box decoding and scores in float32: a bf16 box corner near 500 px is
    only exact to 2 px, which would cost AP at the strict IoU thresholds. (The losses are
    float32 anyway: autocast computes cross-entropy and smooth L1 in float32.)"""

    def forward(self, x: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = [], []
        for feature in x:
            t = self.conv(feature)
            logits.append(self.cls_logits(t).float())
            deltas.append(self.bbox_pred(t).float())
        return logits, deltas


class Float32BoxPredictor(FastRCNNPredictor):
    """torchvision's ``FastRCNNPredictor`` with float32 class scores and box deltas (see
    ``Float32RPNHead``)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x).float(), self.bbox_pred(x).float()


class Float32MaskPredictor(MaskRCNNPredictor):
    """torchvision's ``MaskRCNNPredictor`` (2x2 stride-2 deconvolution, ReLU, 1x1 class logits)
    with float32 mask logits (see ``Float32RPNHead``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask_fcn_logits(self.relu(self.conv5_mask(x))).float()


class FixedScaleTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform, except that evaluation resizes every image by one
    factor, ``test_scale`` (capped so that the long side stays within ``max_size``), instead of
    to a short side of ``min_size[-1]``. Training is torchvision's (a short side drawn from
    ``min_size``). For data whose images come at many sizes with objects at one scale (DSB
    2018's microscopy: 256x256 crops to 1388x1040 frames), where a fixed short side would shrink
    the large frames' objects below anything seen in training. ``torch.jit.script`` compiles
    it for inference (``python src/export.py format=torchscript``); a script of it refuses
    train mode, whose resize is torchvision's Python (``super()``, which TorchScript lacks)."""

    def __init__(self, *args: Any, test_scale: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not test_scale > 0:
            raise ValueError(f"model.net.test_scale={test_scale}: expected a factor > 0")
        self.test_scale = float(test_scale)

    def eval_scale(self, height: int, width: int) -> float:
        """The factor evaluation resizes a ``height`` x ``width`` image by."""
        return min(self.test_scale, self.max_size / max(height, width))

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        if self.training:
            if torch.jit.is_scripting():  # TorchScript has no super(): a script serves inference
                raise RuntimeError(
                    "FixedScaleTransform: a TorchScript export runs in eval mode only"
                )
            return super().resize(image, target)
        height, width = image.shape[-2:]
        scale = self.eval_scale(height, width)
        image = nn.functional.interpolate(
            image[None],
            scale_factor=scale,
            mode="bilinear",
            recompute_scale_factor=True,
            align_corners=False,
        )[0]
        if target is not None:
            size = [int(image.shape[-2]), int(image.shape[-1])]
            target = {k: v for k, v in target.items()}
            target["boxes"] = resize_boxes(target["boxes"], [height, width], size)
            if "masks" in target:
                masks = target["masks"][:, None].float()
                target["masks"] = nn.functional.interpolate(masks, size=size)[:, 0].byte()
        return image, target


class MaskRCNN(TorchvisionMaskRCNN):
    """Mask R-CNN with an FPN backbone: ``torchvision.models.detection.MaskRCNN``, built from
    numbers and names.

    The paper's R50-FPN is the default: RoIAlign, a box head of two 1024-d FC layers on 7x7 RoIAlign
    features, and a mask head of RoIAlign 14x14 -> four 3x3 convs of 256 channels -> 2x2
    deconvolution (stride 2) -> 1x1 conv to one 28x28 mask per class, trained with per-pixel
    sigmoid BCE on the ground-truth class's mask and pasted into the box at inference. The defaults
    of every keyword are the paper's (and torchvision's).

    Contract (torchvision detection): ``forward(images, targets)`` with ``images`` a list of float
    (C, H, W) tensors in [0, 1] (sizes may differ; the net resizes and normalises them) returns in
    train mode a dict of scalar losses ``loss_classifier``, ``loss_box_reg``, ``loss_mask``,
    ``loss_objectness``, ``loss_rpn_box_reg``, and in eval mode one dict per image with ``boxes``
    float (N, 4) xyxy, ``labels`` int64 (N,) in 1..K-1, ``scores`` float (N,) and ``masks`` float
    (N, 1, H, W) per-pixel probabilities at the input image's size. ``targets`` (train mode) hold
    ``boxes``, ``labels`` and ``masks`` uint8 (n, H, W) per image; n may be 0.

    Deviations from the paper:
    - torchvision's ResNets put the stride of a bottleneck in its 3x3 conv (ResNet v1.5), the
      paper's Caffe ResNets in the 1x1 conv.
    - Without backbone weights the backbone trains from scratch with ordinary batch norm
      (torchvision's choice); the paper's code (Detectron) fine-tunes ImageNet weights with
      frozen batch norm and a frozen stem and res2, which is what ``frozen_batch_norm`` and
      ``trainable_backbone_layers`` give (by default when ``backbone_weights`` or ``weights`` is
      set; see ``backbone_training``).
    - ResNet-18/34/101 and MobileNetV3-Large FPN backbones are options (MobileNetV3-FPN as in
      torchvision's ``fasterrcnn_mobilenet_v3_large_fpn``: 3 feature maps, every anchor size on each).

    Args:
        num_classes: K, background included.
        backbone: ``resnet50`` (default), ``resnet18``, ``resnet34``, ``resnet101`` or
            ``mobilenet_v3_large``, each with an FPN.
        backbone_weights: the backbone network's ImageNet weights: ``"imagenet"`` (torchvision's
            ``IMAGENET1K_V1``, the weights torchvision's ``maskrcnn_resnet50_fpn`` starts from),
            another name of the backbone's torchvision weights enum (``"IMAGENET1K_V2"``,
            ``"ResNet50_Weights.IMAGENET1K_V2"``), read from torchvision's cache
            (``seglab.models.backbones``), or the path of a local state-dict file (e.g.
            ``resnet50-0676ba61.pth``); None trains from scratch.
        download_weights: when ``backbone_weights`` names torchvision weights whose file is not
            in torchvision's cache, let torchvision download it (hash-checked); off (default),
            that is an error naming the file, the path to place it at and its URL.
        weights: path of a local state-dict file of a whole Mask R-CNN (torchvision's
            ``maskrcnn_resnet50_fpn_coco-*.pth`` or a seglab checkpoint); the class-specific predictor
            layers are skipped when their shapes differ (another ``num_classes``).
        trainable_backbone_layers: backbone stages that train (0..5 for ResNets, 0..6 for
            MobileNetV3); None: all when training from scratch, else 3, as torchvision.
        frozen_batch_norm: ``FrozenBatchNorm2d`` in the backbone; None: when ``backbone_weights``
            or ``weights`` is set.
        min_size, max_size: images are resized so that the short side is ``min_size`` (a list:
            one picked at random per training batch, torchvision's scale jitter) unless the long side
            would exceed ``max_size``.
        image_mean, image_std: normalisation of the 0..1 input (ImageNet statistics by default).
        anchor_sizes: anchor side lengths in input pixels: one per FPN level (P2..P6) for the
            ResNets; all of them on each of the 3 levels of MobileNetV3-FPN.
        anchor_aspect_ratios: height / width ratios at every level.
        rpn_*: region proposal network: NMS top-n before / after NMS in training and testing, NMS
            IoU, anchor IoU thresholds for positives / negatives, anchors sampled per image and
            their positive fraction, minimum objectness of a proposal.
        box_*: box head: minimum class score and NMS IoU of a detection, detections per image,
            proposal IoU thresholds for foreground / background, RoIs sampled per image and their
            positive fraction.
        test_scale: None (torchvision's, the paper's): evaluation resizes to a short side of
            ``min_size`` (its last entry); a factor: evaluation resizes every image by it
            (``FixedScaleTransform``), the long side still capped by ``max_size``.
        mask_head_norm: None (the paper's): the mask head's four 3x3 convs have no normalisation;
            ``"gn"``: each is followed by GroupNorm with 32 groups, as the from-scratch detectors of
            Wu & He ("Group Normalization", 2018, section 6) and He et al. ("Rethinking ImageNet
            Pre-training", 2019) train their heads.
    """

    # State-dict prefixes of the class-specific layers: left at init, not an error, when a weights
    # file was trained on other classes.
    class_specific: tuple[str, ...] = (
        "roi_heads.box_predictor.",
        "roi_heads.mask_predictor.mask_fcn_logits.",
    )
    # State-dict prefixes of parts a weights file may lack entirely (left at init; a subclass's
    # extra head when loading a plain Mask R-CNN).
    optional_parts: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str = "resnet50",
        backbone_weights: str | None = None,
        download_weights: bool = False,
        weights: str | None = None,
        trainable_backbone_layers: int | None = None,
        frozen_batch_norm: bool | None = None,
        min_size: int | Sequence[int] = 800,
        max_size: int = 1333,
        image_mean: Sequence[float] | None = (0.485, 0.456, 0.406),
        image_std: Sequence[float] | None = (0.229, 0.224, 0.225),
        anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
        anchor_aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_test: int = 1000,
        rpn_nms_thresh: float = 0.7,
        rpn_fg_iou_thresh: float = 0.7,
        rpn_bg_iou_thresh: float = 0.3,
        rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        rpn_score_thresh: float = 0.0,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        box_detections_per_img: int = 100,
        box_fg_iou_thresh: float = 0.5,
        box_bg_iou_thresh: float = 0.5,
        box_batch_size_per_image: int = 512,
        box_positive_fraction: float = 0.25,
        test_scale: float | None = None,
        mask_head_norm: str | None = None,
    ) -> None:
        if backbone not in BACKBONES:
            raise ValueError(f"model.net.backbone={backbone!r}: expected one of {list(BACKBONES)}")
        if num_classes < 2:
            raise ValueError(
                f"model.net.num_classes={num_classes}: Mask R-CNN needs background + at least one class"
            )
        levels = BACKBONES[backbone][1]
        trainable_backbone_layers, frozen_batch_norm = backbone_training(
            backbone,
            pretrained=backbone_weights is not None or weights is not None,
            trainable_backbone_layers=trainable_backbone_layers,
            frozen_batch_norm=frozen_batch_norm,
        )
        norm_layer = FrozenBatchNorm2d if frozen_batch_norm else nn.BatchNorm2d
        if backbone.startswith("resnet"):
            body = resnet_fpn_backbone(
                backbone_name=backbone,
                weights=None,
                norm_layer=norm_layer,
                trainable_layers=trainable_backbone_layers,
            )
            if len(anchor_sizes) != levels:
                raise ValueError(
                    f"model.net.anchor_sizes={list(anchor_sizes)}: {backbone}-FPN has {levels} "
                    "levels (P2..P6), one anchor size each"
                )
            sizes = tuple((int(s),) for s in anchor_sizes)
        else:
            body = mobilenet_backbone(
                backbone_name=backbone,
                weights=None,
                fpn=True,
                norm_layer=norm_layer,
                trainable_layers=trainable_backbone_layers,
            )
            sizes = (tuple(int(s) for s in anchor_sizes),) * levels
        if backbone_weights is not None and backbones.reads_pretrained_files():
            self._load_backbone(body, backbone, backbone_weights, download=download_weights)
        ratios = (tuple(float(r) for r in anchor_aspect_ratios),) * len(sizes)
        anchors = AnchorGenerator(sizes, ratios)
        channels = body.out_channels
        # torchvision's default heads, built in torchvision's order (so a seed gives the same
        # weights), as their float32-output forms
        heads = {"mask_head": mask_head(channels, mask_head_norm)}
        heads["mask_predictor"] = Float32MaskPredictor(256, 256, num_classes)
        heads["rpn_head"] = Float32RPNHead(channels, anchors.num_anchors_per_location()[0])
        heads["box_head"] = TwoMLPHead(channels * 7**2, 1024)  # 7x7 RoIAlign output
        heads["box_predictor"] = Float32BoxPredictor(1024, num_classes)
        super().__init__(
            body,
            **heads,
            num_classes=None,
            min_size=tuple(min_size) if isinstance(min_size, Sequence) else min_size,
            max_size=max_size,
            image_mean=list(image_mean) if image_mean is not None else None,
            image_std=list(image_std) if image_std is not None else None,
            rpn_anchor_generator=anchors,
            rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
            rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
            rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
            rpn_nms_thresh=rpn_nms_thresh,
            rpn_fg_iou_thresh=rpn_fg_iou_thresh,
            rpn_bg_iou_thresh=rpn_bg_iou_thresh,
            rpn_batch_size_per_image=rpn_batch_size_per_image,
            rpn_positive_fraction=rpn_positive_fraction,
            rpn_score_thresh=rpn_score_thresh,
            box_score_thresh=box_score_thresh,
            box_nms_thresh=box_nms_thresh,
            box_detections_per_img=box_detections_per_img,
            box_fg_iou_thresh=box_fg_iou_thresh,
            box_bg_iou_thresh=box_bg_iou_thresh,
            box_batch_size_per_image=box_batch_size_per_image,
            box_positive_fraction=box_positive_fraction,
        )
        if test_scale is not None:
            self.transform = FixedScaleTransform(
                self.transform.min_size,
                self.transform.max_size,
                self.transform.image_mean,
                self.transform.image_std,
                test_scale=test_scale,
            )
        self.num_classes = num_classes
        self.backbone_name = backbone
        if weights is not None and backbones.reads_pretrained_files():
            self.load_weights(weights)

    @staticmethod
    def _load_backbone(body: nn.Module, backbone: str, weights: str, *, download: bool) -> None:
        """Load an ImageNet classifier's state dict, torchvision's or a local file's, into the FPN
        body (classifier layers dropped)."""
        source = backbones.resolve_weights(backbone, weights)
        if isinstance(source, Path):
            state = _read_state_dict(source, "backbone_weights")
        else:
            where = f"model.net.backbone_weights={weights!r}"
            _, state = backbones.read_torchvision_weights(source, where, download=download)
        if backbone.startswith("mobilenet"):
            state = {k.removeprefix("features."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
        missing, unexpected = body.body.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ValueError(
                f"model.net.backbone_weights={weights!r} does not fit {backbone}: missing "
                f"{missing[:5]}, unexpected {unexpected[:5]}"
            )

    def load_weights(self, path: str | Path) -> list[str]:
        """Load a whole-model state dict; returns the class-specific keys skipped for their shape."""
        state = _read_state_dict(path, "weights")
        own = self.state_dict()
        skipped = [
            k
            for k, v in state.items()
            if k.startswith(self.class_specific) and k in own and own[k].shape != v.shape
        ]
        state = {k: v for k, v in state.items() if k not in skipped}
        absent = tuple(p for p in self.optional_parts if not any(k.startswith(p) for k in state))
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as err:
            raise ValueError(
                f"model.net.weights={str(path)!r} does not fit this net: {err}"
            ) from err
        missing = [
            k
            for k in missing
            if k not in skipped
            and not k.endswith("num_batches_tracked")
            and not k.startswith(absent)
        ]
        if missing or unexpected:
            raise ValueError(
                f"model.net.weights={str(path)!r} does not fit this net "
                f"(backbone={self.backbone_name}): missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        if absent:
            log.info("model.net.weights: %s not in the file, left at init", list(absent))
        if skipped:
            log.info(
                "model.net.weights: %d class-specific tensors left at init: %s",
                len(skipped),
                skipped,
            )
        return skipped

    def extra_repr(self) -> str:
        return f"backbone={self.backbone_name}, num_classes={self.num_classes}"
