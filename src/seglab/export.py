"""Model export: ``export(cfg)`` writes a checkpoint's network as ONNX or TorchScript, runs the
written file and compares it with PyTorch before putting it in place.

- Semantic nets (U-Net, FCN, SegNet, PSPNet, DeepLabv3/v3+): ONNX through ``torch.export`` and
  torch's ONNX exporter, checked with onnxruntime; TorchScript by ``torch.jit.trace`` inside a
  scripted ``SizeGuard``. Input ``image`` float32 (N, C, H, W), normalised with the data's
  mean / std; output ``logits`` float32 (N, K, H', W') (H' = H but for the unpadded U-Net).
  Batch, height and width are dynamic, except for the unpadded U-Net, whose input size is fixed
  at the size exported (its valid sizes are a lattice, ``UNet.output_size``): onnxruntime refuses
  any other with "Got invalid dimensions for input: image", the TorchScript file with a
  ``ValueError`` naming the size. SegNet takes sides of 32 pixels or more (``min_size`` in the
  metadata; the TorchScript file refuses smaller inputs, onnxruntime fails on them).
- Mask R-CNN: TorchScript only, by ``torch.jit.script`` (torchvision's scripted detection
  contract: ``model(images: list of float (C, H, W) in [0, 1])`` returns ``(losses,
  detections)``, detections as in eval mode), torchvision's transform replaced by
  ``ShortSideTransform``, which resizes as eager PyTorch does at every image size.
- Panoptic FPN: not exported.

Every export is run right after it is written, on the first image of the checkpoint's
``check_split`` (through the dataset's own reading and preprocessing; a random image when the
data is not at hand) and on that image resized to a second size (with its left-right flip, a
batch of two), and its outputs compared with the PyTorch net's: the largest absolute difference
must be within ``tolerance``, or for semantic nets, no further from the net's float64 logits than
``float64_factor`` times PyTorch's own float32 logits are (``Acceptance``: float32 rounding
alone, which in the deep nets exceeds 1e-4 between two runs of PyTorch itself). Fixed-size
exports are instead run at the second size and must refuse it. Files are written beside ``output`` under a temporary name and renamed only once the
check passed: a failed export leaves nothing at ``output`` (an earlier file there stays).

The deployment metadata (class names, palette, mean / std, input channels, seglab version, model,
input sizes; ``metadata``) is in the ONNX file's ``metadata_props`` (every value JSON-encoded),
and for TorchScript in ``<output stem>.json`` beside the file and in the file itself
(``torch.jit.load(path, _extra_files={"seglab.json": ""})``).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

import seglab
from seglab.models import MaskRCNN, PanopticFPN, SegNet, UNet
from seglab.models.backbones import skip_pretrained_files
from seglab.models.mask_rcnn import FixedScaleTransform
from seglab.utils.checkpoint import config_from_checkpoint, load_weights
from seglab.utils.instantiate import build_datamodule, build_task
from seglab.utils.io import atomic_open

__all__ = [
    "FORMATS",
    "Acceptance",
    "ExactAdaptiveAvgPool2d",
    "ScatterMaxUnpool2d",
    "ShortSideTransform",
    "SizeGuard",
    "export",
    "exportable",
]

log = logging.getLogger(__name__)

# format -> the file extensions it writes
FORMATS: dict[str, tuple[str, ...]] = {"onnx": (".onnx",), "torchscript": (".pt", ".ts")}
# the metadata inside a TorchScript file (torch.jit.save's extra files)
METADATA_FILE = "seglab.json"
# the exporter's graph passes log each step at INFO: nothing a user acts on
_ONNX_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx")
_DEFAULT_SIZE = (128, 128)  # export and check size when there is neither `size` nor a test image


@dataclass(frozen=True)
class Check:
    """One comparison of the export with PyTorch: the input's shape, what it was, the largest
    absolute difference (None: the export refused the input, as it should) and the largest
    absolute value PyTorch gave (the scale the difference is to be read against)."""

    shape: tuple[int, ...]
    source: str
    max_abs_diff: float | None
    max_abs_value: float | None = None
    # above the tolerance (semantic nets): the largest absolute difference of the export's and of
    # PyTorch's float32 logits from the net's float64 logits (``Acceptance.float64_factor``)
    float64_diff: float | None = None
    pytorch_float64_diff: float | None = None


@dataclass(frozen=True)
class Acceptance:
    """When an export's outputs pass the check: within ``tolerance`` of PyTorch's float32
    outputs; or, for semantic nets when ``float64_factor`` is set, no further from the net's
    float64 logits than ``float64_factor`` times PyTorch's own float32 logits are.

    The second rule is there because a deep net's float32 logits are not one fixed answer: the
    order of each sum changes the last bits, and the change grows through the layers with the
    logits' scale. PyTorch differs from itself by more than 1e-4 at DeepLabv3's scale between
    1 and 2 threads, or in channels-last memory format (``python bench/export.py``), so no other
    runtime can be held to 1e-4 of one of its runs there; a wrong export is far from the float64
    logits where PyTorch's float32 ones are not, and is still refused."""

    tolerance: float
    float64_factor: float | None = None


