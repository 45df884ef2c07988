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

from seglab.utils.checkpoint import config_from_checkpoint
from seglab.utils.instantiate import build_datamodule, build_task
from seglab.utils.io import atomic_write_bytes

__all__ = ["IMAGE_SUFFIXES", "find_images", "predict"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def find_images(path: str | Path) -> list[Path]:
    """The image at ``path``, or the images directly inside the folder ``path``, sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            return images
        raise ValueError(
            f"input={str(path)!r}: no image ({', '.join(IMAGE_SUFFIXES)}) in this folder"
        )
    raise FileNotFoundError(f"input={str(path)!r}: no such file or folder")


def _read_image(path: Path, in_channels: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img = img.convert("L" if in_channels == 1 else "RGB")
            array = np.asarray(img)
    except Exception as err:
        raise ValueError(f"input image {str(path)!r} could not be read ({err})") from err
    return array[..., None] if array.ndim == 2 else array


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
    from seglab.inference import predict_logits

    run_cfg, checkpoint = config_from_checkpoint(cfg)
    if OmegaConf.select(run_cfg, "model.task") == "instance":
        from seglab.export import predict_instances

        return predict_instances(cfg, run_cfg, checkpoint)
    images = find_images(cfg.input)
    datamodule = build_datamodule(run_cfg.data)
    model = build_task(run_cfg, datamodule)
    model.load_state_dict(checkpoint["state_dict"])
    device = _device(cfg.get("device", "auto"))
    net = model.net.to(device).eval()

    mean = np.asarray(datamodule.mean, np.float32) * 255
    std = np.asarray(datamodule.std, np.float32) * 255
    palette = [v for colour in datamodule.palette for v in colour]
    colours = np.asarray(datamodule.palette, np.uint8)
    inference = dict(cfg.get("inference") or {"mode": "whole"})
    mode = inference.pop("mode", "whole")
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)

    written: list[Path] = []
    for path in track(images, description="predict"):
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
        target = output / f"{path.stem}.png"
        atomic_write_bytes(target, _png_bytes(mask))
        written.append(target)
        if cfg.get("overlay", True):
            alpha = float(cfg.get("overlay_alpha", 0.5))
            rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
            blend = (1 - alpha) * rgb + alpha * colours[labels.clip(0, len(colours) - 1)]
            overlay = Image.fromarray(blend.round().astype(np.uint8))
            target = output / f"{path.stem}_overlay.png"
            atomic_write_bytes(target, _png_bytes(overlay))
            written.append(target)
    log.info("wrote %d files to %s", len(written), output)
    return written, {"cfg": run_cfg, "model": model, "datamodule": datamodule}
