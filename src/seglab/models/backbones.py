"""Backbones: thin builders over torchvision's VGG16 and ResNets (never re-implemented), and the
reading of their pretrained weights.

``weights`` (a net's ``model.net.backbone_weights``) is one of

- ``"imagenet"``: the architecture's original ImageNet weights (``IMAGENET``, ``IMAGENET1K_V1``);
- a member of the architecture's torchvision weights enum, bare (``"IMAGENET1K_V2"``,
  ``"DEFAULT"``) or qualified (``"ResNet50_Weights.IMAGENET1K_V2"``): a string of capitals,
  digits and underscores, optionally after ``<Enum>.``;
- the path of a local state-dict file: any other string, or a ``Path`` (``./DEFAULT`` for a file
  of that name).

torchvision's weights are read through its own API, ``WeightsEnum.get_state_dict``, which reads
its cache file ``$TORCH_HOME/hub/checkpoints/<file>`` (``torch.hub.get_dir()``) when present, as
it is: torch.hub checks the hash only of a file it downloads. Nothing is downloaded unless
``download`` (``model.net.download_weights=true``): torchvision then fetches the file into its
cache, checking its SHA-256 against the prefix in the file name. Without it, a missing file
raises ``FileNotFoundError`` naming the file, the full path to place it at and its URL. Every file
is read as data only (``weights_only=True``; a file holding more is refused as
``seglab.utils.safe_load`` does, unless ``trust_checkpoint``).

The switch is a key of the net, ``model.net.download_weights``, next to the ``backbone_weights``
it governs and handed to the constructor like every other setting (a top-level key would have to
reach the constructor as hidden state); off by default, so that no run reaches the network unasked.

A net rebuilt for a checkpoint whose state dict replaces all its weights at once (eval, predict)
is built inside ``skip_pretrained_files()``: as its settings say, reading none of those files.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

from seglab.utils.safe_load import read_torch_file

__all__ = [
    "IMAGENET",
    "ResNetFeatures",
    "adapt_first_conv",
    "cache_path",
    "freeze_resnet_stages",
    "load_weights",
    "read_torchvision_weights",
    "read_weights",
    "reads_pretrained_files",
    "resnet",
    "resolve_weights",
    "skip_pretrained_files",
    "vgg16",
    "weights_path",
]

# the config key every builder's ``weights`` comes from, for messages
_KEY = "model.net.backbone_weights"

_ARCHS: dict[str, tuple[Callable[..., nn.Module], type[tvm.WeightsEnum]]] = {
    "vgg16": (tvm.vgg16, tvm.VGG16_Weights),
    "vgg16_bn": (tvm.vgg16_bn, tvm.VGG16_BN_Weights),
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights),
    "resnet34": (tvm.resnet34, tvm.ResNet34_Weights),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights),
    "resnet101": (tvm.resnet101, tvm.ResNet101_Weights),
    "mobilenet_v3_large": (tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights),
}

IMAGENET = "imagenet"
# The member the alias names, for every architecture above: IMAGENET1K_V1, the weights torchvision
# first published for it, trained by the original recipe (ResNet-50: 76.1 % top-1). They stand for
# the ImageNet models the papers fine-tuned (Simonyan & Zisserman's VGG16, He et al.'s ResNets)
# and are what torchvision's own segmentation and detection builders (deeplabv3_resnet101,
# maskrcnn_resnet50_fpn, ...) take as weights_backbone. DEFAULT differs for ResNet-50/101 and
# MobileNetV3: IMAGENET1K_V2, a 2021 recipe (long schedule, heavy augmentation) reaching 80.9 %
# on ResNet-50, a starting point none of the papers had.
_IMAGENET_MEMBER = "IMAGENET1K_V1"
_NAME = re.compile(r"(?:(\w+)\.)?([A-Z][A-Z0-9_]*)")


_READ_FILES: ContextVar[bool] = ContextVar("seglab_read_pretrained_files", default=True)


@contextmanager
def skip_pretrained_files() -> Iterator[None]:
    """Within the block, nets are built as their ``backbone_weights`` and ``weights`` settings
    say (Mask R-CNN's frozen batch norm and stages when pretrained, for instance) but read none of
    those files: for rebuilding a net whose checkpoint then replaces every weight (eval,
    predict), on a machine that may lack the files or the network."""
    token = _READ_FILES.set(False)
    try:
        yield
    finally:
        _READ_FILES.reset(token)


def reads_pretrained_files() -> bool:
    """False inside ``skip_pretrained_files``: a net's pretrained weights are not to be read."""
    return _READ_FILES.get()


def resolve_weights(arch: str, weights: str | Path) -> tvm.WeightsEnum | Path:
    """The torchvision weights entry that ``weights`` names for ``arch``, or the local file path
    it is (see the module's docstring).

    Raises:
        ValueError: a name that is not one of ``arch``'s weights, naming those there are.
    """
    enum = _ARCHS[arch][1]
    if isinstance(weights, Path):
        return weights.expanduser()
    if weights.lower() == IMAGENET:
        return enum[_IMAGENET_MEMBER]
    match = _NAME.fullmatch(weights)
    if match is None:
        return Path(weights).expanduser()
    qualifier, member = match.groups()
    if qualifier not in (None, enum.__name__) or member not in enum.__members__:
        raise ValueError(
            f"{_KEY}={weights!r}: not a torchvision weights name of {arch}; expected "
            f"{IMAGENET!r}, one of {list(enum.__members__)} (or {enum.__name__}.<name>), or the "
            f"path of a local state-dict file (./{weights} for a file of that name)"
        )
    return enum.verify(weights)


def cache_path(entry: tvm.WeightsEnum) -> Path:
    """The file torch.hub keeps ``entry``'s weights in: ``$TORCH_HOME/hub/checkpoints/<file>``
    (the name as ``torch.hub.load_state_dict_from_url`` takes it from the URL)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(entry.url).path).name


def weights_path(arch: str, weights: str | Path) -> Path:
    """The local file holding ``weights`` for ``arch``: the path, or torchvision's cache file."""
    source = resolve_weights(arch, weights)
    return source if isinstance(source, Path) else cache_path(source)


def read_torchvision_weights(
    entry: tvm.WeightsEnum, where: str, *, download: bool = False
) -> tuple[Path, dict[str, torch.Tensor]]:
    """The cache path and state dict of torchvision's weights ``entry``, read by
    ``entry.get_state_dict`` as data only; downloaded (hash-checked) only when ``download``.

    ``where`` names the setting in messages (``model.net.backbone_weights='imagenet'``).

    Raises:
        FileNotFoundError: the file is not in the cache and ``download`` is off; names the file,
            where to place it and its URL.
        OSError: the download failed; ValueError: the cached file is not a readable torch file.
        UntrustedFileError: the cached file holds more than data (``seglab.utils.safe_load``).
    """
    path = cache_path(entry)
    if not download and not path.is_file():
        raise FileNotFoundError(
            f"{where}: torchvision's {entry!r} is not in torchvision's cache and "
            f"model.net.download_weights=false; fetch {entry.url} and place it at {path}, or set "
            "model.net.download_weights=true to let torchvision download it (hash-checked)"
        )
    try:
        state = entry.get_state_dict(
            map_location="cpu", progress=True, check_hash=True, weights_only=True
        )
    except pickle.UnpicklingError:
        # more than data (refused with safe_load's message, or loaded in full if trusted), or
        # not a torch file at all
        try:
            state = read_torch_file(path, f"{where} ({path})")
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
            raise _unreadable(where, path, entry, err) from err
    except (OSError, RuntimeError, EOFError) as err:
        if not path.is_file():  # torch.hub downloads to a temporary file, moved there when done
            raise OSError(
                f"{where}: downloading {entry.url} to {path} failed ({_first_line(err)}); "
                "fetch it yourself and place it there"
            ) from err
        raise _unreadable(where, path, entry, err) from err
    return path, state


def _first_line(err: BaseException) -> str:
    return next(iter(str(err).strip().splitlines()), type(err).__name__)


def _unreadable(where: str, path: Path, entry: tvm.WeightsEnum, err: BaseException) -> ValueError:
    return ValueError(
        f"{where}: {path} is not a readable torch file ({_first_line(err)}); delete it and fetch "
        f"{entry.url} again"
    )


def read_weights(
    arch: str, weights: str | Path, *, download: bool = False
) -> tuple[Path, dict[str, torch.Tensor]]:
    """The path and state dict of ``weights`` for ``arch``: torchvision's (see
    ``read_torchvision_weights``) or a local file's, read as data
    (``seglab.utils.safe_load.read_torch_file``: ``trust_checkpoint`` loads other files)."""
    source = resolve_weights(arch, weights)
    where = f"{_KEY}={str(weights)!r}"
    if isinstance(source, Path):
        if not source.is_file():
            raise FileNotFoundError(
                f"{where}: {arch} weights file not found at {source}; expected a local "
                f"state-dict file or a torchvision weights name such as {IMAGENET!r}"
            )
        path, state = source, read_torch_file(source, f"{where} ({source})")
    else:
        path, state = read_torchvision_weights(source, where, download=download)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a {arch} state dict, found {type(state).__name__}")
    return path, state


def load_weights(
    model: nn.Module,
    *,
    arch: str,
    weights: str | Path,
    unused: Sequence[str] = (),
    download: bool = False,
) -> None:
    """Load ``weights`` (see ``read_weights``) into a torchvision ``model`` of architecture
    ``arch``.

    ``unused`` lists key prefixes of layers the caller discards (e.g. ``"fc."``); the file may omit
    them. Any other missing or unexpected key is an error naming the file.
    """
    _load(model, *read_weights(arch, weights, download=download), arch=arch, unused=unused)


def _load(
    model: nn.Module,
    path: Path,
    state: dict[str, torch.Tensor],
    *,
    arch: str,
    unused: Sequence[str],
) -> None:
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(f"{path}: not a {arch} state dict: {err}") from err
    missing = [k for k in missing if not k.startswith(tuple(unused))]
    if missing or unexpected:
        raise ValueError(
            f"{path}: not a {arch} state dict: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}"
        )


def adapt_first_conv(conv: nn.Conv2d, in_channels: int, *, pretrained: bool) -> nn.Conv2d:
    """A copy of ``conv`` taking ``in_channels`` inputs.

    Pretrained RGB filters are averaged over their inputs and repeated, scaled by
    ``3 / in_channels`` so the response to a grey image is kept; otherwise torchvision's
    initialisation (Kaiming normal, fan-out) is used.
    """
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        if pretrained:
            mean = conv.weight.mean(dim=1, keepdim=True)
            new.weight.copy_(mean.repeat(1, in_channels, 1, 1) * (conv.in_channels / in_channels))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        else:
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            if new.bias is not None:
                nn.init.zeros_(new.bias)
    return new


def vgg16(
    *,
    batch_norm: bool = False,
    in_channels: int = 3,
    weights: str | Path | None = None,
    download: bool = False,
    unused: Sequence[str] = ("classifier.",),
) -> tvm.VGG:
    """torchvision's VGG16 (``batch_norm=True``: VGG16-BN), optionally with pretrained ``weights``
    (see ``read_weights``; ``download`` lets torchvision fetch its own)."""
    arch = "vgg16_bn" if batch_norm else "vgg16"
    loaded = None
    if weights is not None and reads_pretrained_files():
        loaded = read_weights(arch, weights, download=download)
    model = _ARCHS[arch][0](weights=None)
    if loaded is not None:
        _load(model, *loaded, arch=arch, unused=unused)
    if in_channels != 3:
        model.features[0] = adapt_first_conv(
            model.features[0], in_channels, pretrained=weights is not None
        )
    return model


_DILATE = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}
_STAGES = {"layer1": "res2", "layer2": "res3", "layer3": "res4", "layer4": "res5"}


