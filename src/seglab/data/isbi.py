"""ISBI 2012 EM segmentation challenge, the U-Net paper's data: membrane (0) vs cell (1).

Cardona et al., PLoS Biol 2010 (data); Arganda-Carreras et al., Front. Neuroanat. 2015
(challenge). 30 labelled and 30 unlabelled 512x512 grey serial-section TEM slices, read from
either on-disk layout under ``data_dir``:

- PNG slices: ``train/image/N.png``, ``train/label/N.png``, ``test/N.png`` (N = 0, 1, ...; other
  file names, e.g. a model's ``N_predict.png`` next to the test slices, are left alone);
- the original multi-page TIFF stacks: ``train-volume.tif``, ``train-labels.tif``,
  ``test-volume.tif`` (one page per slice, read with Pillow).

Label 0 (membrane) becomes class 0 and label 255 (cell) class 1, so 255 never collides with the
default ``ignore_index``; any other label value raises a ``ValueError`` naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from seglab.data.base import (
    DatasetInfo,
    IndexPNG,
    PairedSamples,
    SegmentationDataModule,
    open_image,
)

__all__ = ["ISBI2012", "ISBI2012DataModule", "ISBILayout", "ISBISlice"]

HOW_TO_GET = (
    "get the ISBI 2012 EM data either as the PNG slices of github.com/zhixuhao/unet "
    "(data/membrane: train/image, train/label, test) or as the challenge's TIFF stacks "
    "train-volume.tif, train-labels.tif, test-volume.tif "
    "(https://imagej.net/events/isbi-2012-segmentation-challenge), and point data.data_dir "
    "(or $SEGLAB_DATA_DIR, which holds isbi2012_em/membrane) at the folder holding them"
)
ISBI2012 = DatasetInfo(
    name="isbi2012",
    views={"semantic": ("membrane", "cell")},
    how_to_get=HOW_TO_GET,
    labels={0: 0, 255: 1},
    palette=((0, 0, 0), (255, 255, 255)),
    in_channels=1,
    mean=(0.495,),  # over the 30 train slices
    std=(0.173,),
)
_GREY_MODES = ("L", "P", "LA", "RGB", "RGBA", "1")


@dataclass(frozen=True)
class ISBISlice:
    """One slice: the PNG file ``path`` (``page`` None) or page ``page`` of the TIFF ``path``."""

    path: Path
    page: int | None = None

    def __str__(self) -> str:
        return str(self.path) if self.page is None else f"{self.path}[page {self.page}]"

    def read(self, *, label: bool = False) -> np.ndarray:
        """The slice as a 2-D uint8 grey array; a ``label`` must be stored single-channel."""
        with open_image(self.path, f"ISBI 2012 slice {self}") as img:
            img.seek(self.page or 0)
            if img.mode not in (("1", "L") if label else _GREY_MODES):
                raise ValueError(
                    f"ISBI 2012 {'label' if label else 'slice'} {self} has Pillow mode "
                    f"{img.mode!r}; expected 8-bit grey"
                )
            return np.array(img.convert("L"))


@dataclass(frozen=True)
class ISBILayout:
    """The slices found under a data root: ``images[i]`` pairs with ``labels[i]``; ``test``
    holds the slices found in ``test_source`` (none when it is absent)."""

    kind: str  # "png" or "tif"
    images: tuple[ISBISlice, ...]
    labels: tuple[ISBISlice, ...]
    test_source: Path
    test: tuple[ISBISlice, ...]


def _numbered_pngs(folder: Path) -> tuple[ISBISlice, ...]:
    """The ``N.png`` slices of ``folder`` in numeric order (none where it does not exist)."""
    files = folder.glob("*.png") if folder.is_dir() else ()
    numbered = sorted((int(p.stem), p) for p in files if p.stem.isdecimal() and p.is_file())
    return tuple(ISBISlice(p) for _, p in numbered)


def _tif_pages(path: Path) -> tuple[ISBISlice, ...]:
    """Every page of the TIFF stack ``path`` (none where it does not exist)."""
    if not path.is_file():
        return ()
    with open_image(path, f"ISBI 2012 TIFF stack {path}") as img:
        return tuple(ISBISlice(path, page) for page in range(getattr(img, "n_frames", 1)))


class ISBI2012DataModule(SegmentationDataModule):
    """``data=isbi2012``: the ISBI 2012 EM stacks, binary membrane (0) vs cell (1), grey input.

    Splits: ``train`` and ``val`` divide the 30 labelled slices (default 0-24 and 25-29);
    ``test`` is the unlabelled test stack, predictable but never scored (all-ignore masks).

    Args:
        data_dir: the folder holding ``train/`` and ``test/`` or the three TIFF stacks.
        layout: ``auto``, ``png`` or ``tif`` (see ``layout``).
        train_slices: indices of the labelled slices to train on; None: every slice not in
            ``val_slices``.
        val_slices: indices of the labelled slices to validate on.
        **kwargs: ``SegmentationDataModule``'s arguments.
    """

    info = ISBI2012

    def __init__(
        self,
        *,
        layout: str = "auto",
        train_slices: Sequence[int] | None = None,
        val_slices: Sequence[int] = (25, 26, 27, 28, 29),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if layout not in ("auto", "png", "tif"):
            raise ValueError(f"data.layout={layout!r}: expected 'auto', 'png' or 'tif'")
        self.layout_name = layout
        self.train_slices = None if train_slices is None else [int(i) for i in train_slices]
        self.val_slices = [int(i) for i in val_slices]

    @cached_property
    def layout(self) -> ISBILayout:
        """The slices under ``data_dir`` (looked up on first use): ``layout`` ``png``
        (``train/image``, ``train/label``, ``test``), ``tif`` (the three stacks) or ``auto`` (PNG
        when ``train/image`` exists). Raises ``FileNotFoundError`` naming what is missing."""
        root, kind = self.root, self.layout_name
        image_dir = root / "train" / "image"
        if kind == "png" or (kind == "auto" and image_dir.is_dir()):
            images = _numbered_pngs(image_dir)
            if not images:
                raise self.not_found(f"no N.png slice in {image_dir}")
            label_dir = root / "train" / "label"
            pairs = self.match_pairs([s.path for s in images], lambda image: label_dir / image.name)
            labels = tuple(ISBISlice(label) for _, label in pairs)
            return ISBILayout("png", images, labels, root / "test", _numbered_pngs(root / "test"))
        volume, stack = root / "train-volume.tif", root / "train-labels.tif"
        test = root / "test-volume.tif"
        if kind == "auto" and not volume.is_file():
            raise self.not_found(
                f"found neither {image_dir} (PNG slices) nor {volume} (TIFF stack) in {root}"
            )
        for path in (volume, stack):
            if not path.is_file():
                raise self.not_found(f"TIFF stack {path} not found")
        images, labels = _tif_pages(volume), _tif_pages(stack)
        if len(images) != len(labels):
            raise ValueError(
                f"data=isbi2012: {volume} has {len(images)} pages but {stack} has {len(labels)}"
            )
        return ISBILayout("tif", images, labels, test, _tif_pages(test))

    def split_indices(self) -> dict[str, list[int]]:
        """Indices of the labelled slices in ``train`` and ``val``."""
        n = len(self.layout.images)
        val, train = self.val_slices, self.train_slices
        if train is None:
            train = [i for i in range(n) if i not in set(val)]
        for key, indices in (("val_slices", val), ("train_slices", train)):
            if out := sorted({i for i in indices if not 0 <= i < n}):
                raise ValueError(
                    f"data.{key} holds {out}, outside the {n} labelled slices 0..{n - 1} "
                    f"in {self.root}"
                )
            if len(set(indices)) != len(indices):
                raise ValueError(f"data.{key}={indices} lists a slice twice")
        if overlap := sorted(set(train) & set(val)):
            raise ValueError(f"data.train_slices and data.val_slices share the slice(s) {overlap}")
        return {"train": train, "val": val}

    def source(self, split: str) -> PairedSamples:
        """The slices of ``split``: image ``(H, W, 1)``, mask 0 = membrane / 1 = cell, ``name``
        the file (``path[page N]`` for a TIFF page); the test slices are unlabelled, so that their
        all-``ignore_index`` masks score nothing."""
        layout = self.layout
        if split == "test":
            if not layout.test:
                raise self.not_found(f"split 'test' needs the test slices in {layout.test_source}")
            pairs = [(image, None) for image in layout.test]
        else:
            pairs = [(layout.images[i], layout.labels[i]) for i in self.split_indices()[split]]
        reader = IndexPNG(ISBI2012.labels, ignore_index=self.ignore_index, dataset=ISBI2012.name)
        return PairedSamples(
            pairs,
            read_image=lambda s: s.read()[..., None],
            read_label=lambda s: reader.lookup(s.read(label=True), s),
        )