# --------------------------------------------------------------------------- exact stand-ins


def _bins(length: int | torch.Tensor, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, length) 0/1 matrix of adaptive pooling's windows along one axis: bin ``i`` covers
    ``floor(i L / b) <= l < ceil((i + 1) L / b)``, as ATen's ``adaptive_avg_pool2d``."""
    index = torch.arange(bins, device=like.device)
    start = index * length // bins
    end = ((index + 1) * length + bins - 1) // bins
    position = torch.arange(length, device=like.device)
    return ((position >= start[:, None]) & (position < end[:, None])).to(like.dtype)


class ExactAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d(output_size)`` as two matrix products with the window matrices
    built from the input's size: the same windows and means (to float rounding) at every size,
    where torch's ONNX export of ``adaptive_avg_pool2d`` bakes in the kernel of the size traced.
    ``forward((N, C, H, W)) -> (N, C, h, w)``."""

    def __init__(self, output_size: tuple[int, int]) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _bins(x.shape[-2], self.output_size[0], x)
        cols = _bins(x.shape[-1], self.output_size[1], x)
        sums = torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))
        return sums / (rows.sum(1)[:, None] * cols.sum(1)[None, :])


class ScatterMaxUnpool2d(nn.Module):
    """``nn.MaxUnpool2d`` (non-overlapping windows, ``output_size`` given) as a scatter of the
    values to their indices, which is what it computes; ``F.max_unpool2d`` checks
    ``output_size`` in Python, which neither traces nor exports with the size as a variable.
    ``forward(x (N, C, h, w), indices, output_size (..., H, W)) -> (N, C, H, W)``."""

    def forward(
        self, x: torch.Tensor, indices: torch.Tensor, output_size: Sequence[int]
    ) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        height, width = output_size[-2], output_size[-1]
        out = x.new_zeros(n, c, height * width)
        return out.scatter(2, indices.flatten(2), x.flatten(2)).view(n, c, height, width)


def exportable(net: nn.Module, *, onnx: bool) -> nn.Module:
    """``net``, or a copy of it whose modules that do not trace or export with a variable input
    size are replaced by exact stand-ins: ``ScatterMaxUnpool2d``, and for ``onnx``
    ``ExactAdaptiveAvgPool2d`` for pooling to more than 1x1 (traced TorchScript runs torch's own,
    which reads the size at run time). ``net`` itself is left as it is."""

    def stand_in(module: nn.Module) -> nn.Module | None:
        if onnx and isinstance(module, nn.AdaptiveAvgPool2d):
            size = module.output_size
            size = (size, size) if isinstance(size, int) else tuple(size)
            if None not in size and size != (1, 1):  # 1x1: a global pooling, exported as such
                return ExactAdaptiveAvgPool2d(size)
        if isinstance(module, nn.MaxUnpool2d) and module.kernel_size == module.stride:
            return ScatterMaxUnpool2d()
        return None

    names = [name for name, module in net.named_modules() if stand_in(module) is not None]
    if not names:
        return net
    net = copy.deepcopy(net)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name)
        setattr(parent, child, stand_in(getattr(parent, child)))
    return net


class SizeGuard(nn.Module):
    """A semantic export's input checks, scripted around the traced net: a float32 batch
    (N, ``channels``, H, W), with H and W ``size`` when it is set (fixed-size exports), and at
    least ``min_size``; anything else raises a ``ValueError`` saying what the file accepts."""

    def __init__(
        self, net: nn.Module, *, channels: int, size: tuple[int, int] | None, min_size: int
    ) -> None:
        super().__init__()
        self.net = net
        self.channels = channels
        self.height, self.width = size if size is not None else (0, 0)
        self.min_size = min_size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1] != self.channels or image.dtype != torch.float32:
            raise ValueError(
                f"seglab export: expected a float32 batch (N, {self.channels}, H, W), got "
                f"{image.dtype} of shape {image.shape}"
            )
        height, width = image.shape[-2], image.shape[-1]
        if self.height > 0 and (height != self.height or width != self.width):
            raise ValueError(
                f"seglab export: this model was exported at a fixed input size of "
                f"{self.height}x{self.width} (H x W); got {height}x{width}"
            )
        if min(height, width) < self.min_size:
            raise ValueError(
                f"seglab export: expected an input of at least {self.min_size} pixels a side; "
                f"got {height}x{width}"
            )
        return self.net(image)


# --------------------------------------------------------------------------- entry


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt_path``'s net as ``cfg.format`` to ``cfg.output`` and check it.

    Returns the metadata written with the file, with the checks' ``max_abs_diff`` per input.

    Raises:
        ValueError: naming the key of a bad ``format``, ``output``, ``size``, ``check_size``,
            ``tolerance`` or ``opset``; a Mask R-CNN to ONNX, a panoptic checkpoint; an export
            that differs from PyTorch by more than ``tolerance`` (nothing is left at ``output``).
        FileNotFoundError: no checkpoint at ``ckpt_path``.
    """
    fmt, output = _format_and_output(cfg)
    tolerance = _positive(cfg.get("tolerance", 1e-4), "tolerance")
    factor = cfg.get("float64_factor", 2.0)
    accept = Acceptance(tolerance, None if factor is None else _positive(factor, "float64_factor"))
    size = _size(cfg.get("size"), "size")
    check_size = _size(cfg.get("check_size"), "check_size")
    opset = cfg.get("opset")
    if opset is not None and (not isinstance(opset, int) or opset < 7):
        raise ValueError(f"opset={opset!r}: expected an ONNX opset number (e.g. 18) or null")
    run_cfg, checkpoint = config_from_checkpoint(cfg)
    for key in ("compile", "channels_last"):  # training speed options, not part of a file
        if OmegaConf.select(run_cfg, f"model.{key}") is not None:
            OmegaConf.update(run_cfg, f"model.{key}", False)
    datamodule = build_datamodule(run_cfg.data)
    where = f"ckpt_path={str(cfg.ckpt_path)!r}"
    with skip_pretrained_files():  # the checkpoint's weights replace them
        task = build_task(run_cfg, datamodule)
    net = task.net
    if isinstance(net, PanopticFPN) or datamodule.task == "panoptic":
        raise ValueError(
            f"{where} is a panoptic checkpoint ({type(net).__name__}): export is not supported for "
            "the panoptic task; semantic and Mask R-CNN checkpoints export"
        )
    if isinstance(net, MaskRCNN) and fmt == "onnx":
        raise ValueError(
            f"format=onnx: {where} is a Mask R-CNN, which exports to TorchScript only; use "
            "format=torchscript output=FILE.pt"
        )
    load_weights(task, checkpoint, where)
    del checkpoint
    net = net.eval().cpu().float()
    meta = metadata(run_cfg, datamodule, net, fmt)
    meta["checkpoint"] = str(cfg.ckpt_path)
    image, source = _test_image(datamodule, cfg.get("check_split"))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        if isinstance(net, MaskRCNN):
            checks = _export_detector(net, output, meta, image, source, check_size, tolerance)
        else:
            plan = _plan(net, run_cfg, image, size, check_size, datamodule.in_channels)
            meta.update(plan.metadata())
            writer = _write_onnx if fmt == "onnx" else _write_torchscript
            checks = writer(net, output, meta, plan, image, source, accept, opset)
    for check in checks:
        shape = "x".join(map(str, check.shape))
        if check.max_abs_diff is None:
            log.info("%s export refuses %s (%s), as it should", fmt, shape, check.source)
        else:
            log.info(
                "max |%s - PyTorch| = %.3g at %s (%s; PyTorch's values up to %.3g)%s",
                fmt,
                check.max_abs_diff,
                shape,
                check.source,
                check.max_abs_value,
                _float64_note(check, accept),
            )
    log.info("exported %s to %s", type(net).__name__, output)
    meta["checks"] = [vars(c) for c in checks]
    return meta


