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

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from seglab.data.base import SegmentationDataModule, SemanticDataset
from seglab.data.weight_maps import connected_components, unet_weight_map

__all__ = [
    "ISBI2012DataModule",
    "ISBI2012Dataset",
    "ISBILayout",
    "ISBISlice",
    "find_isbi_layout",
    "read_isbi_label",
]

HOW_TO_GET = (
    "get the ISBI 2012 EM data either as the PNG slices of github.com/zhixuhao/unet "
    "(data/membrane: train/image, train/label, test) or as the challenge's TIFF stacks "
    "train-volume.tif, train-labels.tif, test-volume.tif "
    "(https://imagej.net/events/isbi-2012-segmentation-challenge), and point data.data_dir "
    "(or $SEGLAB_DATA_DIR, which holds isbi2012_em/membrane) at the folder holding them"
)
LAYOUTS = ("auto", "png", "tif")
_TIF_FILES = {"train": "train-volume.tif", "label": "train-labels.tif", "test": "test-volume.tif"}
_SLICE_NAME = re.compile(r"^(\d+)\.png$")
_GREY_MODES = ("L", "P", "LA", "RGB", "RGBA", "1")


@dataclass(frozen=True)
class ISBISlice:
    """One slice: the PNG file ``path`` (``page`` None) or page ``page`` of the TIFF ``path``."""

    path: Path
    page: int | None = None

    @property
    def name(self) -> str:
        return str(self.path) if self.page is None else f"{self.path}[page {self.page}]"

    def read(self, *, label: bool = False) -> np.ndarray:
        """The slice as a 2-D uint8 array: grey values, or the raw label values if ``label``."""
        try:
            with Image.open(self.path) as img:
                if self.page is not None:
                    img.seek(self.page)
                mode = img.mode
                if mode not in _GREY_MODES:
                    raise ValueError(
                        f"ISBI 2012 slice {self.name} has Pillow mode {mode!r}; expected 8-bit "
                        "grey slices"
                    )
                if label and mode not in ("1", "L"):
                    raise ValueError(
                        f"ISBI 2012 label {self.name} has Pillow mode {mode!r}; expected a "
                        "single-channel 8-bit image with values 0 and 255"
                    )
                if mode == "1" or (not label and mode != "L"):
                    img = img.convert("L")
                return np.array(img, dtype=np.uint8)
        except (OSError, EOFError) as err:
            raise ValueError(f"ISBI 2012 slice {self.name} could not be read ({err})") from err


@dataclass(frozen=True)
class ISBILayout:
    """The slices found under a data root: the labelled train stack and the test stack.

    ``images[i]`` pairs with ``labels[i]``; ``test`` is None when the test slices are absent.
    """

    root: Path
    kind: str  # "png" or "tif"
    images: tuple[ISBISlice, ...]
    labels: tuple[ISBISlice, ...]
    test: tuple[ISBISlice, ...] | None


def _png_slices(folder: Path) -> tuple[ISBISlice, ...]:
    numbered = sorted(
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if p.is_file() and (m := _SLICE_NAME.match(p.name))
    )
    return tuple(ISBISlice(p) for _, p in numbered)


def _tif_pages(path: Path) -> tuple[ISBISlice, ...]:
    try:
        with Image.open(path) as img:
            n = getattr(img, "n_frames", 1)
    except OSError as err:
        raise ValueError(f"ISBI 2012 TIFF stack {path} could not be read ({err})") from err
    return tuple(ISBISlice(path, page) for page in range(n))


def _find_png(root: Path) -> ISBILayout:
    image_dir, label_dir, test_dir = root / "train/image", root / "train/label", root / "test"
    images = _png_slices(image_dir) if image_dir.is_dir() else ()
    if not images:
        raise FileNotFoundError(f"data=isbi2012: no N.png slice in {image_dir}; {HOW_TO_GET}")
    labels = tuple(ISBISlice(label_dir / s.path.name) for s in images)
    for s in labels:
        if not s.path.is_file():
            raise FileNotFoundError(
                f"data=isbi2012: label {s.path} is missing for slice {image_dir / s.path.name}"
            )
    test = _png_slices(test_dir) if test_dir.is_dir() else ()
    return ISBILayout(root, "png", images, labels, test or None)


def _find_tif(root: Path) -> ISBILayout:
    volume, labels_path, test_path = (root / _TIF_FILES[k] for k in ("train", "label", "test"))
    for path in (volume, labels_path):
        if not path.is_file():
            raise FileNotFoundError(f"data=isbi2012: TIFF stack {path} not found; {HOW_TO_GET}")
    images, labels = _tif_pages(volume), _tif_pages(labels_path)
    if len(images) != len(labels):
        raise ValueError(
            f"data=isbi2012: {volume} has {len(images)} pages but {labels_path} has {len(labels)}"
        )
    test = _tif_pages(test_path) if test_path.is_file() else None
    return ISBILayout(root, "tif", images, labels, test)


