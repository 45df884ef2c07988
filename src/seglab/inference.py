"""Whole-image, sliding-window and overlap-tile inference for semantic segmentation nets.

Every function takes an image batch ``(N, C, H, W)`` (float) and returns logits ``(N, K, H, W)``
at the input's size, runs without gradients and leaves the model's train/eval mode alone (call
``model.eval()`` first). A model may return plain logits or a mapping with the logits under
``"out"`` (torchvision's segmentation models do). Written by hand because neither torch nor
Lightning tiles inference, and the overlap-tile stitching depends on the U-Net's pooling grid.
``tta_logits`` wraps any of them in test-time augmentation (flips and rescaled copies of the
image, their logits mapped back and averaged). ``configure_inference`` chooses the mode and
options eval and predict run a checkpoint with.
``panoptic_merge`` combines a panoptic net's instances and semantic map into one segmentation.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

__all__ = [
    "configure_inference",
    "mirror_pad",
    "overlap_tile",
    "panoptic_merge",
    "parse_tta",
    "predict_logits",
    "sliding_window",
    "tta_logits",
    "whole",
]


def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name}={value!r}: expected a positive int or a pair of them")
    return pair  # type: ignore[return-value]


def _check_image(image: torch.Tensor, caller: str) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or not image.is_floating_point():
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        dtype = image.dtype if isinstance(image, torch.Tensor) else None
        raise ValueError(
            f"{caller}: expected a float image batch (N, C, H, W), got {shape} {dtype}"
        )
    if image.shape[0] == 0:
        raise ValueError(f"{caller}: the image batch is empty")


def _logits(model: Callable[[torch.Tensor], Any], x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, Mapping):
        out = out["out"]
    return out


def _mirror_index(size: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices of ``size`` samples extended by mirroring about the end samples (numpy's
    "reflect"), repeated as often as needed, so any padding works for any size."""
    index = torch.arange(-before, size + after, device=device)
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)


