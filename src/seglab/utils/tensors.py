"""Tensor helpers shared by models, tasks and callbacks (a model file imports nothing from the
tasks, and a task nothing from a model file)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["crop_to"]


def crop_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The centre ``size`` window of the last two dimensions of ``x``, the top-left corner at
    ``floor((H - h) / 2)``; torchvision's ``center_crop`` rounds half to even, one pixel off for
    differences of 3, 7, ... (every seglab net's differences are even, where both agree). A
    slice: unlike ``center_crop`` it traces and exports with the size as a variable (U-Net's
    skips, ``python src/export.py``)."""
    height, width = size[0], size[1]
    top, left = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]
