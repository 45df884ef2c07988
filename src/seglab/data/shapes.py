"""Built-in procedurally generated scenes: textured stuff regions and overlapping shape things.

One scene, drawn deterministically from ``(seed, index)``, yields every view the tasks need:

- semantic mask (H, W): stuff classes ``0..S-1`` followed by thing classes ``S..S+T-1``;
- instances: binary masks of the visible part of each thing, their thing class and box;
- panoptic segments: one per thing, one per stuff class present (``ShapesScenes``).

Colours are drawn independently of the class, so only texture (stuff) and shape (things) tell the
classes apart.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from seglab.data.base import DatasetInfo, SampleSource, SegmentationDataModule, edge_boxes

__all__ = ["STUFF_TEXTURES", "THING_SHAPES", "Scene", "ShapesDataModule", "ShapesGenerator",
           "ShapesScenes"]  # fmt: skip

STUFF_TEXTURES = ("flat", "speckle", "stripes", "checker")
THING_SHAPES = ("disk", "square", "triangle", "ring")
_SPLIT_OFFSET = {"train": 0, "val": 1_000_003, "test": 2_000_003}
# classes: from the generator's settings (see ShapesDataModule.view_classes)
SHAPES = DatasetInfo(
    name="shapes",
    views={"semantic": None, "instance": None, "panoptic": None},
    mean=(0.5,) * 3,
    std=(0.25,) * 3,
)


@dataclass(frozen=True)
class Scene:
    """One generated scene. ``instance_ids`` (H, W) int32 is 0 off things, ``k + 1`` on thing k."""

    image: np.ndarray  # (H, W, 3) uint8
    semantic: np.ndarray  # (H, W) int64
    instance_ids: np.ndarray  # (H, W) int32
    thing_labels: np.ndarray  # (n,) int64, thing class index 0..T-1

    @property
    def instance_masks(self) -> np.ndarray:
        """(n, H, W) bool, visible part of each thing."""
        n = len(self.thing_labels)
        return self.instance_ids[None] == np.arange(1, n + 1)[:, None, None]

    @property
    def boxes(self) -> np.ndarray:
        """(n, 4) float32 xyxy boxes around the visible part of each thing (pixel edges)."""
        return edge_boxes(self.instance_masks).numpy()

    @property
    def panoptic(self) -> np.ndarray:
        """(H, W, 2) int64: (semantic category, instance id); instance id 0 for stuff."""
        return np.stack([self.semantic, self.instance_ids.astype(np.int64)], axis=-1)


class ShapesGenerator:
    """Draws scenes of ``image_size`` with a Voronoi split of stuff regions and shape things.

    Args:
        image_size: (height, width) or one int for a square.
        stuff_classes: names of the stuff classes; their textures cycle through ``STUFF_TEXTURES``.
        thing_classes: names of the thing classes; their shapes cycle through ``THING_SHAPES``.
        stuff_regions: (min, max) number of Voronoi cells for the stuff split.
        things: (min, max) number of things drawn, later ones occluding earlier ones.
        thing_size: (min, max) thing radius as a fraction of the shorter image side.
        min_visible: things with fewer visible pixels after occlusion are dropped.
        noise: std of the Gaussian pixel noise added to the whole image (0..1 scale).
    """

    def __init__(
        self,
        *,
        image_size: int | Sequence[int] = 64,
        stuff_classes: Sequence[str] = ("flat", "speckle", "stripes"),
        thing_classes: Sequence[str] = ("disk", "square", "triangle"),
        stuff_regions: Sequence[int] = (2, 4),
        things: Sequence[int] = (1, 5),
        thing_size: Sequence[float] = (0.12, 0.28),
        min_visible: int = 4,
        noise: float = 0.03,
    ) -> None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or min(size) < 8:
            raise ValueError(f"data.image_size={image_size}: expected an int or (H, W), each >= 8")
        if not stuff_classes:
            raise ValueError("data.stuff_classes is empty: at least one stuff class is needed")
        if len(thing_classes) > len(THING_SHAPES) or len(stuff_classes) > len(STUFF_TEXTURES):
            raise ValueError(
                f"data: at most {len(STUFF_TEXTURES)} stuff and {len(THING_SHAPES)} thing classes "
                f"(textures {STUFF_TEXTURES}, shapes {THING_SHAPES})"
            )
        for key, pair, least in (("stuff_regions", stuff_regions, 1), ("things", things, 0)):
            if len(pair) != 2 or not least <= pair[0] <= pair[1]:
                raise ValueError(
                    f"data.{key}={list(pair)}: expected [min, max] with {least} <= min <= max"
                )
        self.size = (int(size[0]), int(size[1]))
        self.stuff_classes = tuple(stuff_classes)
        self.thing_classes = tuple(thing_classes)
        self.stuff_regions = tuple(stuff_regions)
        self.things = tuple(things)
        self.thing_size = tuple(thing_size)
        self.min_visible = min_visible
        self.noise = noise
        h, w = self.size
        self._yy, self._xx = np.mgrid[0:h, 0:w].astype(np.float32)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.stuff_classes + self.thing_classes

    def __call__(self, seed: int) -> Scene:
        rng = np.random.default_rng(seed)
        h, w = self.size
        yy, xx = self._yy, self._xx
        image = np.zeros((h, w, 3), np.float32)
        semantic = np.zeros((h, w), np.int64)

        n_regions = int(rng.integers(self.stuff_regions[0], self.stuff_regions[1] + 1))
        centres = rng.uniform((0, 0), (h, w), size=(n_regions, 2)).astype(np.float32)
        dist = (yy[None] - centres[:, 0, None, None]) ** 2 + (
            xx[None] - centres[:, 1, None, None]
        ) ** 2
        region = dist.argmin(axis=0)
        for r in range(n_regions):
            cls = int(rng.integers(len(self.stuff_classes)))
            sel = region == r
            image[sel] = self._texture(STUFF_TEXTURES[cls], rng)[sel]
            semantic[sel] = cls

        instance_ids = np.zeros((h, w), np.int32)
        labels: list[int] = []
        n_things = (
            int(rng.integers(self.things[0], self.things[1] + 1)) if self.thing_classes else 0
        )
        side = min(h, w)
        for _ in range(n_things):
            cls = int(rng.integers(len(self.thing_classes)))
            radius = rng.uniform(*self.thing_size) * side
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            mask = self._shape(THING_SHAPES[cls], cy, cx, radius, rng.uniform(0, 2 * np.pi))
            if not mask.any():
                continue
            colour = rng.uniform(0, 1, 3).astype(np.float32)
            shade = 1 + 0.15 * ((yy - cy) / max(radius, 1)).clip(-1, 1)[..., None]
            image[mask] = (colour * shade)[mask].clip(0, 1)
            semantic[mask] = len(self.stuff_classes) + cls
            labels.append(cls)
            instance_ids[mask] = len(labels)

        instance_ids, thing_labels = self._drop_hidden(instance_ids, np.asarray(labels, np.int64))
        hidden = (semantic >= len(self.stuff_classes)) & (instance_ids == 0)
        self._repaint_hidden(image, semantic, hidden, region, rng)
        image = image + rng.normal(0, self.noise, image.shape).astype(np.float32)
        image_u8 = (image.clip(0, 1) * 255).round().astype(np.uint8)
        return Scene(image_u8, semantic, instance_ids, thing_labels)

    def _texture(self, kind: str, rng: np.random.Generator) -> np.ndarray:
        h, w = self.size
        yy, xx = self._yy, self._xx
        base = rng.uniform(0.1, 0.9, 3).astype(np.float32)
        if kind == "flat":
            ramp = 0.1 * (rng.uniform(-1, 1) * yy / h + rng.uniform(-1, 1) * xx / w)
            return (base + ramp[..., None]).clip(0, 1)
        if kind == "speckle":
            return (base + rng.normal(0, 0.18, (h, w, 1)).astype(np.float32)).clip(0, 1)
        if kind == "stripes":
            angle, period = rng.uniform(0, np.pi), rng.uniform(4, 8)
            phase = (xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period)
            return (base + 0.25 * np.sin(phase)[..., None]).clip(0, 1)
        cell = int(rng.integers(3, 7))
        board = ((yy // cell + xx // cell) % 2) * 2 - 1
        return (base + 0.2 * board[..., None]).clip(0, 1)

    def _shape(self, kind: str, cy: float, cx: float, r: float, angle: float) -> np.ndarray:
        dy, dx = self._yy - cy, self._xx - cx
        if kind == "disk":
            return dy**2 + dx**2 <= r**2
        if kind == "ring":
            d2 = dy**2 + dx**2
            return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
        c, s = np.cos(angle), np.sin(angle)
        u, v = c * dx + s * dy, -s * dx + c * dy
        if kind == "square":
            half = r / np.sqrt(2)
            return (np.abs(u) <= half) & (np.abs(v) <= half)
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = angle + k * 2 * np.pi / 3
            inside &= np.cos(a) * dx + np.sin(a) * dy <= r / 2
        return inside

    def _drop_hidden(self, ids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Remove things left with fewer than ``min_visible`` pixels; renumber the rest from 1."""
        if not len(labels):
            return ids, labels
        counts = np.bincount(ids.ravel(), minlength=len(labels) + 1)[1:]
        keep = counts >= max(self.min_visible, 1)
        remap = np.zeros(len(labels) + 1, np.int32)
        remap[1:][keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
        return remap[ids], labels[keep]

    def _repaint_hidden(self, image, semantic, hidden, region, rng) -> None:
        """Pixels of dropped tiny things go back to the stuff texture of their region (in place)."""
        for r in np.unique(region[hidden]):
            sel = hidden & (region == r)
            owner = semantic[(region == r) & (semantic < len(self.stuff_classes))]
            cls = int(owner[0]) if owner.size else 0
            image[sel] = self._texture(STUFF_TEXTURES[cls], rng)[sel]
            semantic[sel] = cls


class ShapesScenes(SampleSource):
    """The scenes of one split: scene i of split s is ``generator(seed + offset(s) + i)``, with
    its ``mask`` (stuff classes then thing classes), one object per visible thing (labels
    1..T, 0 = background) and its panoptic segments: thing k keeps id k (class 1..T), stuff
    class s present is the one segment n + 1 + s of class T + 1 + s (n things; no void)."""

    def __init__(
        self, generator: ShapesGenerator, *, num_samples: int, seed: int, split: str
    ) -> None:
        self.generator = generator
        self.num_samples = num_samples
        self.split = split
        self.base_seed = seed + _SPLIT_OFFSET[split]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:  # iteration stops on IndexError
            raise IndexError(f"scene {index} of a split of {self.num_samples}")
        scene = self.generator(self.base_seed + index)
        n, things = len(scene.thing_labels), len(self.generator.thing_classes)
        stuff = np.unique(scene.semantic[scene.instance_ids == 0])  # off things: stuff classes
        segments = [{"id": k + 1, "class": int(c) + 1} for k, c in enumerate(scene.thing_labels)]
        segments += [{"id": n + 1 + int(s), "class": things + 1 + int(s)} for s in stuff]
        return {
            "image": scene.image,
            "mask": scene.semantic,
            "masks": scene.instance_masks,
            "labels": scene.thing_labels + 1,
            "segment_ids": np.where(
                scene.instance_ids > 0, scene.instance_ids, n + 1 + scene.semantic
            ),
            "segments": segments,
            "name": f"shapes/{self.split}/{index:06d}",
        }


class ShapesDataModule(SegmentationDataModule):
    """``data=shapes``: generated scenes, no download. ``num_samples`` maps split -> size; the
    other generator settings are ``ShapesGenerator``'s.

    ``task=semantic`` gives stuff then thing classes, ``task=instance`` background + things,
    ``task=panoptic`` void + things + stuff (``ShapesScenes``; category ids: the classes).
    """

    info = SHAPES

    def __init__(
        self, *, num_samples: dict[str, int] | None = None, seed: int = 0, **kwargs: Any
    ) -> None:
        settings = inspect.signature(ShapesGenerator).parameters
        self.generator = ShapesGenerator(
            **{k: kwargs.pop(k) for k in list(kwargs) if k in settings}
        )
        super().__init__(**kwargs)
        self.num_samples = {"train": 512, "val": 64, "test": 64, **(num_samples or {})}
        self.seed = seed

    def view_classes(self) -> tuple[str, ...]:
        if self.task == "instance":
            return ("background", *self.generator.thing_classes)
        if self.task == "panoptic":
            return ("void", *self.generator.thing_classes, *self.generator.stuff_classes)
        return self.generator.class_names

    def panoptic_categories(self) -> tuple[int, list[int], str]:
        things, classes = len(self.generator.thing_classes), len(self.generator.class_names)
        return things, list(range(1, classes + 1)), "data.thing_classes / data.stuff_classes"

    def source(self, split: str) -> ShapesScenes:
        return ShapesScenes(
            self.generator, num_samples=self.num_samples[split], seed=self.seed, split=split
        )
