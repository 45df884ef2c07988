"""What ``predict`` runs on: a split of the configured dataset, or image files read as it reads them.

``prediction_dataset(datamodule, source)`` gives one dataset whatever ``source`` is, so that every
task has one meaning of ``input=``. Image files become items of the data module's own view, with
its eval transforms and normalisation, and labels that hold nothing: a semantic mask of
``ignore_index`` only, an instance target with no object, a panoptic target all void.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
from PIL import Image
from torch.utils.data import Dataset

from seglab.data.base import PairedSamples, read_image

__all__ = ["IMAGE_SUFFIXES", "check_image", "find_images", "is_split", "prediction_dataset"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# Pillow modes of more than 8 bits per channel: converting them to L / RGB clips at 255
_DEEP_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N", "RGB;16", "RGBA;16")


def find_images(path: Path) -> list[Path]:
    """The image at ``path``, or the images directly inside the folder ``path``, sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input={str(path)!r}: no such file or folder")
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise ValueError(
            f"input={str(path)!r}: no image ({', '.join(IMAGE_SUFFIXES)}) in this folder"
        )
    return images


def check_image(path: Path) -> None:
    """Decode the whole image at ``path``: a ``ValueError`` naming the file if it is not a
    readable 8-bit image. The pixels are decoded, not only the header, so that a truncated or
    corrupt file fails before ``predict`` writes anything (decoding twice is the price)."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            img.load()
    except Exception as err:
        raise ValueError(
            f"input image {str(path)!r} could not be read ({err}); expected a readable "
            f"{'/'.join(s.lstrip('.') for s in IMAGE_SUFFIXES)} image"
        ) from err
    if mode in _DEEP_MODES:
        raise ValueError(
            f"input image {str(path)!r} has Pillow mode {mode!r} (more than 8 bits per "
            "channel); expected 8-bit images as the model was trained on: rescale it first"
        )


def is_split(datamodule: L.LightningDataModule, source: str | Path | None) -> bool:
    """Whether ``input=source`` names a split of the data module: a bare split name (``val``);
    ``./val`` is the folder of that name."""
    return source is not None and str(source) in datamodule.splits


def prediction_dataset(datamodule: L.LightningDataModule, source: str | Path | None) -> Dataset:
    """The dataset ``predict`` runs on for ``input=source``: the split ``source`` of
    ``datamodule`` (its eval view), or the image file / the images of the folder ``source`` as
    items of the data module's view. Every file is decoded here, so a file that is truncated,
    corrupt or not an 8-bit image fails before any prediction is written.

    Raises:
        ValueError: ``source`` is unset, a bare name that is no split, a folder without images,
            or names an unreadable or 16-bit image; the data module's view or channels are not
            ones image files can feed.
        FileNotFoundError: ``source`` is a path to nothing.
    """
    splits = list(datamodule.splits)
    if source is None or str(source) == "":
        raise ValueError(
            f"input={source!r}: expected an image file or a folder of images, or a split of "
            f"the dataset (one of {splits})"
        )
    if is_split(datamodule, source):
        return datamodule.dataset(str(source))
    path = Path(source).expanduser()
    if not path.exists() and len(path.parts) == 1 and not path.suffix:
        raise ValueError(
            f"input={str(source)!r}: no such file or folder, and no split of this dataset; "
            f"expected an image file, a folder of images, or input= one of {splits}"
        )
    images = find_images(path)
    for image in images:
        check_image(image)
    channels = datamodule.in_channels
    if channels not in (1, 3):
        raise ValueError(
            f"data.in_channels={channels}: image files are grey or RGB; predict on a split "
            f"(one of {splits})"
        )
    read = partial(read_image, dataset="input", mode="L" if channels == 1 else "RGB")
    return datamodule.view(PairedSamples([(image, None) for image in images], read_image=read))