def mirror_pad(image: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Mirror-pad the last two dimensions (numpy's "reflect" mode, reflecting again where a pad
    is wider than the image)."""
    rows = _mirror_index(image.shape[-2], top, bottom, image.device)
    cols = _mirror_index(image.shape[-1], left, right, image.device)
    return image[..., rows[:, None], cols]


def _starts(size: int, window: int, step: int) -> list[int]:
    """Window offsets from 0 every ``step``, the last one flush with the end."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window, step))
    return [*starts, size - window]


def _batches(items: list, batch_size: int) -> Iterator[list]:
    for i in range(0, len(items), batch_size):
        yield items[i : i + batch_size]


@torch.no_grad()
def whole(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """One forward pass over the whole image; the output must be at the input's size."""
    _check_image(image, "whole")
    logits = _logits(model, image)
    if logits.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"whole: the model maps {tuple(image.shape[-2:])} to {tuple(logits.shape[-2:])}; "
            "use inference mode 'overlap_tile' for nets with unpadded convolutions"
        )
    return logits


@torch.no_grad()
def sliding_window(
    model: nn.Module,
    image: torch.Tensor,
    *,
    crop_size: int | tuple[int, int],
    stride: int | tuple[int, int],
    num_classes: int,
    batch_size: int = 1,
) -> torch.Tensor:
    """Average the logits of ``crop_size`` windows taken every ``stride`` pixels (the last window
    in each direction flush with the image end), running ``batch_size`` windows per forward pass.

    Images smaller than a crop are mirror-padded at the bottom and right to the crop size and the
    logits cropped back. The model must keep the crop's size (padded convolutions).
    """
    _check_image(image, "sliding_window")
    crop_h, crop_w = _pair(crop_size, "crop_size")
    step_h, step_w = _pair(stride, "stride")
    if step_h > crop_h or step_w > crop_w:
        raise ValueError(
            f"sliding_window: stride={stride!r} is larger than crop_size={crop_size!r}, "
            "pixels would be skipped"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected at least 1")
    n, _, height, width = image.shape
    padded = mirror_pad(image, 0, max(crop_h - height, 0), 0, max(crop_w - width, 0))
    full_h, full_w = padded.shape[-2:]

    windows = [
        (i, top, left)
        for i in range(n)
        for top in _starts(full_h, crop_h, step_h)
        for left in _starts(full_w, crop_w, step_w)
    ]
    logits = image.new_zeros(n, num_classes, full_h, full_w)
    counts = image.new_zeros(1, 1, full_h, full_w)
    for batch in _batches(windows, batch_size):
        tiles = torch.stack([padded[i, :, y : y + crop_h, x : x + crop_w] for i, y, x in batch])
        out = _logits(model, tiles)
        if out.shape[1:] != (num_classes, crop_h, crop_w):
            raise ValueError(
                f"sliding_window: the model maps a {crop_h}x{crop_w} crop to {tuple(out.shape[1:])}, "
                f"expected ({num_classes}, {crop_h}, {crop_w}); check num_classes, or use "
                "'overlap_tile' for nets with unpadded convolutions"
            )
        for (i, y, x), tile_logits in zip(batch, out):
            logits[i, :, y : y + crop_h, x : x + crop_w] += tile_logits
    for top in _starts(full_h, crop_h, step_h):
        for left in _starts(full_w, crop_w, step_w):
            counts[..., top : top + crop_h, left : left + crop_w] += 1
    return (logits / counts)[..., :height, :width]


def _output_size(
    model: nn.Module, tile_h: int, tile_w: int, image: torch.Tensor
) -> tuple[int, int]:
    if hasattr(model, "output_size"):
        return model.output_size(tile_h), model.output_size(tile_w)
    probe = image.new_zeros(1, image.shape[1], tile_h, tile_w)
    return tuple(_logits(model, probe).shape[-2:])  # type: ignore[return-value]


@torch.no_grad()
def overlap_tile(
    model: nn.Module,
    image: torch.Tensor,
    *,
    tile_size: int | tuple[int, int],
    step: int | tuple[int, int] | None = None,
    batch_size: int = 1,
) -> torch.Tensor:
    """Overlap-tile strategy of U-Net (Ronneberger et al., MICCAI 2015, figure 2) for nets whose
    output is smaller than their input (unpadded convolutions).

    ``tile_size`` is the input tile (572 for the paper's net); its output tile (388) is centred in
    it, with a context margin ``c`` on each side ((572 - 388) / 2 = 92). The image is mirror-padded
    by ``c`` on the top and left and as much as needed on the bottom and right, input tiles are
    taken every ``step`` pixels, and their output tiles are stitched (later tiles overwrite the
    overlap, which holds identical values) and cropped to exactly ``(H, W)``. ``step`` defaults to
    the largest multiple of the net's pooling factor ``2 ** model.depth`` that fits in the output
    tile (384 for the paper's net), so every tile sees the pooling grid of one untiled pass over
    the padded image and the result equals that pass up to float rounding; a model without a
    ``depth`` attribute needs an explicit ``step``.
    """
    _check_image(image, "overlap_tile")
    tile_h, tile_w = _pair(tile_size, "tile_size")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected at least 1")
    out_h, out_w = _output_size(model, tile_h, tile_w, image)
    if (tile_h - out_h) % 2 or (tile_w - out_w) % 2:
        raise ValueError(
            f"overlap_tile: tile_size={tile_size!r} gives output {out_h}x{out_w}, which is not "
            "centred in the tile"
        )
    if step is None:
        if not hasattr(model, "depth"):
            raise ValueError(
                "overlap_tile: step=None needs a model with a 'depth' attribute (pooling factor "
                "2**depth); pass step, a multiple of the net's total pooling factor"
            )
        factor = 2 ** int(model.depth)
        step_h, step_w = out_h // factor * factor, out_w // factor * factor
        if not step_h or not step_w:
            raise ValueError(
                f"overlap_tile: tile_size={tile_size!r} gives output {out_h}x{out_w}, smaller than "
                f"the pooling factor {factor}; use a larger tile"
            )
    else:
        step_h, step_w = _pair(step, "step")
        if step_h > out_h or step_w > out_w:
            raise ValueError(
                f"overlap_tile: step={step!r} is larger than the output tile {out_h}x{out_w}"
            )
        factor = 2 ** int(getattr(model, "depth", 0))
        if step_h % factor or step_w % factor:
            raise ValueError(
                f"overlap_tile: step={step!r} is not a multiple of the net's pooling factor "
                f"{factor}; tiles would see different pooling grids"
            )

    n, _, height, width = image.shape
    margin_h, margin_w = (tile_h - out_h) // 2, (tile_w - out_w) // 2
    rows = max(math.ceil((height - out_h) / step_h), 0) + 1
    cols = max(math.ceil((width - out_w) / step_w), 0) + 1
    padded_h = (rows - 1) * step_h + tile_h
    padded_w = (cols - 1) * step_w + tile_w
    padded = mirror_pad(
        image, margin_h, padded_h - height - margin_h, margin_w, padded_w - width - margin_w
    )

    tiles = [
        (i, r * step_h, c * step_w) for i in range(n) for r in range(rows) for c in range(cols)
    ]
    logits: torch.Tensor | None = None
    for batch in _batches(tiles, batch_size):
        inputs = torch.stack([padded[i, :, y : y + tile_h, x : x + tile_w] for i, y, x in batch])
        out = _logits(model, inputs)
        if out.shape[-2:] != (out_h, out_w):
            raise ValueError(
                f"overlap_tile: the model maps a {tile_h}x{tile_w} tile to "
                f"{tuple(out.shape[-2:])}, expected {out_h}x{out_w}"
            )
        if logits is None:
            logits = out.new_empty(
                n, out.shape[1], padded_h - 2 * margin_h, padded_w - 2 * margin_w
            )
        for (i, y, x), tile_logits in zip(batch, out):
            logits[i, :, y : y + out_h, x : x + out_w] = tile_logits
    return logits[..., :height, :width]


_MODES: dict[str, Callable[..., torch.Tensor]] = {
    "whole": whole,
    "slide": sliding_window,
    "overlap_tile": overlap_tile,
}


# Test-time augmentation views: the dims each flip reverses (mmsegmentation's "horizontal",
# "vertical" and "diagonal" flip directions).
_FLIPS: dict[str, tuple[int, ...]] = {"h": (-1,), "v": (-2,), "hv": (-2, -1)}
_TTA_KEYS = ("flips", "scales", "average")
_AVERAGES = ("logits", "probs")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def parse_tta(value: Any, key: str = "inference.tta") -> dict[str, Any] | None:
    """The test-time augmentation ``value`` checked and completed, or None for none.

    ``value`` is null or false (none) or a mapping of ``flips`` (a list of ``h``, ``v`` and
    ``hv``: left-right, up-down and both at once; default none), ``scales`` (positive factors;
    default ``[1.0]``) and ``average`` (``logits``, the default, or ``probs``). Returns all three
    keys as plain lists and a string.

    Raises:
        ValueError: naming ``<key>.<option>`` and what it takes.
    """
    value = _plain(value)
    if value is None or value is False:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{key}={value!r}: expected null, false or a mapping such as "
            "{flips: [h], scales: [0.75, 1.0, 1.25]}"
        )
    return _check_tta(value, key)


def _check_tta(value: Mapping[str, Any], key: str) -> dict[str, Any]:
    unknown = sorted(set(value) - set(_TTA_KEYS))
    if unknown:
        raise ValueError(f"{key}.{unknown[0]}: no such option; {key} takes {list(_TTA_KEYS)}")
    flips = _plain(value.get("flips"))
    flips = [] if flips is None else flips
    if isinstance(flips, str) or not isinstance(flips, (list, tuple)):
        raise ValueError(
            f"{key}.flips={flips!r}: expected a list of flips, e.g. [h] or [h, v] "
            f"(one of {list(_FLIPS)} each)"
        )
    for flip in flips:
        if flip not in _FLIPS:
            raise ValueError(
                f"{key}.flips={flips!r}: {flip!r} is no flip; expected h (left-right), "
                "v (up-down) or hv (both at once)"
            )
    scales = _plain(value.get("scales"))
    scales = [1.0] if scales is None else scales
    if (
        isinstance(scales, str)
        or not isinstance(scales, (list, tuple))
        or not scales
        or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s < math.inf
            for s in scales
        )
    ):
        raise ValueError(
            f"{key}.scales={scales!r}: expected a non-empty list of positive numbers, e.g. "
            "[0.75, 1.0, 1.25] (1.0: the image as it is)"
        )
    for name, items in (("flips", flips), ("scales", scales)):
        if len(set(items)) != len(items):
            raise ValueError(f"{key}.{name}={items!r}: each at most once")
    average = value.get("average") or "logits"
    if average not in _AVERAGES:
        raise ValueError(f"{key}.average={average!r}: expected one of {list(_AVERAGES)}")
    return {"flips": list(flips), "scales": [float(s) for s in scales], "average": average}


