"""Panoptic FPN: Mask R-CNN and a semantic FPN head on one shared ResNet-FPN backbone.

Kirillov, Girshick, He, Dollar, "Panoptic Feature Pyramid Networks", CVPR 2019 (arXiv:1901.02446).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from seglab.inference import panoptic_merge
from seglab.models import backbones
from seglab.models.heads import resize
from seglab.models.mask_rcnn import BACKBONES, MaskRCNN, backbone_training

__all__ = ["PanopticFPN", "SemanticFPNHead"]

# torchvision's FPN outputs P2..P5 (strides 4..32); "pool" (P6) feeds the RPN only.
_LEVELS = ("0", "1", "2", "3")


class SemanticFPNHead(nn.Module):
    """The semantic segmentation branch of Panoptic FPN (Kirillov et al., CVPR 2019, Fig. 3).

    From each FPN level P2..P5 (strides 4, 8, 16, 32), repeated 3x3 conv (no bias) + GroupNorm +
    ReLU + 2x bilinear upsample until stride 4: one conv block and no upsample on P2, one stage on
    P3, two on P4, three on P5; the four maps are summed, a 1x1 conv gives the class logits and a
    4x bilinear upsample brings them to the input's size. The 3x3 convolutions get MSRA (He)
    initialisation, as in detectron2's ``SemSegFPNHead`` (the paper does not say); the 1x1
    predictor N(0, 0.01) and zero bias, so that training from scratch starts near uniform class
    probabilities (MSRA there gives logits of standard deviation ~10 on unit-variance features).

    ``forward(features)`` takes the four levels (N, in_channels, H / 2**(k + 2), W / 2**(k + 2)),
    k = 0..3, and returns logits (N, num_classes, H, W).
    """

    def __init__(
        self,
        *,
        in_channels: int = 256,
        num_classes: int,
        channels: int = 128,
        norm_groups: int = 32,
        num_levels: int = 4,
    ) -> None:
        super().__init__()
        if channels % norm_groups:
            raise ValueError(
                f"model.net.semantic_channels={channels} is not a multiple of "
                f"model.net.semantic_norm_groups={norm_groups}"
            )
        self.scale_heads = nn.ModuleList()
        for level in range(num_levels):
            layers: list[nn.Module] = []
            for k in range(max(level, 1)):
                layers += [
                    nn.Conv2d(
                        in_channels if k == 0 else channels, channels, 3, padding=1, bias=False
                    ),
                    nn.GroupNorm(norm_groups, channels),
                    nn.ReLU(inplace=True),
                ]
                if level:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.predictor = nn.Conv2d(channels, num_classes, 1)
        for module in self.scale_heads.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.scale_heads):
            raise ValueError(
                f"SemanticFPNHead: expected {len(self.scale_heads)} FPN levels, got {len(features)}"
            )
        x = sum(head(f) for head, f in zip(self.scale_heads, features))
        # float32 logits under any autocast precision, as the detector heads' (Float32RPNHead)
        return F.interpolate(
            self.predictor(x).float(), scale_factor=4, mode="bilinear", align_corners=False
        )


class PanopticFPN(MaskRCNN):
    """Panoptic FPN: seglab's ``MaskRCNN`` (RPN, box head, 28x28 mask head) and a
    ``SemanticFPNHead`` sharing one ResNet-FPN backbone, which runs once per batch.

    Kirillov, Girshick, He, Dollar, "Panoptic Feature Pyramid Networks", CVPR 2019. The training
    loss is ``L = lambda_i (L_cls + L_bbox + L_mask) + lambda_s L_s`` (the RPN losses counted with
    the instance terms); the net returns the terms unweighted and the task applies ``lambda_i``
    and ``lambda_s`` (``model.loss.instance_weight`` / ``semantic_weight``). ``L_s`` is the
    per-pixel cross-entropy of the semantic head, averaged over the labelled pixels.

    Label spaces, for T thing and S stuff categories: detector labels 0 = background, 1..T;
    semantic-head classes 0 = every thing pixel, 1..S = stuff, ``ignore_index`` = void; panoptic
    class index 0 = void, 1..T = things (= detector label), T + s = stuff class s.

    Contract (torchvision detection): ``forward(images, targets)`` with ``images`` a list of float
    (C, H, W) tensors in [0, 1] (sizes may differ; the net resizes and normalises them).
    - Train mode: ``targets`` hold ``boxes``, ``labels`` and ``masks`` (n, H, W) of the things
      (n may be 0) and ``semantic`` int64 (H, W) semantic-head classes; returns the scalar losses
      ``loss_classifier``, ``loss_box_reg``, ``loss_mask``, ``loss_objectness``,
      ``loss_rpn_box_reg`` and ``loss_sem_seg``. The semantic target follows the detector's
      resize (nearest) and is padded with ``ignore_index`` like the image batch.
    - Eval mode: one dict per image with ``boxes`` (N, 4) xyxy, ``labels`` (N,) in 1..T,
      ``scores`` (N,), ``masks`` float (N, 1, H, W) probabilities, ``sem_seg`` float (S + 1, H, W)
      logits, ``panoptic`` int64 (H, W, 2) = (class index, instance id) and ``segments_info``, a
      list of dicts ``id``, ``category_id`` (class index 1..T+S), ``isthing``, ``score`` (None
      for stuff) and ``area``, all at the input image's size. ``panoptic`` comes from
      ``seglab.inference.panoptic_merge`` of the masks at ``mask_threshold`` and the argmax of
      ``sem_seg``; the instance id of a thing pixel is its segment id, 0 on stuff and void.

    Deviations from the paper:
    - torchvision's ResNets put the stride of a bottleneck in its 3x3 conv (ResNet v1.5), the
      paper's Caffe ResNets in the 1x1 conv.
    - Without backbone weights the backbone trains from scratch with ordinary batch norm; the paper
      fine-tunes ImageNet weights with frozen batch norm (``frozen_batch_norm``, on by default when
      ``backbone_weights`` or ``weights`` is set).
    - Mask probabilities at or above ``mask_threshold`` form an instance's mask (detectron2: above).

    Args:
        num_things: T, thing categories (the detector has T + 1 classes).
        num_stuff: S, stuff categories (the semantic head has S + 1 classes).
        ignore_index: the void label of the semantic target (not in 0..S).
        weights: a whole Panoptic FPN or Mask R-CNN state-dict file (see ``MaskRCNN``); the
            class-specific predictors are left at init when their shapes differ, the semantic head
            when the file has none (a Mask R-CNN's).
        semantic_channels: width of the semantic head's convolutions (128 in the paper).
        semantic_norm_groups: GroupNorm groups of the semantic head (32 in the paper).
        score_threshold, overlap_threshold, stuff_area: the merge settings of ``panoptic_merge``.
        mask_threshold: predicted mask probabilities at or above it form an instance's mask.
        backbone: ``resnet18``, ``resnet34``, ``resnet50`` (default) or ``resnet101``, with an FPN.
        **detector: every other ``MaskRCNN`` keyword (``backbone_weights``,
            ``download_weights``, ``trainable_backbone_layers``, ``frozen_batch_norm``, ``min_size``, ``max_size``,
            ``image_mean``, ``image_std``, ``anchor_*``, ``rpn_*``, ``box_*``).
    """

    class_specific = (*MaskRCNN.class_specific, "semantic_head.predictor.")
    optional_parts = ("semantic_head.",)

    def __init__(
        self,
        *,
        num_things: int,
        num_stuff: int,
        ignore_index: int = 255,
        backbone: str = "resnet50",
        weights: str | None = None,
        semantic_channels: int = 128,
        semantic_norm_groups: int = 32,
        score_threshold: float = 0.5,
        overlap_threshold: float = 0.5,
        stuff_area: int = 4096,
        mask_threshold: float = 0.5,
        **detector: Any,
    ) -> None:
        resnets = [name for name in BACKBONES if name.startswith("resnet")]
        if backbone not in resnets:
            raise ValueError(
                f"model.net.backbone={backbone!r}: Panoptic FPN needs the P2..P5 levels of a "
                f"ResNet-FPN, expected one of {resnets}"
            )
        if "num_classes" in detector:
            raise ValueError(
                "model.net.num_classes: PanopticFPN takes num_things and num_stuff, not num_classes"
            )
        if num_things < 1:
            raise ValueError(f"model.net.num_things={num_things}: expected at least 1")
        if num_stuff < 0:
            raise ValueError(f"model.net.num_stuff={num_stuff}: expected at least 0")
        if 0 <= ignore_index <= num_stuff:
            raise ValueError(
                f"model.net.ignore_index={ignore_index} is a semantic class (0..{num_stuff})"
            )
        if not 0 < mask_threshold <= 1:
            raise ValueError(f"model.net.mask_threshold={mask_threshold}: expected 0 < t <= 1")
        if not 0 <= overlap_threshold <= 1:
            raise ValueError(f"model.net.overlap_threshold={overlap_threshold}: expected 0..1")
        if stuff_area < 0:
            raise ValueError(f"model.net.stuff_area={stuff_area}: expected >= 0")
        # The weights file is loaded below, once the semantic head exists; the backbone is set
        # up for fine-tuning as MaskRCNN would for it.
        trainable, frozen = backbone_training(
            backbone,
            pretrained=weights is not None or detector.get("backbone_weights") is not None,
            trainable_backbone_layers=detector.pop("trainable_backbone_layers", None),
            frozen_batch_norm=detector.pop("frozen_batch_norm", None),
        )
        super().__init__(
            num_classes=num_things + 1,
            backbone=backbone,
            trainable_backbone_layers=trainable,
            frozen_batch_norm=frozen,
            **detector,
        )
        self.semantic_head = SemanticFPNHead(
            in_channels=self.backbone.out_channels,
            num_classes=num_stuff + 1,
            channels=semantic_channels,
            norm_groups=semantic_norm_groups,
        )
        self.num_things = num_things
        self.num_stuff = num_stuff
        self.num_classes = 1 + num_things + num_stuff
        self.ignore_index = ignore_index
        self.score_threshold = score_threshold
        self.overlap_threshold = overlap_threshold
        self.stuff_area = stuff_area
        self.mask_threshold = mask_threshold
        if weights is not None and backbones.reads_pretrained_files():
            self.load_weights(weights)

    def forward(
        self,
        images: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor] | list[dict[str, Any]]:
        if self.training:
            if targets is None:
                raise ValueError(
                    "PanopticFPN: train mode needs targets (boxes, labels, masks, semantic)"
                )
            self._check_targets(targets)
        else:
            targets = None
        input_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, det_targets = self.transform(images, targets)
        features = self.backbone(batch.tensors)
        proposals, proposal_losses = self.rpn(batch, features, det_targets)
        detections, detector_losses = self.roi_heads(
            features, proposals, batch.image_sizes, det_targets
        )
        sem_logits = self.semantic_head([features[k] for k in _LEVELS])
        if self.training:
            target = self._semantic_target(det_targets, batch.image_sizes, sem_logits.shape[-2:])
            return {
                **detector_losses,
                **proposal_losses,
                "loss_sem_seg": self._semantic_loss(sem_logits, target),
            }
        detections = self.transform.postprocess(detections, batch.image_sizes, input_sizes)
        return [
            self._panoptic(det, logits[:, :h, :w], size)
            for det, logits, (h, w), size in zip(
                detections, sem_logits, batch.image_sizes, input_sizes
            )
        ]

    @staticmethod
    def _check_targets(targets: Sequence[dict[str, torch.Tensor]]) -> None:
        for i, t in enumerate(targets):
            missing = [k for k in ("boxes", "labels", "masks", "semantic") if k not in t]
            if missing:
                raise ValueError(f"PanopticFPN: target {i} lacks {missing}")
            boxes = t["boxes"]
            empty = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
            if empty.any():
                raise ValueError(
                    f"PanopticFPN: target {i} has a box without area: {boxes[empty][0].tolist()}"
                )

    def _semantic_target(
        self,
        targets: Sequence[dict[str, torch.Tensor]],
        image_sizes: Sequence[tuple[int, int]],
        padded_size: torch.Size,
    ) -> torch.Tensor:
        """The semantic targets resized (nearest) as their images were and padded with
        ``ignore_index`` to the batch's padded size: int64 (N, H, W)."""
        first = targets[0]["semantic"]
        out = torch.full(
            (len(targets), *padded_size), self.ignore_index, dtype=torch.int64, device=first.device
        )
        for i, (t, (h, w)) in enumerate(zip(targets, image_sizes)):
            semantic = t["semantic"]
            if semantic.shape != (h, w):
                semantic = F.interpolate(semantic[None, None].float(), size=(h, w), mode="nearest")
                semantic = semantic[0, 0].long()
            out[i, :h, :w] = semantic
        return out

    def _semantic_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy summed over the labelled pixels and divided by their number; 0 (with a
        gradient) when there is none, where a plain mean would be 0 / 0."""
        total = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="sum")
        return total / (target != self.ignore_index).sum().clamp(min=1)

    def _panoptic(
        self, det: dict[str, torch.Tensor], logits: torch.Tensor, size: tuple[int, int]
    ) -> dict[str, Any]:
        """Add ``sem_seg`` (logits at the input ``size``), ``panoptic`` and ``segments_info`` to
        one image's detections; ``logits`` are cropped to the resized image."""
        sem_seg = resize(logits[None], size)[0]
        segment_ids, segments = panoptic_merge(
            det["masks"][:, 0] >= self.mask_threshold,
            det["scores"],
            det["labels"],
            sem_seg.argmax(0),
            score_threshold=self.score_threshold,
            overlap_threshold=self.overlap_threshold,
            stuff_area=self.stuff_area,
        )
        # Lookup tables indexed by segment id (0 = void): class index and instance id.
        classes = [0] + [
            s["category_id"] if s["isthing"] else self.num_things + s["category_id"]
            for s in segments
        ]
        instances = [0] + [s["id"] if s["isthing"] else 0 for s in segments]
        table = torch.tensor([classes, instances], dtype=torch.int64, device=segment_ids.device)
        panoptic = table[:, segment_ids.long()].permute(1, 2, 0)
        segments_info = [{**s, "category_id": c} for s, c in zip(segments, classes[1:])]
        return {**det, "sem_seg": sem_seg, "panoptic": panoptic, "segments_info": segments_info}

    def extra_repr(self) -> str:
        return (
            f"backbone={self.backbone_name}, num_things={self.num_things}, "
            f"num_stuff={self.num_stuff}"
        )