def _format_and_output(cfg: DictConfig) -> tuple[str, Path]:
    fmt = cfg.get("format")
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: expected one of {list(FORMATS)}")
    output = OmegaConf.select(cfg, "output", throw_on_missing=False)
    expected = " or ".join(f"FILE{ext}" for ext in FORMATS[fmt])
    if not output:
        raise ValueError(f"output={output!r}: required; expected output={expected}")
    path = Path(str(output)).expanduser()
    if path.suffix not in FORMATS[fmt]:
        others = [f for f, exts in FORMATS.items() if path.suffix in exts]
        hint = f" (a format={others[0]} file)" if others else ""
        raise ValueError(f"output={str(output)!r}{hint}: format={fmt} writes {expected}")
    if path.is_dir():
        raise ValueError(f"output={str(output)!r} is a folder; expected {expected}")
    return fmt, path


def _positive(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{key}={value!r}: expected a number > 0")
    return float(value)


def _size(value: Any, key: str) -> tuple[int, int] | None:
    """A ``[H, W]`` config value (or one side for both) as a tuple; None stays None."""
    if value is None:
        return None
    items = [value] if isinstance(value, int) else value
    try:
        items = list(items)
    except TypeError:
        items = []
    if len(items) not in (1, 2) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items
    ):
        raise ValueError(f"{key}={value!r}: expected [HEIGHT, WIDTH] in pixels, or null")
    return (items[0], items[-1])


