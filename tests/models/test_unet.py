import pytest
import torch

from seglab.models import UNet
from seglab.models.unet import _pad_to_multiple


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_unet_parameters_and_output_size():
    net = UNet(in_channels=1, num_classes=2)
    assert count(net) == 31_030_658
    with torch.no_grad():
        out = net(torch.zeros(1, 1, 572, 572))
    assert out.shape == (1, 2, 388, 388)
    assert net.output_size(572) == 388


def test_paper_unet_layers():
    net = UNet()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    # 23 convolutional layers in the paper: 18 3x3 unpadded, 4 2x2 up-convs (transposed), 1x1 head.
    assert (
        len(convs) == 19
        and sum(isinstance(m, torch.nn.ConvTranspose2d) for m in net.modules()) == 4
    )
    assert all(c.kernel_size == (3, 3) and c.padding == (0, 0) for c in convs[:-1])
    assert convs[-1].kernel_size == (1, 1)
    ups = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(u.in_channels, u.out_channels, u.kernel_size, u.stride) for u in ups] == [
        (1024, 512, (2, 2), (2, 2)),
        (512, 256, (2, 2), (2, 2)),
        (256, 128, (2, 2), (2, 2)),
        (128, 64, (2, 2), (2, 2)),
    ]


@pytest.mark.parametrize("size", [(97, 131), (64, 64), (33, 17)])
def test_padded_keeps_input_size(size):
    net = UNet(in_channels=3, num_classes=5, base_channels=4, padding=True, batch_norm=True)
    out = net(torch.randn(2, 3, *size))
    assert out.shape == (2, 5, *size)


def test_padding_reflects_or_replicates_as_f_pad():
    """The padded net's branch-free padding (exported as it is) is F.pad's: reflect when every pad
    is shorter than both sides, else replicate."""
    for height in range(1, 36):
        for width in (1, 5, 12, 16, 20, 33):
            x = torch.randn(1, 2, height, width)
            ph, pw = (-height) % 16, (-width) % 16
            mode = "reflect" if min(height, width) > max(ph, pw) else "replicate"
            expected = torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode)
            assert torch.equal(_pad_to_multiple(x, 16), expected), (height, width)


def test_options_change_the_network():
    base = UNet(base_channels=8, depth=3, padding=True)
    summed = UNet(base_channels=8, depth=3, padding=True, skip="sum")
    assert count(summed) < count(base)
    assert summed(torch.randn(1, 1, 40, 40)).shape == (1, 2, 40, 40)
    dropped = UNet(base_channels=8, depth=3, padding=True, dropout=0.5)
    assert isinstance(dropped.dropout, torch.nn.Dropout2d)
    bn = UNet(base_channels=8, depth=3, batch_norm=True)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules())


def test_invalid_unpadded_size_is_explained():
    with pytest.raises(ValueError, match="input size 100"):
        UNet(base_channels=4)(torch.zeros(1, 1, 100, 100))
    with pytest.raises(ValueError, match="skip"):
        UNet(skip="add")


def test_gradients_reach_first_layer():
    net = UNet(base_channels=4, depth=2, padding=True)
    net(torch.randn(2, 1, 20, 24)).sum().backward()
    assert net.encoder[0][0].weight.grad.abs().sum() > 0


def test_paper_initialisation():
    torch.manual_seed(0)
    net = UNet()
    conv = net.encoder[2][0]  # 3x3, 128 -> 256: N = 128 * 9
    assert conv.weight.std().item() == pytest.approx((2 / (128 * 9)) ** 0.5, rel=0.01)
    up = net.upconvs[0]  # 2x2 stride 2, 1024 -> 512: one tap per output pixel, N = 1024
    assert up.weight.std().item() == pytest.approx((2 / 1024) ** 0.5, rel=0.01)
    assert all(m.bias.abs().max() == 0 for m in net.modules() if isinstance(m, torch.nn.Conv2d))