@torch.no_grad()
def tta_logits(
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    *,
    flips: Sequence[str] = (),
    scales: Sequence[float] = (1.0,),
    average: str = "logits",
) -> torch.Tensor:
    """Test-time augmentation as mmsegmentation's ``aug_test``: logits ``(N, K, H, W)`` of
    ``image`` ``(N, C, H, W)`` averaged over its views.

    For each scale the image is resized to ``H * scale x W * scale`` (rounded, halves up;
    bilinear, ``align_corners=False``; 1.0 keeps it), and that copy and each of its ``flips``
    is run through ``predict`` (one inference mode, e.g. ``sliding_window`` with its options
    bound, or a model), whose logits must have the copy's size. Each view's logits are flipped
    back and resized to ``H x W`` (bilinear), and their mean is returned: of the logits
    (``average="logits"``), or the log of the mean softmax probabilities (``"probs"``,
    mmsegmentation's choice), a logit map whose softmax is that mean.
    ``len(scales) * (1 + len(flips))`` passes, one view at a time.
    """
    _check_image(image, "tta")
    options = _check_tta({"flips": list(flips), "scales": list(scales), "average": average}, "tta")
    height, width = image.shape[-2:]
    total = image.new_zeros(())
    views = 0
    for scale in options["scales"]:
        size = (max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1))
        resized = image
        if size != (height, width):
            resized = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        for dims in [(), *(_FLIPS[flip] for flip in options["flips"])]:
            view = resized.flip(dims) if dims else resized
            logits = _logits(predict, view)
            if logits.shape[-2:] != view.shape[-2:]:
                raise ValueError(
                    f"tta: the inference maps a {size[0]}x{size[1]} view to "
                    f"{tuple(logits.shape[-2:])} logits; test-time augmentation needs logits at "
                    "the input size (inference.mode=overlap_tile for unpadded nets)"
                )
            if dims:
                logits = logits.flip(dims)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(
                    logits, size=(height, width), mode="bilinear", align_corners=False
                )
            if options["average"] == "probs":
                logits = logits.softmax(dim=1)
            total = total + logits
            views += 1
    mean = total / views
    if options["average"] == "probs":
        return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()
    return mean