# --------------------------------------------------------------------------- metadata


def metadata(run_cfg: DictConfig, datamodule: Any, net: nn.Module, fmt: str) -> dict[str, Any]:
    """What a deployer needs besides the weights: seglab's version, the model, the task, the
    classes and their palette, the input channels and normalisation."""
    target = OmegaConf.select(run_cfg, "model.net._target_", default=type(net).__qualname__)
    meta: dict[str, Any] = {
        "seglab_version": seglab.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "format": fmt,
        "model": type(net).__name__,
        "model_target": target,
        "model_config": _net_config(run_cfg),
        "task": datamodule.task,
        "dataset": datamodule.info.name,
        "num_classes": int(datamodule.num_classes),
        "class_names": list(datamodule.class_names),
        "palette": [list(map(int, c)) for c in datamodule.palette],
        "in_channels": int(datamodule.in_channels),
    }
    if isinstance(net, MaskRCNN):
        meta["mean"] = [float(v) for v in net.transform.image_mean]
        meta["std"] = [float(v) for v in net.transform.image_std]
        meta["input"] = (
            "list of float32 (C, H, W) images with values in [0, 1], any size: the model "
            "resizes and normalises them itself (mean, std)"
        )
        meta["output"] = (
            "(losses, detections): torchvision's scripted detection output; detections is one "
            "dict per image: boxes float32 (N, 4) x0 y0 x1 y1 in input pixels, labels int64 (N,) "
            "indices into class_names, scores float32 (N,), masks float32 (N, 1, H, W) "
            "probabilities"
        )
        try:
            categories = getattr(datamodule, "label_to_category", None)
        except FileNotFoundError:
            categories = None
        if categories:
            meta["category_ids"] = {str(k): int(v) for k, v in categories.items()}
        return meta
    meta["mean"] = [float(v) for v in datamodule.mean]
    meta["std"] = [float(v) for v in datamodule.std]
    meta["input"] = (
        "image: float32 (N, in_channels, H, W), pixel values / 255 normalised as (x - mean) / std"
    )
    meta["output"] = "logits: float32 (N, num_classes, H', W'); argmax over classes gives the mask"
    inference = OmegaConf.select(run_cfg, "model.inference", default=None)
    if (
        inference is not None
    ):  # how the checkpoint's model predicts (tiles), for a deployer to follow
        meta["inference"] = OmegaConf.to_container(inference, resolve=True)
    return meta


def _net_config(run_cfg: DictConfig) -> dict[str, Any]:
    """The net's constructor arguments from the checkpoint's config (``variant``, ``padding``,
    ``backbone``, ...), without ``_target_``."""
    node = OmegaConf.select(run_cfg, "model.net", default=None)
    if node is None:
        return {}
    config = OmegaConf.to_container(node, resolve=True)
    return {k: v for k, v in config.items() if k != "_target_"}