def find_isbi_layout(data_dir: str | Path, layout: str = "auto") -> ISBILayout:
    """Find the ISBI 2012 slices under ``data_dir``.

    ``layout``: ``png`` (``train/image``, ``train/label``, ``test``), ``tif`` (the three stacks)
    or ``auto``: the PNG slices when ``train/image`` exists, else the TIFF stacks.

    Raises:
        FileNotFoundError: naming the folder or file looked for, and how to get the data.
        ValueError: an unknown ``layout``, or stacks whose page counts differ.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"data.layout={layout!r}: expected one of {list(LAYOUTS)}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data=isbi2012: data_dir {root} does not exist; {HOW_TO_GET}")
    if layout == "png" or (layout == "auto" and (root / "train" / "image").is_dir()):
        return _find_png(root)
    if layout == "tif" or (root / _TIF_FILES["train"]).is_file():
        return _find_tif(root)
    raise FileNotFoundError(
        f"data=isbi2012: found neither {root / 'train' / 'image'} (PNG slices) nor "
        f"{root / _TIF_FILES['train']} (TIFF stack) in {root}; {HOW_TO_GET}"
    )


def read_isbi_label(ref: ISBISlice) -> np.ndarray:
    """Class indices (H, W) uint8 of a label slice: 0 (membrane) -> 0, 255 (cell) -> 1.

    Raises:
        ValueError: naming the file when it holds any other value.
    """
    raw = ref.read(label=True)
    bad = (raw != 0) & (raw != 255)
    if bad.any():
        values = sorted(int(v) for v in np.unique(raw[bad])[:10])
        raise ValueError(
            f"ISBI 2012 label {ref.name} holds value(s) {values}; expected only 0 (membrane) "
            "and 255 (cell)"
        )
    return (raw == 255).astype(np.uint8)


class ISBI2012Dataset(SemanticDataset):
    """Semantic view of some ISBI 2012 slices.

    Samples: ``image`` uint8 (H, W, 1), ``mask`` uint8 (H, W) with 0 = membrane and 1 = cell,
    ``name`` the file (``path[page N]`` for a TIFF page), and ``weight`` float32 (H, W) when
    ``weight_map`` is set.

    Unlabelled slices (``labels`` None: the challenge's test stack) can be predicted but are not
    scored: their mask is ``ignore_index`` everywhere, so losses and metrics skip every pixel,
    and their weight map (if asked for) is 1 everywhere.

    Weight maps are U-Net's ``w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` with the objects being
    the 4-connected components of the cell class; each is computed on the first request of its
    slice and kept in memory (about 1 MiB per slice; each data loader worker keeps its own).

    Args:
        images: the grey slices.
        labels: the label slices, one per image, or None for unlabelled slices.
        weight_map: return U-Net weight maps as ``weight``.
        w0, sigma: the separation term's weight and width in pixels (paper: 10 and 5).
        w_c: the class-balancing term, ``class_weights`` of ``unet_weight_map``: None (1
            everywhere), ``"balanced"`` or ``(membrane_weight, cell_weight)``.
        **kwargs: ``SemanticDataset``'s arguments.
    """

    def __init__(
        self,
        images: Sequence[ISBISlice],
        labels: Sequence[ISBISlice] | None,
        *,
        weight_map: bool = False,
        w0: float = 10.0,
        sigma: float = 5.0,
        w_c: str | Sequence[float] | None = "balanced",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"ISBI2012Dataset: {len(images)} images but {len(labels)} labels")
        self.images = tuple(images)
        self.labels = None if labels is None else tuple(labels)
        self.weight_map = weight_map
        self.w0, self.sigma, self.w_c = w0, sigma, w_c
        self._weights: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.images)

    def _ignore_mask(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.full(shape, self.ignore_index, np.uint8 if self.ignore_index <= 255 else np.int32)

    def load_mask(self, index: int) -> np.ndarray:
        if self.labels is None:
            return self._ignore_mask(self.images[index].read().shape)
        return read_isbi_label(self.labels[index])

    def load_weight(self, index: int, mask: np.ndarray) -> np.ndarray:
        """U-Net weight map (H, W) float32 of slice ``index`` with class mask ``mask`` (cached)."""
        if index not in self._weights:
            if self.labels is None:
                weight = np.ones(mask.shape, np.float32)
            else:
                cells = connected_components(mask, foreground=1, connectivity=4)
                weight = unet_weight_map(
                    cells, w0=self.w0, sigma=self.sigma, class_weights=self.w_c
                )
            self._weights[index] = weight
        return self._weights[index]

    def load_sample(self, index: int) -> dict[str, Any]:
        image = self.images[index].read()
        if self.labels is None:
            mask = self._ignore_mask(image.shape)
        else:
            mask = read_isbi_label(self.labels[index])
        sample = {"image": image[..., None], "mask": mask, "name": self.images[index].name}
        if self.weight_map:
            sample["weight"] = self.load_weight(index, mask)
        return sample


class ISBI2012DataModule(SegmentationDataModule):
    """``data=isbi2012``: the ISBI 2012 EM stacks, binary membrane (0) vs cell (1), grey input.

    Splits: ``train`` and ``val`` divide the 30 labelled slices (default 0-24 and 25-29);
    ``test`` is the unlabelled test stack, predictable but never scored (all-ignore masks).

    Args:
        data_dir: the folder holding ``train/`` and ``test/`` or the three TIFF stacks.
        layout: ``auto``, ``png`` or ``tif`` (see ``find_isbi_layout``).
        train_slices: indices of the labelled slices to train on; None: every slice not in
            ``val_slices``.
        val_slices: indices of the labelled slices to validate on.
        crop_size: side of the square train tiles, read by the yaml's train pipeline
            (``RandomCrop``) and available to tiling inference; None: not set.
        weight_map, w0, sigma, w_c: U-Net weight maps (see ``ISBI2012Dataset``).
        **kwargs: ``SegmentationDataModule``'s arguments.
    """

    def __init__(
        self,
        *,
        data_dir: str,
        layout: str = "auto",
        train_slices: Sequence[int] | None = None,
        val_slices: Sequence[int] = (25, 26, 27, 28, 29),
        crop_size: int | None = None,
        weight_map: bool = False,
        w0: float = 10.0,
        sigma: float = 5.0,
        w_c: str | Sequence[float] | None = "balanced",
        num_classes: int = 2,
        in_channels: int = 1,
        class_names: Sequence[str] | None = ("membrane", "cell"),
        palette: Sequence[Sequence[int]] | None = ((0, 0, 0), (255, 255, 255)),
        mean: Sequence[float] = (0.495,),
        std: Sequence[float] = (0.173,),
        **kwargs: Any,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            class_names=class_names,
            palette=palette,
            mean=mean,
            std=std,
            data_dir=data_dir,
            **kwargs,
        )
        if self.task != "semantic":
            raise ValueError(
                f"data.task={self.task!r}: data=isbi2012 has only a semantic view (membrane, cell)"
            )
        if num_classes != 2:
            raise ValueError(f"data.num_classes={num_classes} but data=isbi2012 has 2 classes")
        if self.ignore_index in (0, 1):
            raise ValueError(
                f"data.ignore_index={self.ignore_index} collides with the classes 0 and 1"
            )
        if layout not in LAYOUTS:
            raise ValueError(f"data.layout={layout!r}: expected one of {list(LAYOUTS)}")
        if crop_size is not None and crop_size < 1:
            raise ValueError(f"data.crop_size={crop_size}: expected a positive tile side")
        self.layout_name = layout
        self.crop_size = crop_size
        self.train_slices = None if train_slices is None else [int(i) for i in train_slices]
        self.val_slices = [int(i) for i in val_slices]
        self.weight_map = weight_map
        self.w0, self.sigma, self.w_c = w0, sigma, w_c
        self._layout: ISBILayout | None = None

    @property
    def layout(self) -> ISBILayout:
        """The slices found under ``data_dir`` (looked up on first use)."""
        if self._layout is None:
            self._layout = find_isbi_layout(self.data_dir or "", self.layout_name)
        return self._layout

    def split_indices(self) -> dict[str, list[int]]:
        """Indices of the labelled slices in ``train`` and ``val``."""
        n = len(self.layout.images)
        for key, indices in (("val_slices", self.val_slices), ("train_slices", self.train_slices)):
            if indices is None:
                continue
            out = sorted({i for i in indices if not 0 <= i < n})
            if out:
                raise ValueError(
                    f"data.{key} holds {out}, outside the {n} labelled slices 0..{n - 1} "
                    f"in {self.layout.root}"
                )
            if len(set(indices)) != len(indices):
                raise ValueError(f"data.{key}={indices} lists a slice twice")
        val = list(self.val_slices)
        if self.train_slices is None:
            train = [i for i in range(n) if i not in set(val)]
        else:
            train = list(self.train_slices)
            overlap = sorted(set(train) & set(val))
            if overlap:
                raise ValueError(
                    f"data.train_slices and data.val_slices share the slice(s) {overlap}"
                )
        return {"train": train, "val": val}

    def build_dataset(self, split: str) -> ISBI2012Dataset:
        layout = self.layout
        if split == "test":
            if layout.test is None:
                where = layout.root / ("test" if layout.kind == "png" else _TIF_FILES["test"])
                raise FileNotFoundError(
                    f"data=isbi2012: split 'test' needs the test slices in {where}; {HOW_TO_GET}"
                )
            images, labels = list(layout.test), None
        else:
            indices = self.split_indices()[split]
            images = [layout.images[i] for i in indices]
            labels = [layout.labels[i] for i in indices]
        return ISBI2012Dataset(
            images,
            labels,
            weight_map=self.weight_map,
            w0=self.w0,
            sigma=self.sigma,
            w_c=self.w_c,
            **self.dataset_kwargs(split),
        )
