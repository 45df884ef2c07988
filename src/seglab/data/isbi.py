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

The challenge scored the test stack on its server; its labels were never published. So the splits
that are scored divide the 30 labelled slices: ``train``, ``val`` (which chooses the checkpoint)
and ``test`` (which is reported), and the test stack is the split ``challenge``, predicted but
never scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import combinations
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
    splits=("train", "val", "test", "challenge"),
    unscored={
        "challenge": "the ISBI 2012 test stack is unlabelled (the challenge server scored it). "
        "Score on split=test, the labelled slices of data.test_slices; predict the stack with "
        "input=challenge"
    },
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
    holds the challenge's unlabelled slices found in ``test_source`` (none when it is absent)."""

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

    Splits: ``train``, ``val`` and ``test`` take the labelled slices of ``train_slices``,
    ``val_slices`` and ``test_slices`` (pairwise disjoint); ``challenge`` is the unlabelled test
    stack, predictable (``input=challenge``) but refused for scoring.

    The defaults here are those of configs saved before ``test_slices`` existed (train on 0-24,
    validate on 25-29, no test slice), so that their checkpoints evaluate as they were trained;
    ``conf/data/isbi2012.yaml`` sets the held-out protocol (train 0-22, val 23-24, test 25-29).

    Args:
        data_dir: the folder holding ``train/`` and ``test/`` or the three TIFF stacks.
        layout: ``auto``, ``png`` or ``tif`` (see ``layout``).
        train_slices: indices of the labelled slices to train on; None: every slice in neither
            ``val_slices`` nor ``test_slices``.
        val_slices: indices of the labelled slices to validate on (choosing the checkpoint).
        test_slices: indices of the labelled slices to test on (the figures reported).
        **kwargs: ``SegmentationDataModule``'s arguments.
    """

    info = ISBI2012

    def __init__(
        self,
        *,
        layout: str = "auto",
        train_slices: Sequence[int] | None = None,
        val_slices: Sequence[int] = (25, 26, 27, 28, 29),
        test_slices: Sequence[int] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if layout not in ("auto", "png", "tif"):
            raise ValueError(f"data.layout={layout!r}: expected 'auto', 'png' or 'tif'")
        self.layout_name = layout
        self.train_slices = None if train_slices is None else [int(i) for i in train_slices]
        self.val_slices = [int(i) for i in val_slices]
        self.test_slices = [int(i) for i in test_slices]

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
        """Indices of the labelled slices in ``train``, ``val`` and ``test``.

        Raises:
            ValueError: naming the key, when a list holds a slice that does not exist or one
                twice, when two lists share a slice, or when no slice is left to train on.
        """
        n = len(self.layout.images)
        held_out = {"val_slices": self.val_slices, "test_slices": self.test_slices}
        train = self.train_slices
        if train is None:
            train = [i for i in range(n) if i not in {*self.val_slices, *self.test_slices}]
            if not train:
                raise ValueError(
                    f"data.train_slices=null leaves no slice to train on: data.val_slices and "
                    f"data.test_slices hold all {n} labelled slices"
                )
        lists = {"train_slices": train, **held_out}
        for key, indices in lists.items():
            if out := sorted({i for i in indices if not 0 <= i < n}):
                raise ValueError(
                    f"data.{key} holds {out}, outside the {n} labelled slices 0..{n - 1} "
                    f"in {self.root}"
                )
            if len(set(indices)) != len(indices):
                raise ValueError(f"data.{key}={indices} lists a slice twice")
        for (key_a, a), (key_b, b) in combinations(lists.items(), 2):
            if overlap := sorted(set(a) & set(b)):
                raise ValueError(
                    f"data.{key_a} and data.{key_b} share the slice(s) {overlap}: a slice "
                    "belongs to one split only"
                )
        return {"train": train, "val": self.val_slices, "test": self.test_slices}

    def source(self, split: str) -> PairedSamples:
        """The slices of ``split``: image ``(H, W, 1)``, mask 0 = membrane / 1 = cell, ``name``
        the file (``path[page N]`` for a TIFF page); the ``challenge`` slices are unlabelled
        (all-``ignore_index`` masks)."""
        layout = self.layout
        if split == "challenge":
            if not layout.test:
                raise self.not_found(
                    f"split 'challenge' needs the test slices in {layout.test_source}"
                )
            pairs = [(image, None) for image in layout.test]
        else:
            indices = self.split_indices()[split]
            if split == "test" and not indices:
                raise ValueError(
                    "data.test_slices is empty: split 'test' has no labelled slice (configs "
                    "saved before the key existed have none); set data.test_slices to slices "
                    "outside data.val_slices or score split=val; the challenge's unlabelled "
                    "stack is input=challenge"
                )
            pairs = [(layout.images[i], layout.labels[i]) for i in indices]
        reader = IndexPNG(ISBI2012.labels, ignore_index=self.ignore_index, dataset=ISBI2012.name)
        return PairedSamples(
            pairs,
            read_image=lambda s: s.read()[..., None],
            read_label=lambda s: reader.lookup(s.read(label=True), s),
        )
