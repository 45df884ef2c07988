"""Backbones: thin builders over torchvision's VGG16 and ResNet-50/101 (never re-implemented).

Pretrained weights are opt-in and never downloaded. ``weights`` is either a path to a local
state-dict file or the name of a torchvision weights entry (``"IMAGENET1K_V1"``, ``"DEFAULT"``,
...), looked up in torchvision's cache, ``$TORCH_HOME/hub/checkpoints/<file>`` (see
``torch.hub.get_dir()``). A missing file raises ``FileNotFoundError`` naming the expected path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models._utils import IntermediateLayerGetter

from seglab.utils.safe_load import read_torch_file

__all__ = [
    "ResNetFeatures",
    "adapt_first_conv",
    "load_weights",
    "read_weights",
    "resnet",
    "vgg16",
    "weights_path",
]

_ARCHS: dict[str, tuple[Callable[..., nn.Module], type[tvm.WeightsEnum]]] = {
    "vgg16": (tvm.vgg16, tvm.VGG16_Weights),
    "vgg16_bn": (tvm.vgg16_bn, tvm.VGG16_BN_Weights),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights),
    "resnet101": (tvm.resnet101, tvm.ResNet101_Weights),
}


def weights_path(arch: str, weights: str | Path) -> Path:
    """The local file holding ``weights`` for ``arch``: the path, or torchvision's cache file."""
    enum = _ARCHS[arch][1]
    if isinstance(weights, str) and weights in enum.__members__:
        url = enum[weights].url
        return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    return Path(weights).expanduser()


def read_weights(arch: str, weights: str | Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The path and state dict of ``weights`` for ``arch``, read from a local file only, as data
    (``seglab.utils.safe_load.read_torch_file``: ``trust_checkpoint`` loads other files)."""
    path = weights_path(arch, weights)
    if not path.is_file():
        enum = _ARCHS[arch][1]
        hint = ""
        if isinstance(weights, str) and weights in enum.__members__:
            hint = f" (torchvision's {enum.__name__}.{weights}: fetch {enum[weights].url} there)"
        raise FileNotFoundError(
            f"backbone_weights={str(weights)!r}: {arch} weights file not found at {path}{hint}; "
            "seglab never downloads weights"
        )
    state = read_torch_file(path, f"backbone_weights={str(weights)!r} ({path})")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a {arch} state dict, found {type(state).__name__}")
    return path, state


def load_weights(
    model: nn.Module, *, arch: str, weights: str | Path, unused: Sequence[str] = ()
) -> None:
    """Load a local state dict into a torchvision ``model`` of architecture ``arch``.

    ``unused`` lists key prefixes of layers the caller discards (e.g. ``"fc."``); the file may omit
    them. Any other missing or unexpected key is an error naming the file.
    """
    _load(model, *read_weights(arch, weights), arch=arch, unused=unused)


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
    unused: Sequence[str] = ("classifier.",),
) -> tvm.VGG:
    """torchvision's VGG16 (``batch_norm=True``: VGG16-BN), optionally with local weights."""
    arch = "vgg16_bn" if batch_norm else "vgg16"
    loaded = read_weights(arch, weights) if weights is not None else None
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


def resnet(
    name: str = "resnet50",
    *,
    in_channels: int = 3,
    output_stride: int = 32,
    multi_grid: Sequence[int] | None = None,
    weights: str | Path | None = None,
) -> ResNetFeatures:
    """torchvision's ResNet-50/101 made atrous for ``output_stride`` 8 or 16.

    The last one (OS 16) or two (OS 8) stages trade their stride for dilation, as torchvision's
    ``replace_stride_with_dilation`` does (the first block of a dilated stage keeps the previous
    rate). ``multi_grid=(1, 2, 4)`` instead sets the 3x3 convolutions of res5's blocks to the
    stage's rate (2 at OS 16, 4 at OS 8) times the unit rates, as in DeepLabv3 (Sec. 3.2).
    """
    if name not in ("resnet50", "resnet101"):
        raise ValueError(f"backbone={name!r}: expected 'resnet50' or 'resnet101'")
    if output_stride not in _DILATE:
        raise ValueError(f"output_stride={output_stride}: expected 8, 16 or 32")
    loaded = read_weights(name, weights) if weights is not None else None
    model = _ARCHS[name][0](weights=None, replace_stride_with_dilation=_DILATE[output_stride])
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
    return ResNetFeatures(model)