def _keyword_options(mode: str) -> dict[str, inspect.Parameter]:
    if mode not in _MODES:
        raise ValueError(f"inference mode={mode!r}: expected one of {sorted(_MODES)}")
    return {
        name: p
        for name, p in inspect.signature(_MODES[mode]).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def predict_logits(
    model: nn.Module,
    image: torch.Tensor,
    mode: str = "whole",
    *,
    tta: Mapping[str, Any] | None = None,
    **options: object,
) -> torch.Tensor:
    """Logits ``(N, K, H, W)`` for ``image`` ``(N, C, H, W)`` by ``mode``: ``"whole"`` (one pass),
    ``"slide"`` (``sliding_window``: ``crop_size``, ``stride``, ``num_classes``, ``batch_size``) or
    ``"overlap_tile"`` (``overlap_tile``: ``tile_size``, ``step``, ``batch_size``); with ``tta``
    (``flips``, ``scales``, ``average``; see ``parse_tta``) the mode runs on every view of
    ``tta_logits``."""
    parameters = _keyword_options(mode)
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise ValueError(
            f"inference mode={mode!r} does not take option(s) {unknown}; "
            f"it takes {sorted(parameters) or 'none'}"
        )
    missing = sorted(
        name for name, p in parameters.items() if p.default is p.empty and name not in options
    )
    if missing:
        raise ValueError(f"inference mode={mode!r} needs option(s) {missing}")
    augment = parse_tta(tta, "tta")
    if augment is None:
        return _MODES[mode](model, image, **options)
    return tta_logits(lambda view: _MODES[mode](model, view, **options), image, **augment)


def configure_inference(run_cfg: DictConfig, override: Mapping[str, Any] | None) -> None:
    """Set ``run_cfg.model.inference`` for eval and predict: the model's configured inference
    (what the checkpoint stores; whole-image when it stores none) with the keys ``override``
    sets (``inference.mode=overlap_tile inference.tile_size=572`` or ``inference={mode: ...}``
    on the command line; null keys are unset) over it. A new ``mode`` starts from the override
    alone, as the configured options belong to the configured mode. ``num_classes``, which
    ``slide`` needs, is ``model.num_classes`` unless set.

    ``tta`` (test-time augmentation, ``parse_tta``) wraps any mode, so it outlives a change of
    mode: the override's non-null ``tta.*`` keys go over the configured ones, and
    ``inference.tta=false`` turns a configured one off. It is stored complete, or not at all.

    Raises:
        ValueError: naming ``inference.<key>`` when the mode is unknown, an option is not one of
            the mode's or a required one is missing, a ``tta`` option is wrong, or when an
            override is given for a model without inference settings (instance checkpoints).
    """
    given = {k: v for k, v in (_plain(override) or {}).items() if v is not None}
    if isinstance(given.get("tta"), Mapping):
        given["tta"] = {k: v for k, v in given["tta"].items() if v is not None}
        if not given["tta"]:
            del given["tta"]
    if OmegaConf.select(run_cfg, "model.task") != "semantic":
        if given:
            raise ValueError(
                f"inference.{next(iter(given))}: model.task="
                f"{OmegaConf.select(run_cfg, 'model.task')!r} has no inference settings; they "
                "apply to semantic checkpoints"
            )
        return
    configured = OmegaConf.select(run_cfg, "model.inference", default=None)
    settings = dict(OmegaConf.to_container(configured, resolve=True) if configured else {})
    tta, tta_override = settings.pop("tta", None), given.pop("tta", None)
    if isinstance(tta, Mapping) and isinstance(tta_override, Mapping):
        tta = {**tta, **tta_override}
    elif tta_override is not None:
        tta = tta_override
    settings.setdefault("mode", "whole")
    if given.get("mode", settings["mode"]) != settings["mode"]:
        settings = {}
    settings.update(given)
    mode = settings.get("mode", "whole")
    if mode not in _MODES:
        raise ValueError(f"inference.mode={mode!r}: expected one of {sorted(_MODES)}")
    parameters = _keyword_options(mode)
    if "num_classes" in parameters and "num_classes" not in settings:
        settings["num_classes"] = OmegaConf.select(run_cfg, "model.num_classes")
    for key in settings:
        if key != "mode" and key not in parameters:
            raise ValueError(
                f"inference.{key}: inference.mode={mode} takes no such option; it takes "
                f"{sorted(parameters) or 'none'}"
            )
    for key, p in parameters.items():
        if p.default is p.empty and settings.get(key) is None:
            raise ValueError(f"inference.mode={mode} needs inference.{key}")
    tta = parse_tta(tta, "inference.tta")
    if tta is not None:
        settings["tta"] = tta
    OmegaConf.update(run_cfg, "model.inference", settings, merge=False, force_add=True)


def panoptic_merge(
    masks: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    semantic: torch.Tensor,
    *,
    score_threshold: float = 0.5,
    overlap_threshold: float = 0.5,
    stuff_area: int = 4096,
    things_class: int = 0,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Combine instance masks and a semantic map into non-overlapping panoptic segments.

    The heuristic of Kirillov et al., "Panoptic Feature Pyramid Networks" (CVPR 2019), as in
    panopticapi and detectron2's combine step: instances in descending score (ties in input
    order), stopping at the first score below ``score_threshold``; an empty mask is skipped; an
    instance whose pixels already taken exceed ``overlap_threshold`` of its own area is dropped,
    else its untaken pixels become a segment (none if no pixel is left). Then each class of
    ``semantic`` other than ``things_class``, in ascending order, on the pixels still untaken
    becomes a segment unless it covers fewer than ``stuff_area`` of them. The rest stays 0 (void).

    Args:
        masks: bool (N, H, W), one mask per instance.
        scores: (N,) instance scores.
        labels: (N,) the thing category of each instance.
        semantic: int (H, W) semantic-head classes (``things_class`` marks thing pixels).

    Returns:
        ``segment_ids`` int32 (H, W) on ``semantic``'s device: 0 void, k the k-th segment; and
        ``segments``, one dict per segment in id order: ``id`` (1, 2, ...), ``category_id`` (the
        instance's label for things, the semantic class for stuff), ``isthing``, ``score`` (float
        for things, None for stuff) and ``area`` (pixels of the segment).
    """
    if semantic.ndim != 2:
        raise ValueError(f"panoptic_merge: semantic must be (H, W), got {tuple(semantic.shape)}")
    n = len(scores)
    if masks.shape != (n, *semantic.shape) or scores.shape != (n,) or labels.shape != (n,):
        raise ValueError(
            f"panoptic_merge: expected masks (N, H, W), scores (N,) and labels (N,) with "
            f"(H, W) = {tuple(semantic.shape)}, got masks {tuple(masks.shape)}, scores "
            f"{tuple(scores.shape)}, labels {tuple(labels.shape)}"
        )
    if not 0 <= overlap_threshold <= 1:
        raise ValueError(f"panoptic_merge: overlap_threshold={overlap_threshold}: expected 0..1")
    if stuff_area < 0:
        raise ValueError(f"panoptic_merge: stuff_area={stuff_area}: expected >= 0")
    segment_ids = torch.zeros(semantic.shape, dtype=torch.int32, device=semantic.device)
    segments: list[dict[str, Any]] = []
    masks = masks.to(device=semantic.device, dtype=torch.bool)
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    # One transfer each instead of a device sync per instance.
    score_list, label_list = scores.tolist(), labels.tolist()
    areas = masks.flatten(1).sum(1).tolist()
    for i in order:
        if score_list[i] < score_threshold:
            break
        if areas[i] == 0:
            continue
        free = masks[i] & (segment_ids == 0)
        kept = int(free.sum())
        if (areas[i] - kept) / areas[i] > overlap_threshold or kept == 0:
            continue
        segment_ids[free] = len(segments) + 1
        segments.append(
            {
                "id": len(segments) + 1,
                "category_id": int(label_list[i]),
                "isthing": True,
                "score": float(score_list[i]),
                "area": kept,
            }
        )
    untaken = segment_ids == 0
    for cls in torch.unique(semantic[untaken]).tolist():
        if cls == things_class:
            continue
        region = untaken & (semantic == cls)
        area = int(region.sum())
        if area < stuff_area:
            continue
        segment_ids[region] = len(segments) + 1
        segments.append(
            {
                "id": len(segments) + 1,
                "category_id": int(cls),
                "isthing": False,
                "score": None,
                "area": area,
            }
        )
    return segment_ids, segments