# --------------------------------------------------------------------------- semantic


@dataclass(frozen=True)
class _Plan:
    """Sizes of one semantic export: traced at ``size``; ``fixed`` exports refuse any other size;
    ``check_size`` is the second size checked (refused when ``fixed``)."""

    size: tuple[int, int]
    fixed: bool
    min_size: int
    check_size: tuple[int, int]
    output_size: tuple[int, int]

    def metadata(self) -> dict[str, Any]:
        return {
            "input_size": list(self.size) if self.fixed else None,
            "output_size": list(self.output_size) if self.fixed else None,
            "dynamic_axes": ["batch"] if self.fixed else ["batch", "height", "width"],
            "min_size": self.size[0] if self.fixed else self.min_size,
            "exported_at": list(self.size),
        }


def _plan(
    net: nn.Module,
    run_cfg: DictConfig,
    image: torch.Tensor | None,
    size: tuple[int, int] | None,
    check_size: tuple[int, int] | None,
    channels: int,
) -> _Plan:
    """The export and check sizes of a semantic net (see ``_Plan``)."""
    if image is not None and image.shape[0] != channels:
        raise ValueError(f"the test image has {image.shape[0]} channels; the model {channels}")
    seen = tuple(image.shape[-2:]) if image is not None else _DEFAULT_SIZE
    fixed = isinstance(net, UNet) and not net.padding
    if fixed:
        if size is None:
            tile = OmegaConf.select(run_cfg, "model.inference.tile_size", default=None)
            side = tile or net.covering_input(max(seen))
            size = (side, side)
        try:
            output = (net.output_size(size[0]), net.output_size(size[1]))
        except ValueError as err:
            raise ValueError(f"size={list(size)}: {err}") from err
        check_size = check_size or (size[0] + 2**net.depth, size[1] + 2**net.depth)
        if check_size == size:
            raise ValueError(f"check_size={list(check_size)}: expected a size other than size")
        return _Plan(size, True, size[0], check_size, output)
    min_size = 32 if isinstance(net, SegNet) else 1  # SegNet pools 5 times, each to floor(x / 2)
    size = size or (max(seen[0], min_size), max(seen[1], min_size))
    check_size = check_size or (size[0] + 19, size[1] + 7)  # odd offsets: other rounding
    for key, value in (("size", size), ("check_size", check_size)):
        if min(value) < min_size:
            raise ValueError(
                f"{key}={list(value)}: {type(net).__name__} exports take at least {min_size} "
                "pixels a side"
            )
    return _Plan(size, False, min_size, check_size, size)


def _semantic_inputs(
    plan: _Plan, image: torch.Tensor | None, source: str, channels: int
) -> list[tuple[torch.Tensor, str]]:
    """The check inputs: the test image (resized to ``plan.size`` where the size is fixed), and
    at ``plan.check_size`` (which a fixed export must refuse) a batch of two: the test image
    resized and its left-right flip. Real pixels keep the logits at their real scale (noise
    drives an untrained or trained net's logits far beyond it, and float rounding with them);
    without a test image, random ones."""
    if image is None:
        image = torch.randn(channels, *plan.size, generator=torch.Generator().manual_seed(0))
    first = image[None]
    too_small = min(first.shape[-2:]) < plan.min_size
    if (plan.fixed or too_small) and tuple(first.shape[-2:]) != plan.size:
        first = _resize(first, plan.size)
        source += f", resized to {plan.size[0]}x{plan.size[1]}"
    second = _resize(image[None], plan.check_size)
    second = torch.cat([second, second.flip(-1)])
    return [(first, source), (second, f"{source.split(',')[0]} resized, and flipped")]


