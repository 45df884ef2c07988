"""Augmentations that albumentations lacks, written as albumentations 2 transforms.

Written by hand because albumentations' ``ElasticTransform`` Gaussian-smooths a dense random field,
not the paper's coarse grid of displacements (which is also far cheaper: see bench/augment.py).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

import cv2
import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema, DualTransform
from albumentations.core.type_definitions import Targets
from pydantic import Field

__all__ = ["ElasticDeformation"]

# dtypes cv2.remap handles natively; int64 is missing on purpose (cv2 silently narrows it to int32).
_CV2_REMAP_DTYPES = frozenset(
    np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32, np.float64)
)


def _keys_cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (the usual "bicubic" kernel)."""
    x = np.abs(x)
    near = (1.5 * x - 2.5) * x * x + 1.0
    far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    return np.where(x <= 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=64)
def _cubic_upsampling_matrix(n_out: int, n_nodes: int) -> np.ndarray:
    """(n_out, n_nodes) matrix that interpolates values on ``n_nodes`` evenly spaced nodes, the
    first at pixel 0 and the last at pixel ``n_out - 1``, to every pixel by cubic convolution
    (nodes beyond the ends replicate the end nodes)."""
    t = np.arange(n_out) * ((n_nodes - 1) / max(n_out - 1, 1))
    base = np.floor(t).astype(np.int64)
    frac = t - base
    matrix = np.zeros((n_out, n_nodes))
    rows = np.arange(n_out)
    for k in (-1, 0, 1, 2):
        np.add.at(matrix, (rows, np.clip(base + k, 0, n_nodes - 1)), _keys_cubic(frac - k))
    matrix.flags.writeable = False
    return matrix


def _remap(
    array: np.ndarray,
    map_x: np.ndarray,
    map_y: np.ndarray,
    interpolation: int,
    border_mode: int,
    fill: float | tuple[float, ...],
) -> np.ndarray:
    """cv2.remap that keeps the input's shape and dtype, for any dtype under nearest interpolation."""
    if array.dtype in _CV2_REMAP_DTYPES:
        out = cv2.remap(
            array, map_x, map_y, interpolation, borderMode=border_mode, borderValue=fill
        )
        return out.reshape(array.shape)
    if interpolation != cv2.INTER_NEAREST:
        raise TypeError(
            f"ElasticDeformation: cannot interpolate an image of dtype {array.dtype}; "
            "use uint8, uint16, int16, float32 or float64"
        )
    # Move a map of flat source indices instead of the values, then gather: exact for every dtype.
    height, width = array.shape[:2]
    index = np.arange(height * width, dtype=np.int32).reshape(height, width)
    source = cv2.remap(
        index, map_x, map_y, cv2.INTER_NEAREST, borderMode=border_mode, borderValue=-1
    )
    out = array.reshape(height * width, *array.shape[2:])[source]
    if border_mode == cv2.BORDER_CONSTANT:
        out[source < 0] = fill
    return out


class ElasticDeformation(DualTransform):
    """Elastic deformation of U-Net (Ronneberger et al., MICCAI 2015, section 3.1).

    Displacements drawn from N(0, ``sigma``) pixels on a coarse ``grid`` x ``grid`` lattice
    spanning the image (nodes on the corners and evenly between), for x and y, are upsampled to
    a per-pixel field by bicubic interpolation (Keys, a = -0.5). Every target is resampled with
    that one field through ``cv2.remap``: the image with ``interpolation``, masks (``mask``,
    ``masks`` and every target declared as ``"mask"``, e.g. a float weight map) with nearest
    neighbour whatever ``A.Compose`` says, so they keep their values and dtype. Pixels pulled
    from outside come from ``border_mode`` (``fill`` / ``fill_mask`` for ``BORDER_CONSTANT``).

    Not in the paper, which leaves them open: the node placement, the cubic kernel's parameter and
    the border handling. Randomness comes from the transform's ``random_generator``, so
    ``A.Compose(..., seed=...)`` makes it reproducible. Targets: image, mask, masks (and images and
    volumes slice by slice, all with one field); bounding boxes and keypoints are not supported.
    """

    _targets = (Targets.IMAGE, Targets.MASK)

    class InitSchema(BaseTransformInitSchema):
        grid: int = Field(ge=2)
        sigma: float = Field(ge=0)
        interpolation: Literal[cv2.INTER_LINEAR, cv2.INTER_CUBIC]
        border_mode: Literal[
            cv2.BORDER_REFLECT_101, cv2.BORDER_REFLECT, cv2.BORDER_REPLICATE, cv2.BORDER_CONSTANT
        ]
        fill: tuple[float, ...] | float
        fill_mask: tuple[float, ...] | float

    def __init__(
        self,
        *,
        grid: int = 3,
        sigma: float = 10.0,
        interpolation: int = cv2.INTER_LINEAR,
        border_mode: int = cv2.BORDER_REFLECT_101,
        fill: tuple[float, ...] | float = 0,
        fill_mask: tuple[float, ...] | float = 0,
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        self.grid = grid
        self.sigma = sigma
        self.interpolation = interpolation
        self.border_mode = border_mode
        self.fill = fill
        self.fill_mask = fill_mask

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        height, width = params["shape"][:2]
        nodes = self.random_generator.normal(0.0, self.sigma, size=(2, self.grid, self.grid))
        rows = _cubic_upsampling_matrix(height, self.grid)
        cols = _cubic_upsampling_matrix(width, self.grid)
        map_x = (rows @ nodes[0] @ cols.T).astype(np.float32)
        map_y = (rows @ nodes[1] @ cols.T).astype(np.float32)
        map_x += np.arange(width, dtype=np.float32)
        map_y += np.arange(height, dtype=np.float32)[:, None]
        return {"map_x": map_x, "map_y": map_y}

    def apply(
        self, img: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, **params: Any
    ) -> np.ndarray:
        return _remap(img, map_x, map_y, self.interpolation, self.border_mode, self.fill)

    def apply_to_mask(
        self, mask: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, **params: Any
    ) -> np.ndarray:
        return _remap(mask, map_x, map_y, cv2.INTER_NEAREST, self.border_mode, self.fill_mask)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("grid", "sigma", "interpolation", "border_mode", "fill", "fill_mask")
