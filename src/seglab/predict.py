"""Prediction entry: ``predict(cfg)`` writes class-index PNGs and overlays for images on disk."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from rich.progress import track

from seglab.utils.checkpoint import config_from_checkpoint, load_weights
from seglab.utils.instantiate import build_datamodule, build_task
from seglab.utils.io import atomic_write_bytes
from seglab.utils.memory import tune_malloc

__all__ = ["IMAGE_SUFFIXES", "find_images", "predict"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def find_images(path: str | Path | None) -> list[Path]:
    """The image at ``path``, or the images directly inside the folder ``path``, sorted."""
    if path is None or str(path) == "":
        raise ValueError(f"input={path!r}: expected an image file or a folder of images")
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        images = sorted(
            p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if images:
            return images
        raise ValueError(
            f"input={str(path)!r}: no image ({', '.join(IMAGE_SUFFIXES)}) in this folder"
        )
    raise FileNotFoundError(f"input={str(path)!r}: no such file or folder")


# Pillow modes of more than 8 bits per channel: converting them to L / RGB clips at 255
_DEEP_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N", "RGB;16", "RGBA;16")


def _check_image(path: Path) -> None:
    """Open ``path``'s header: a ``ValueError`` naming the file if it is not an 8-bit image."""
    try:
        with Image.open(path) as img:
            mode = img.mode
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


def _read_image(path: Path, in_channels: int) -> np.ndarray:
    """(H, W, C) uint8 with C = ``in_channels``: colour images are converted to grey for
    1-channel models and grey ones repeated for 3-channel models, as the data modules do."""
    try:
        with Image.open(path) as img:
            img = img.convert("L" if in_channels == 1 else "RGB")
            array = np.asarray(img)
    except Exception as err:
        raise ValueError(f"input image {str(path)!r} could not be read ({err})") from err
    return array[..., None] if array.ndim == 2 else array


def _targets(images: list[Path], output: Path, overlay: bool) -> list[list[Path]]:
    """The files each image's prediction goes to; refuses outputs that would overwrite an input
    image or each other."""
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(
            f"output={str(output)!r}: is an existing file; expected a folder (made if missing)"
        )
    targets = [
        [output / f"{p.stem}.png", *([output / f"{p.stem}_overlay.png"] if overlay else [])]
        for p in images
    ]
    inputs = {p.resolve(): p for p in images}
    seen: dict[Path, Path] = {}
    for image, paths in zip(images, targets):
        for target in paths:
            key = target.resolve()
            if key in inputs:
                raise ValueError(
                    f"output={str(output)!r}: the prediction of {image} would overwrite the input "
                    f"image {inputs[key]}; expected an output folder apart from the input images"
                )
            if key in seen:
                raise ValueError(
                    f"input={str(image)!r} and {str(seen[key])!r} would both write {target}; "
                    "expected input images with distinct names (stems)"
                )
            seen[key] = image
    return targets


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.inference_mode()
def predict(cfg: DictConfig) -> tuple[list[Path], dict[str, Any]]:
    """Predict every image of ``cfg.input`` with ``cfg.ckpt_path``; write into ``cfg.output``.

    For ``name.ext`` it writes ``name.png`` (class indices as a palette PNG with the dataset's
    colours) and, with ``overlay=true``, ``name_overlay.png``. Each file is written to a temporary
    name and renamed, so an interrupted run leaves no half-written file.

    Instance checkpoints write COCO results instead: ``input`` names a split of the dataset and
    ``seglab.export.predict_instances`` writes its detections (RLE masks, the dataset's category
    ids) to ``output``.

    Returns the written paths and the objects built.
    """
    if cfg.get("malloc_tuning"):
        tune_malloc()
    from seglab.inference import predict_logits

    run_cfg, checkpoint = config_from_checkpoint(cfg)
    if OmegaConf.select(run_cfg, "model.task") == "instance":
        from seglab.export import predict_instances

        return predict_instances(cfg, run_cfg, checkpoint)
    images = find_images(OmegaConf.select(cfg, "input", throw_on_missing=True))
    datamodule = build_datamodule(run_cfg.data)
    if datamodule.in_channels not in (1, 3):
        raise ValueError(
            f"data.in_channels={datamodule.in_channels} (from ckpt_path={str(cfg.ckpt_path)!r}): "
            "expected 1 (grey) or 3 (RGB), the images predict reads"
        )
    overlay_on = bool(cfg.get("overlay", True))
    output = Path(OmegaConf.select(cfg, "output", throw_on_missing=True)).expanduser()
    targets = _targets(images, output, overlay_on)
    for path in images:  # a bad file fails the run before anything is written
        _check_image(path)
    model = build_task(run_cfg, datamodule)
    load_weights(model, checkpoint, f"ckpt_path={str(cfg.ckpt_path)!r}")
    device = _device(cfg.get("device", "auto"))
    net = model.net.to(device).eval()

    mean = np.asarray(datamodule.mean, np.float32) * 255
    std = np.asarray(datamodule.std, np.float32) * 255
    palette = [v for colour in datamodule.palette for v in colour]
    colours = np.asarray(datamodule.palette, np.uint8)
    inference = dict(cfg.get("inference") or {"mode": "whole"})
    mode = inference.pop("mode", "whole")
    output.mkdir(parents=True, exist_ok=True)

    written: list[Path] = []
    for path, (target, *overlay_target) in track(
        zip(images, targets), total=len(images), description="predict"
    ):
        image = _read_image(path, datamodule.in_channels)
        x = torch.from_numpy(((image - mean) / std).transpose(2, 0, 1).copy())[None].to(device)
        logits = predict_logits(net, x, mode=mode, **inference)
        if logits.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"inference.mode={mode}: the net maps {tuple(x.shape[-2:])} to "
                f"{tuple(logits.shape[-2:])}; use inference.mode=overlap_tile for unpadded nets"
            )
        labels = (
            logits.max(dim=1).indices[0].to(torch.uint8 if logits.shape[1] <= 256 else torch.int32)
        )
        labels = labels.cpu().numpy()
        mask = Image.fromarray(labels, mode="P" if labels.dtype == np.uint8 else None)
        if mask.mode == "P":
            mask.putpalette(palette + [0] * (768 - len(palette)))
        atomic_write_bytes(target, _png_bytes(mask))
        written.append(target)
        if overlay_target:
            alpha = float(cfg.get("overlay_alpha", 0.5))
            rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
            blend = (1 - alpha) * rgb + alpha * colours[labels.clip(0, len(colours) - 1)]
            overlay = Image.fromarray(blend.round().astype(np.uint8))
            atomic_write_bytes(overlay_target[0], _png_bytes(overlay))
            written.append(overlay_target[0])
    log.info("wrote %d files to %s", len(written), output)
    return written, {"cfg": run_cfg, "model": model, "datamodule": datamodule}