def _accepting(diff: float) -> str:
    """``tolerance=<the power of ten at or above diff>``."""
    return (
        f"tolerance={10.0 ** math.ceil(math.log10(diff)):g}"
        if 0 < diff < math.inf
        else "no tolerance"
    )


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of an (N, C, H, W) batch to ``size``."""
    return nn.functional.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _compare(
    run: Callable[[torch.Tensor], torch.Tensor],
    net: nn.Module,
    inputs: list[tuple[torch.Tensor, str]],
    plan: _Plan,
    accept: Acceptance,
    fmt: str,
) -> list[Check]:
    """Run the export on ``inputs`` and compare with ``net``; the second input of a fixed-size
    export must be refused. Raises ``ValueError`` on outputs ``accept`` does not accept."""
    checks = []
    net64: list[nn.Module] = []  # the float64 copy of ``net``, made once if a check needs it
    for k, (x, source) in enumerate(inputs):
        shape = tuple(x.shape)
        where = f"on a {'x'.join(map(str, shape))} input ({source})"
        if plan.fixed and k == 1:
            try:
                run(x)
            except Exception:
                checks.append(Check(shape, source, None))
                continue
            raise ValueError(
                f"the {fmt} export, fixed at {plan.size[0]}x{plan.size[1]}, ran on a "
                f"{shape[-2]}x{shape[-1]} input instead of refusing it"
            )
        expected = net(x)
        got = run(x)
        if got.shape != expected.shape:
            raise ValueError(
                f"the {fmt} export gives logits of shape {tuple(got.shape)} {where}; PyTorch "
                f"{tuple(expected.shape)}"
            )
        diff = float((got - expected).abs().max())
        check = Check(shape, source, diff, float(expected.abs().max()))
        if not diff <= accept.tolerance and accept.float64_factor is not None:
            if not net64:
                net64.append(copy.deepcopy(net).double())
            exact = net64[0](x.double())
            check = replace(
                check,
                float64_diff=float((got.double() - exact).abs().max()),
                pytorch_float64_diff=float((expected.double() - exact).abs().max()),
            )
        if not (diff <= accept.tolerance or _rounding_only(check, accept)):
            raise ValueError(_refusal(check, got, expected, net, accept, fmt, where))
        checks.append(check)
    return checks


def _rounding_only(check: Check, accept: Acceptance) -> bool:
    """Whether the export is within ``float64_factor`` times PyTorch's float32 error of the
    float64 logits (``Acceptance``)."""
    if check.float64_diff is None:  # set only when ``float64_factor`` is
        return False
    return check.float64_diff <= accept.float64_factor * check.pytorch_float64_diff


def _float64_note(check: Check, accept: Acceptance) -> str:
    """How a check above ``tolerance`` was accepted, for the log line."""
    if check.float64_diff is None:
        return ""
    return (
        f"; above tolerance={accept.tolerance:g}, accepted as float32 rounding: the export is "
        f"{check.float64_diff:.3g} from the float64 logits, PyTorch's float32 ones "
        f"{check.pytorch_float64_diff:.3g} (float64_factor={accept.float64_factor:g})"
    )


def _refusal(
    check: Check,
    got: torch.Tensor,
    expected: torch.Tensor,
    net: nn.Module,
    accept: Acceptance,
    fmt: str,
    where: str,
) -> str:
    """The error of a check ``accept`` refused: the differences, and what would accept them."""
    diff = check.max_abs_diff
    agree = float((got.argmax(1) == expected.argmax(1)).float().mean())
    why = (
        " (SegNet unpools at each 2x2 window's argmax: float rounding flips near-tied windows)"
        if isinstance(net, SegNet)
        else ""
    )
    float64 = ""
    if check.float64_diff is not None:
        ratio = check.float64_diff / max(check.pytorch_float64_diff, 1e-30)
        float64 = (
            f"; run in float64, the net's logits are {check.float64_diff:.3g} from the export's "
            f"and {check.pytorch_float64_diff:.3g} from PyTorch's float32 ones, {ratio:.3g} times "
            f"as far, above float64_factor={accept.float64_factor:g}: more than float32 rounding"
        )
    return (
        f"the {fmt} export differs from PyTorch by {diff:.3g} (max absolute logit difference, "
        f"PyTorch's logits up to {check.max_abs_value:.3g}; the same class at {agree:.4%} of the "
        f"pixels{why}) {where}; expected at most tolerance={accept.tolerance:g}{float64}: not "
        f"written ({_accepting(diff)} accepts it)"
    )


def _write_onnx(
    net: nn.Module,
    output: Path,
    meta: dict[str, Any],
    plan: _Plan,
    image: torch.Tensor | None,
    source: str,
    accept: Acceptance,
    opset: int | None,
) -> list[Check]:
    """ONNX through ``torch.export`` (non-strict, batch / height / width ``Dim.DYNAMIC``, which
    fails rather than bake in a size) and torch's ONNX exporter; checked with onnxruntime."""
    import onnx
    import onnxruntime

    channels = meta["in_channels"]
    example = torch.randn(2, channels, *plan.size, generator=torch.Generator().manual_seed(1))
    dynamic = torch.export.Dim.DYNAMIC
    axes = {0: dynamic} if plan.fixed else {0: dynamic, 2: dynamic, 3: dynamic}
    with _quiet(_ONNX_LOGGERS):
        program = torch.export.export(
            exportable(net, onnx=True), (example,), dynamic_shapes=(axes,), strict=False
        )
        onnx_program = torch.onnx.export(
            program,
            (example,),
            dynamo=True,
            input_names=["image"],
            output_names=["logits"],
            opset_version=opset,
            verbose=False,
        )
    model = onnx_program.model_proto
    _name_dims(model, ["batch", None, "height", "width"])
    meta["opset"] = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    onnx.helper.set_model_props(model, {k: json.dumps(v) for k, v in meta.items()})
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # the refusal checked below is an error, raised, not logged
    with atomic_open(output) as f:
        f.write(model.SerializeToString())
        f.flush()
        session = onnxruntime.InferenceSession(f.name, options, providers=["CPUExecutionProvider"])

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])

        inputs = _semantic_inputs(plan, image, source, channels)
        return _compare(run, net, inputs, plan, accept, "onnx")


