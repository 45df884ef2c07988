"""U-Net (Ronneberger, Fischer, Brox; MICCAI 2015, arXiv:1505.04597)."""

from __future__ import annotations

import torch
from torch import nn

from seglab.utils.tensors import crop_to

__all__ = ["UNet", "UNetConvBlock"]


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``x`` padded at the bottom and right to multiples of ``multiple``: mirrored (``F.pad``'s
    "reflect") when every pad is shorter than both sides, else the edge repeated ("replicate").

    By indexing, with the choice made on tensors: no Python branch on the size, so that a trace
    or an export (``python src/export.py``) pads as this does at every input size."""
    height, width = x.shape[-2], x.shape[-1]
    rows = torch.arange(height + (-height) % multiple, device=x.device)
    cols = torch.arange(width + (-width) % multiple, device=x.device)
    inside_rows, inside_cols = rows < height, cols < width
    sides = torch.minimum(inside_rows.sum(), inside_cols.sum())
    pads = torch.maximum((~inside_rows).sum(), (~inside_cols).sum())
    reflect = sides > pads
    mirrored_rows = torch.where(inside_rows, rows, 2 * height - 2 - rows)
    mirrored_cols = torch.where(inside_cols, cols, 2 * width - 2 - cols)
    rows = torch.where(reflect, mirrored_rows, rows.clamp(max=height - 1))
    cols = torch.where(reflect, mirrored_cols, cols.clamp(max=width - 1))
    return x[..., rows[:, None], cols]


class UNetConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by (optional batch norm and) ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, *, padding: int, batch_norm: bool
    ) -> None:
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers.append(nn.Conv2d(c_in, out_channels, 3, padding=padding, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UNet(nn.Module):
    """U-Net: a contracting path of ``depth`` poolings and a symmetric expanding path.

    With the defaults this is exactly the paper's network: unpadded 3x3 convolutions, 2x2 max
    pooling, 2x2 up-convolutions halving the channels, crop-and-concatenate skips and a final 1x1
    convolution; 1x572x572 maps to 2x388x388 with 31,030,658 parameters. Weights are initialised
    as in the paper (Gaussian with standard deviation sqrt(2 / N), N = inputs of one unit: He
    initialisation, fan-in), biases at zero. Each option below departs
    from the paper only when set:

    - ``padding=True``: padded convolutions, output size = input size (needs H and W to be
      multiples of ``2**depth`` internally; other sizes are padded by reflection and cropped back).
    - ``batch_norm=True``: batch norm after every convolution (the paper has none).
    - ``dropout``: dropout probability at the end of the contracting path (the paper mentions
      "drop-out layers at the end of the contracting path" without a rate; 0 keeps it off).
    - ``skip="sum"``: add the cropped skip to the up-convolved features instead of concatenating
      them (then the first convolution of each expanding level takes half the channels).

    Shapes: ``forward(x: (N, in_channels, H, W)) -> (N, num_classes, H', W')``, where H' = H with
    padding and H' = H - 184 for the unpadded depth-4 net (valid sizes: see ``output_size``).
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        base_channels: int = 64,
        depth: int = 4,
        padding: bool = False,
        batch_norm: bool = False,
        dropout: float = 0.0,
        skip: str = "concat",
    ) -> None:
        super().__init__()
        if skip not in ("concat", "sum"):
            raise ValueError(f"UNet skip={skip!r}: expected 'concat' or 'sum'")
        if depth < 1:
            raise ValueError(f"UNet depth={depth}: expected at least 1")
        self.depth = depth
        self.padding = padding
        self.skip = skip
        pad = 1 if padding else 0
        widths = [base_channels * 2**i for i in range(depth + 1)]

        self.encoder = nn.ModuleList()
        c_in = in_channels
        for w in widths[:-1]:
            self.encoder.append(UNetConvBlock(c_in, w, padding=pad, batch_norm=batch_norm))
            c_in = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = UNetConvBlock(widths[-2], widths[-1], padding=pad, batch_norm=batch_norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

        self.upconvs = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for w_low, w_high in zip(reversed(widths[:-1]), reversed(widths[1:])):
            self.upconvs.append(nn.ConvTranspose2d(w_high, w_low, kernel_size=2, stride=2))
            c_cat = 2 * w_low if skip == "concat" else w_low
            self.decoder.append(UNetConvBlock(c_cat, w_low, padding=pad, batch_norm=batch_norm))
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialisation: N(0, 2 / N) weights, N = inputs of one unit; zero biases.

        A convolution unit sees in_channels x k x k inputs; a 2x2 stride-2 up-convolution unit sees
        in_channels x (k / stride)^2 = in_channels (each output pixel meets one kernel tap).
        """
        for module in self.modules():
            if isinstance(module, nn.ConvTranspose2d):
                kh, kw = module.kernel_size
                sh, sw = module.stride
                fan = module.in_channels * max(kh // sh, 1) * max(kw // sw, 1)
            elif isinstance(module, nn.Conv2d):
                fan = (
                    module.in_channels
                    // module.groups
                    * module.kernel_size[0]
                    * module.kernel_size[1]
                )
            else:
                continue
            nn.init.normal_(module.weight, std=(2.0 / fan) ** 0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def output_size(self, size: int) -> int:
        """Output side length for an input side length (raises if the size is not valid)."""
        if self.padding:
            return size
        s = size
        for level in range(self.depth):
            s -= 4
            if s <= 0 or s % 2:
                raise ValueError(
                    f"unpadded UNet(depth={self.depth}): input size {size} gives an odd or empty "
                    f"feature map ({s}) before pooling {level + 1}; use a valid size such as 572"
                )
            s //= 2
        s -= 4
        for _ in range(self.depth):
            s = s * 2 - 4
        if s <= 0:
            raise ValueError(f"unpadded UNet: input size {size} is too small")
        return s

    def covering_input(self, size: int) -> int:
        """The smallest input side whose output covers ``size`` output pixels (``size`` itself
        for the padded net): an image side of ``size`` mirror-extended to it (the paper's
        extrapolation of missing context by mirroring, Fig. 2) is predicted whole in one pass."""
        if self.padding:
            return size
        candidate = size
        while True:  # a few hundred integer steps at most (572 -> 388 loses 184)
            try:
                if self.output_size(candidate) >= size:
                    return candidate
            except ValueError:
                pass
            candidate += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.padding:
            x = _pad_to_multiple(x, 2**self.depth)
        else:
            self.output_size(h)
            self.output_size(w)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottleneck(x))
        for up, block, skip in zip(self.upconvs, self.decoder, reversed(skips)):
            x = up(x)
            skip = crop_to(skip, x.shape[-2:])
            x = torch.cat([skip, x], dim=1) if self.skip == "concat" else x + skip
            x = block(x)
        x = self.head(x)
        if self.padding:
            x = x[..., :h, :w]
        return x
