"""The semantic-network contract, checked for every semantic net in ``seglab.models``.

``forward(x: (N, C_in, H, W)) -> (N, K, H, W)`` for any H, W (the unpadded U-Net excepted: its
output is ``output_size(H) x output_size(W)``); nets with an auxiliary head return
``{"out", "aux"}`` in train mode and plain logits in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from seglab.models import FCN, DeepLabV3, DeepLabV3Plus, PSPNet, SegNet, UNet

# Small variants where the contract does not depend on size: ResNet-50 instead of ResNet-101.
NETS: dict[str, Callable[..., nn.Module]] = {
    "unet_padded": lambda **kw: UNet(padding=True, base_channels=8, **kw),
    "unet_unpadded": lambda **kw: UNet(padding=False, base_channels=8, **kw),
    "fcn32s": lambda **kw: FCN(variant="32s", **kw),
    "fcn16s": lambda **kw: FCN(variant="16s", **kw),
    "fcn8s": lambda **kw: FCN(variant="8s", **kw),
    "segnet": SegNet,
    "pspnet": lambda **kw: PSPNet(backbone="resnet50", **kw),
    "deeplabv3": lambda **kw: DeepLabV3(backbone="resnet50", **kw),
    "deeplabv3_aux": lambda **kw: DeepLabV3(backbone="resnet50", extra_conv=True, aux=True, **kw),
    "deeplabv3plus": lambda **kw: DeepLabV3Plus(backbone="resnet50", **kw),
    "deeplabv3plus_separable": lambda **kw: DeepLabV3Plus(
        backbone="resnet50", separable=True, **kw
    ),
}
AUX = {"pspnet", "deeplabv3_aux"}
# Variants of a class share its input layer and eval path: one per class (aux where it has one).
ONE_PER_CLASS = [
    "unet_padded",
    "unet_unpadded",
    "fcn8s",
    "segnet",
    "pspnet",
    "deeplabv3_aux",
    "deeplabv3plus",
]


def _size(name: str) -> tuple[int, int]:
    # 97x131 is not a valid unpadded U-Net input (odd maps before pooling); 188x204 is.
    return (188, 204) if name == "unet_unpadded" else (97, 131)


def _expected(net: nn.Module, height: int, width: int) -> tuple[int, int]:
    if isinstance(net, UNet):
        return net.output_size(height), net.output_size(width)
    return height, width


def _first_conv(net: nn.Module) -> nn.Conv2d:
    return next(m for m in net.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", NETS)
def test_forward_backward_odd_size(name: str) -> None:
    torch.manual_seed(0)
    net = NETS[name](in_channels=3, num_classes=5).train()
    # FCN's score layers start at zero by design, which blocks every gradient below them at
    # step 0; perturb them so "gradients reach the first layer" means something.
    for module in net.modules():
        if isinstance(module, nn.Conv2d) and not module.weight.any():
            nn.init.normal_(module.weight, std=0.01)
    h, w = _size(name)
    x = torch.randn(2, 3, h, w)
    out = net(x)
    expected = (2, 5, *_expected(net, h, w))
    if name in AUX:
        assert isinstance(out, dict) and set(out) == {"out", "aux"}
        assert out["out"].shape == out["aux"].shape == expected
        logits, aux = out["out"], out["aux"]
    else:
        assert isinstance(out, torch.Tensor)
        assert out.shape == expected
        logits, aux = out, None
    target = torch.randint(0, 5, (2, *expected[-2:]))
    loss = F.cross_entropy(logits, target)
    if aux is not None:
        loss = loss + 0.4 * F.cross_entropy(aux, target)
    loss.backward()

    grad = _first_conv(net).weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    no_grad = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters outside the graph: {no_grad[:5]}"


@pytest.mark.parametrize("name", ONE_PER_CLASS)
def test_eval_in_channels_and_num_classes(name: str) -> None:
    """Eval mode gives plain logits (aux nets included); in_channels and K follow the config."""
    net = NETS[name](in_channels=1, num_classes=2).eval()
    assert _first_conv(net).in_channels == 1
    h, w = (188, 188) if name == "unet_unpadded" else (45, 38)
    with torch.no_grad():
        y = net(torch.randn(1, 1, h, w))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 2, *_expected(net, h, w))
