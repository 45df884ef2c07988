import math

import numpy as np
import pytest
import torch
from torch import nn

from seglab.inference import mirror_pad, overlap_tile, predict_logits, sliding_window, whole
from seglab.models.unet import UNet


@pytest.fixture(scope="module")
def unpadded_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(in_channels=1, num_classes=2, base_channels=4, depth=2).eval()


class DictOutput(nn.Module):
    """A per-pixel (1x1 convolution) model that returns its logits under "out"."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x)}


def _untiled_reference(model: UNet, image: torch.Tensor, tile: int) -> torch.Tensor:
    """One pass over the image mirror-padded (numpy "reflect") as overlap-tile pads it."""
    out = model.output_size(tile)
    margin = (tile - out) // 2
    step = out // 2**model.depth * 2**model.depth
    height, width = image.shape[-2:]
    rows = max(math.ceil((height - out) / step), 0) + 1
    cols = max(math.ceil((width - out) / step), 0) + 1
    pad_h = (rows - 1) * step + tile - height - margin
    pad_w = (cols - 1) * step + tile - width - margin
    padded = np.pad(
        image.numpy(), ((0, 0), (0, 0), (margin, pad_h), (margin, pad_w)), mode="reflect"
    )
    with torch.no_grad():
        return model(torch.from_numpy(padded))[..., :height, :width]


@pytest.mark.parametrize(("size", "tile", "batch_size"), [((70, 57), 68, 1), ((61, 90), 52, 4)])
def test_overlap_tile_equals_one_pass_over_padded_image(unpadded_unet, size, tile, batch_size):
    torch.manual_seed(1)
    image = torch.randn(2, 1, *size)
    assert unpadded_unet.output_size(tile) < min(size), "the image must need several tiles"
    tiled = overlap_tile(unpadded_unet, image, tile_size=tile, batch_size=batch_size)
    assert tiled.shape == (2, 2, *size)
    torch.testing.assert_close(
        tiled, _untiled_reference(unpadded_unet, image, tile), atol=1e-5, rtol=1e-5
    )


def test_overlap_tile_on_image_smaller_than_a_tile(unpadded_unet):
    image = torch.randn(1, 1, 7, 11)  # the 20-pixel mirror margin reflects several times
    tiled = overlap_tile(unpadded_unet, image, tile_size=60)
    assert tiled.shape == (1, 2, 7, 11)
    torch.testing.assert_close(
        tiled, _untiled_reference(unpadded_unet, image, 60), atol=1e-5, rtol=1e-5
    )


def test_mirror_pad_matches_numpy_reflect():
    image = torch.arange(2 * 5 * 4, dtype=torch.float32).reshape(1, 2, 5, 4)
    expected = np.pad(image.numpy(), ((0, 0), (0, 0), (9, 3), (2, 7)), mode="reflect")
    np.testing.assert_array_equal(mirror_pad(image, 9, 3, 2, 7).numpy(), expected)


def test_overlap_tile_rejects_bad_steps(unpadded_unet):
    image = torch.randn(1, 1, 40, 40)
    with pytest.raises(ValueError, match="pooling factor 4"):
        overlap_tile(unpadded_unet, image, tile_size=60, step=18)
    with pytest.raises(ValueError, match="larger than the output tile"):
        overlap_tile(unpadded_unet, image, tile_size=60, step=24)
    with pytest.raises(ValueError, match="input size 61"):
        overlap_tile(unpadded_unet, image, tile_size=61)


@pytest.mark.parametrize("size", [(37, 53), (16, 16), (10, 7)])
def test_sliding_window_equals_whole_for_per_pixel_model(size):
    torch.manual_seed(2)
    model = nn.Conv2d(3, 4, kernel_size=1).eval()
    image = torch.randn(2, 3, *size)
    slid = sliding_window(model, image, crop_size=16, stride=10, num_classes=4, batch_size=3)
    assert slid.shape == (2, 4, *size)
    torch.testing.assert_close(slid, whole(model, image), atol=1e-6, rtol=1e-6)


def test_sliding_window_keeps_odd_shapes_with_padded_unet():
    torch.manual_seed(3)
    model = UNet(in_channels=1, num_classes=3, base_channels=4, depth=2, padding=True).eval()
    image = torch.randn(1, 1, 37, 29)
    slid = sliding_window(
        model, image, crop_size=(20, 16), stride=(13, 7), num_classes=3, batch_size=2
    )
    assert slid.shape == (1, 3, 37, 29) and torch.isfinite(slid).all()
    small = sliding_window(model, image[..., :9, :5], crop_size=16, stride=8, num_classes=3)
    assert small.shape == (1, 3, 9, 5)


def test_predict_logits_dispatches_and_names_bad_options(unpadded_unet):
    model = DictOutput().eval()
    image = torch.randn(1, 3, 21, 18)
    reference = predict_logits(model, image)
    assert reference.shape == (1, 4, 21, 18)
    slid = predict_logits(model, image, mode="slide", crop_size=8, stride=5, num_classes=4)
    torch.testing.assert_close(slid, reference, atol=1e-6, rtol=1e-6)
    grey = torch.randn(1, 1, 30, 30)
    tiled = predict_logits(unpadded_unet, grey, mode="overlap_tile", tile_size=60)
    assert tiled.shape == (1, 2, 30, 30)

    with pytest.raises(ValueError, match="mode='sliding'"):
        predict_logits(model, image, mode="sliding")
    with pytest.raises(ValueError, match="tile_size"):
        predict_logits(
            model, image, mode="slide", crop_size=8, stride=5, num_classes=4, tile_size=8
        )
    with pytest.raises(ValueError, match=r"needs option\(s\) \['num_classes'\]"):
        predict_logits(model, image, mode="slide", crop_size=8, stride=5)
    with pytest.raises(ValueError, match="stride"):
        predict_logits(model, image, mode="whole", stride=4)


def test_clear_errors_for_wrong_models_and_inputs(unpadded_unet):
    grey = torch.randn(1, 1, 60, 60)
    with pytest.raises(ValueError, match="overlap_tile"):
        whole(unpadded_unet, grey)
    with pytest.raises(ValueError, match="overlap_tile"):
        sliding_window(unpadded_unet, grey, crop_size=60, stride=30, num_classes=2)
    with pytest.raises(ValueError, match="num_classes"):
        sliding_window(DictOutput(), torch.randn(1, 3, 8, 8), crop_size=8, stride=8, num_classes=3)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        whole(unpadded_unet, torch.randn(1, 60, 60))
    with pytest.raises(ValueError, match="stride"):
        sliding_window(DictOutput(), torch.randn(1, 3, 8, 8), crop_size=4, stride=5, num_classes=4)