def _name_dims(model: Any, names: Sequence[str | None]) -> None:
    """Rename the input's symbolic dimensions (torch.export's ``s0``, ``s53``, ...) to ``names``
    wherever they appear in the graph's inputs, outputs and value infos."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    renamed = {d.dim_param: n for d, n in zip(dims, names) if d.dim_param and n is not None}
    graph = model.graph
    for info in (*graph.input, *graph.output, *graph.value_info):
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param in renamed:
                dim.dim_param = renamed[dim.dim_param]


def _write_torchscript(
    net: nn.Module,
    output: Path,
    meta: dict[str, Any],
    plan: _Plan,
    image: torch.Tensor | None,
    source: str,
    accept: Acceptance,
    opset: int | None,
) -> list[Check]:
    """TorchScript by ``torch.jit.trace`` (the nets' size arithmetic is traced as operations;
    their size checks, Python branches, are not) inside a scripted ``SizeGuard``."""
    channels = meta["in_channels"]
    example = torch.randn(2, channels, *plan.size, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(exportable(net, onnx=False), example, check_trace=False)
    guard = SizeGuard(
        traced, channels=channels, size=plan.size if plan.fixed else None, min_size=plan.min_size
    )
    return _save_script(torch.jit.script(guard), output, meta, accept, plan, net, image, source)


def _save_script(
    module: torch.jit.ScriptModule,
    output: Path,
    meta: dict[str, Any],
    accept: Acceptance,
    plan: _Plan | None,
    net: nn.Module,
    image: Any,
    source: str,
    check_size: tuple[int, int] | None = None,
) -> list[Check]:
    """Write ``module`` to ``output`` and ``meta`` to ``<output stem>.json`` (and into the file),
    check the file as loaded back, and put both in place."""
    text = json.dumps(meta, indent=2) + "\n"
    with atomic_open(output.with_suffix(".json")) as meta_file, atomic_open(output) as f:
        torch.jit.save(module, f, _extra_files={METADATA_FILE: text})
        f.flush()
        meta_file.write(text.encode())
        loaded = torch.jit.load(f.name, map_location="cpu")
        if plan is None:
            return _compare_detections(loaded, net, image, source, check_size, accept.tolerance)
        inputs = _semantic_inputs(plan, image, source, meta["in_channels"])
        return _compare(loaded, net, inputs, plan, accept, "torchscript")


@contextmanager
def _quiet(names: Sequence[str]) -> Iterator[None]:
    """The loggers ``names`` at WARNING for the block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


# --------------------------------------------------------------------------- Mask R-CNN


class ShortSideTransform(FixedScaleTransform):
    """torchvision's detection transform as it evaluates in eager PyTorch (the short side to
    ``min_size[-1]``, the long side at most ``max_size``), for ``torch.jit.script``: torchvision's
    scripted transform computes the resize factor in float32 tensors, eager PyTorch in Python
    floats, and for some image sizes (71 px to 800: 800.00003 or 799.99997) the script's image
    is a pixel larger or smaller, with other detections. Python floats are float64 in a script."""

    def __init__(self, transform: GeneralizedRCNNTransform) -> None:
        super().__init__(
            transform.min_size,
            transform.max_size,
            transform.image_mean,
            transform.image_std,
            size_divisible=transform.size_divisible,
            fixed_size=transform.fixed_size,
            test_scale=1.0,
        )
        self.train(transform.training)

    def eval_scale(self, height: int, width: int) -> float:
        return min(self.min_size[-1] / min(height, width), self.max_size / max(height, width))