class ResNetFeatures(IntermediateLayerGetter):
    """A torchvision ResNet without its pooling and classifier, returning every stage: torchvision's
    ``IntermediateLayerGetter`` (module names as in torchvision's ResNet) with stages renamed.

    ``forward(x: (N, C, H, W)) -> {"res2": (N, 256, H/4, W/4), "res3": ..., "res4": ...,
    "res5": (N, 2048, H/os, W/os)}`` for bottleneck ResNets (sizes rounded up);
    ``out_channels`` maps each stage to its channels.
    """

    def __init__(self, model: tvm.ResNet) -> None:
        super().__init__(model, return_layers=_STAGES)
        self.out_channels = {
            stage: getattr(model, layer)[-1].conv3.out_channels for layer, stage in _STAGES.items()
        }


# torchvision's module names of a ResNet's stages, last first: res5 .. res2 and the stem's conv
_TRAINABLE = ("layer4", "layer3", "layer2", "layer1", "conv1")


def freeze_resnet_stages(model: tvm.ResNet, trainable: int) -> None:
    """Stop the gradient of all but the last ``trainable`` of a ResNet's 5 stages (the stem =
    conv1 + bn1, then res2..res5), as torchvision's ``trainable_backbone_layers`` does: 5 trains
    everything, 3 freezes the stem and res2, 0 the whole network. Ordinary batch norm in a frozen
    stage still updates its running statistics in train mode; ``FrozenBatchNorm2d`` does not."""
    if not 0 <= trainable <= 5:
        raise ValueError(
            f"model.net.trainable_backbone_layers={trainable}: expected 0..5 (5 trains the "
            "whole ResNet, 3 freezes its stem and res2, 0 all of it)"
        )
    train = _TRAINABLE[:trainable]
    if trainable == 5:
        train += ("bn1",)
    for name, param in model.named_parameters():
        if not name.startswith(train):
            param.requires_grad_(False)