def _export_detector(
    net: MaskRCNN,
    output: Path,
    meta: dict[str, Any],
    image: torch.Tensor | None,
    source: str,
    check_size: tuple[int, int] | None,
    tolerance: float,
) -> list[Check]:
    """Mask R-CNN by ``torch.jit.script`` (torchvision's detection models are scriptable; so is
    seglab's ``FixedScaleTransform`` in eval mode)."""
    meta["input_size"] = None
    meta["dynamic_axes"] = ["images", "height", "width"]
    scripted = net
    if type(net.transform) is GeneralizedRCNNTransform:
        scripted = copy.deepcopy(net)
        scripted.transform = ShortSideTransform(net.transform)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="RCNN always returns a")
        scripted = torch.jit.script(scripted)
    accept = Acceptance(tolerance)  # detections: the scripted net is exact (no float64 rule)
    return _save_script(scripted, output, meta, accept, None, net, image, source, check_size)


def _compare_detections(
    run: torch.jit.ScriptModule,
    net: MaskRCNN,
    image: torch.Tensor | None,
    source: str,
    check_size: tuple[int, int] | None,
    tolerance: float,
) -> list[Check]:
    """The scripted detector against ``net`` on the test image and on it resized to another
    size: the same detections, boxes, scores and masks within ``tolerance``."""
    channels = len(net.transform.image_mean)
    if image is None:
        image = torch.rand(channels, *_DEFAULT_SIZE, generator=torch.Generator().manual_seed(0))
    size = check_size or (image.shape[-2] + 19, image.shape[-1] + 7)
    second = _resize(image[None], size)[0].clamp(0, 1)
    inputs = [(image, source), (second, f"{source.split(',')[0]} resized")]
    checks = []
    for x, what in inputs:
        expected = net([x])[0]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="RCNN always returns a")
            got = run([x])[1][0]
        where = f"on a {'x'.join(map(str, x.shape))} image ({what})"
        if not torch.equal(got["labels"], expected["labels"]):
            raise ValueError(
                f"the torchscript export finds {len(got['labels'])} detections {where}, PyTorch "
                f"{len(expected['labels'])} (or other labels): not written"
            )
        diff = scale = 0.0
        if len(expected["labels"]):  # the largest value: a box corner's coordinate
            keys = ("boxes", "scores", "masks")
            diff = max(float((got[k] - expected[k]).abs().max()) for k in keys)
            scale = max(float(expected[k].abs().max()) for k in keys)
        if not diff <= tolerance:
            raise ValueError(
                f"the torchscript export differs from PyTorch by {diff:.3g} (boxes, scores or "
                f"masks) {where}; expected at most tolerance={tolerance:g}: not written "
                f"({_accepting(diff)} accepts it)"
            )
        source = f"{what}, {len(expected['labels'])} detections"
        checks.append(Check((1, *x.shape), source, diff, scale))
    return checks


# --------------------------------------------------------------------------- test image


def _test_image(datamodule: Any, split: str | None) -> tuple[torch.Tensor | None, str]:
    """The first image of ``split`` as the model sees it (semantic: normalised (C, H, W);
    Mask R-CNN: (C, H, W) in [0, 1]), with what it is; ``(None, "random ...")`` when ``split`` is
    null or the data is not at hand."""
    if split is None:
        return None, "random image (check_split=null)"
    if split not in datamodule.splits:
        raise ValueError(
            f"check_split={split!r}: data={datamodule.info.name} has {list(datamodule.splits)} "
            "(or null: a random image)"
        )
    try:
        sample = datamodule.dataset(split)[0]
    except FileNotFoundError as err:
        log.warning("no %s image to check the export with (%s): a random image instead", split, err)
        return None, "random image (no data)"
    if isinstance(sample, dict):
        return sample["image"].float(), f"{split} image {sample.get('name', 0)}"
    image, target = sample
    return image.float(), f"{split} image {target.get('name', target.get('image_id', 0))}"