def resnet(
    name: str = "resnet50",
    *,
    in_channels: int = 3,
    output_stride: int = 32,
    multi_grid: Sequence[int] | None = None,
    weights: str | Path | None = None,
    download: bool = False,
    frozen_batch_norm: bool = False,
    trainable_layers: int = 5,
) -> ResNetFeatures:
    """torchvision's ResNet-50/101 made atrous for ``output_stride`` 8 or 16, optionally with
    pretrained ``weights`` (see ``read_weights``; ``download`` lets torchvision fetch its own).

    The last one (OS 16) or two (OS 8) stages trade their stride for dilation, as torchvision's
    ``replace_stride_with_dilation`` does (the first block of a dilated stage keeps the previous
    rate). ``multi_grid=(1, 2, 4)`` instead sets the 3x3 convolutions of res5's blocks to the
    stage's rate (2 at OS 16, 4 at OS 8) times the unit rates, as in DeepLabv3 (Sec. 3.2).

    ``frozen_batch_norm=True`` builds every batch norm as torchvision's ``FrozenBatchNorm2d``
    (the loaded statistics and affine parameters, as buffers: no gradient, no update);
    ``trainable_layers`` < 5 stops the gradient of the first stages (``freeze_resnet_stages``).
    """
    if name not in ("resnet50", "resnet101"):
        raise ValueError(f"backbone={name!r}: expected 'resnet50' or 'resnet101'")
    if output_stride not in _DILATE:
        raise ValueError(f"output_stride={output_stride}: expected 8, 16 or 32")
    loaded = None
    if weights is not None and reads_pretrained_files():
        loaded = read_weights(name, weights, download=download)
    model = _ARCHS[name][0](
        weights=None,
        replace_stride_with_dilation=_DILATE[output_stride],
        norm_layer=FrozenBatchNorm2d if frozen_batch_norm else nn.BatchNorm2d,
    )
    if loaded is not None:
        _load(model, *loaded, arch=name, unused=("fc.",))
    if multi_grid is not None:
        blocks = list(model.layer4)
        if len(multi_grid) != len(blocks):
            raise ValueError(
                f"multi_grid={tuple(multi_grid)}: expected {len(blocks)} unit rates, one per block"
            )
        rate = 32 // output_stride
        for block, unit in zip(blocks, multi_grid):
            block.conv2.dilation = block.conv2.padding = (rate * unit, rate * unit)
    if in_channels != 3:
        model.conv1 = adapt_first_conv(model.conv1, in_channels, pretrained=weights is not None)
    freeze_resnet_stages(model, trainable_layers)
    return ResNetFeatures(model)
