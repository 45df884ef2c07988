"""Prediction entry: ``predict(cfg)`` runs a checkpoint through ``Trainer.predict`` on an image,
a folder of images or a split of its dataset, and writes what the task predicts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from seglab.callbacks.writers import (
    CocoPanopticWriter,
    CocoResultsWriter,
    PredictionWriter,
    SemanticMaskWriter,
    output_stem,
)
from seglab.data.prediction import is_split
from seglab.inference import configure_inference
from seglab.models.backbones import skip_pretrained_files
from seglab.utils.checkpoint import config_from_checkpoint, load_weights
from seglab.utils.instantiate import build_datamodule, build_task, build_trainer
from seglab.utils.memory import tune_malloc

__all__ = ["predict"]

log = logging.getLogger(__name__)

# the retired device= option -> the trainer.accelerator it stands for
_ACCELERATORS = {"auto": "auto", "cpu": "cpu", "cuda": "gpu", "gpu": "gpu", "mps": "mps"}


def predict(cfg: DictConfig) -> tuple[list[Path], dict[str, Any]]:
    """Predict ``cfg.input`` with ``cfg.ckpt_path`` and write the predictions under
    ``cfg.output``.

    ``input`` is an image file, a folder of images, or a split of the checkpoint's dataset
    (``data=...`` chooses another); images are read, transformed and normalised as that dataset
    reads its own (``seglab.data.prediction``). The trainer is built from the ``trainer`` group
    and the inference from the checkpoint's model, ``inference.*`` overriding it
    (``seglab.inference.configure_inference``). The writer depends on the task:

    - semantic: ``<stem>.png`` (class indices as a palette PNG with the dataset's colours) and,
      with ``overlay=true``, ``<stem>_overlay.png`` per image, in the folder ``output``;
    - instance: COCO results JSON with the dataset's category ids, ``output`` when it ends in
      ``.json``, else ``<output>/<split or input stem>_results.json``; for image files also
      ``..._images.json``, the images and categories ``pycocotools.COCO`` needs to read it;
    - panoptic: COCO panoptic output in the folder ``output``: ``<split or input stem>_panoptic
      .json`` and a PNG per image in ``<...>_panoptic/`` (the dataset's category ids), and with
      ``overlay=true`` an overlay per image in ``<...>_panoptic_overlay/``.

    Every input image and output path is checked before anything is written, and each file is
    written to a temporary name and renamed, so an interrupted run leaves no half-written file.

    Returns the written paths and the objects built.
    """
    if cfg.get("malloc_tuning"):
        tune_malloc()
    run_cfg, checkpoint = config_from_checkpoint(cfg)
    _accelerator_from_device(cfg, run_cfg)
    configure_inference(run_cfg, cfg.get("inference"))
    datamodule = build_datamodule(run_cfg.data)
    source = OmegaConf.select(cfg, "input", throw_on_missing=True)
    datamodule.predict_input = None if source is None else str(source)
    dataset = datamodule.predict_dataset()  # decodes every input: bad input fails here
    split = is_split(datamodule, source)
    writer = _writer(cfg, datamodule, str(source), split)
    if not split:
        writer.plan([str(path) for path in dataset.images])
    with skip_pretrained_files():  # the checkpoint's weights replace them
        model = build_task(run_cfg, datamodule)
    load_weights(model, checkpoint, f"ckpt_path={str(cfg.ckpt_path)!r}")
    del checkpoint
    trainer = build_trainer(run_cfg, logger=False, callbacks=[writer])
    trainer.predict(model, datamodule=datamodule, return_predictions=False)
    log.info("wrote %d files to %s", len(writer.written), cfg.output)
    objects = {"cfg": run_cfg, "model": model, "datamodule": datamodule, "trainer": trainer}
    return writer.written, objects


def _accelerator_from_device(cfg: DictConfig, run_cfg: DictConfig) -> None:
    """``device=`` of earlier versions, taken as the ``trainer.accelerator`` it stands for."""
    device = cfg.get("device")
    if device is None:
        return
    if device not in _ACCELERATORS:
        raise ValueError(
            f"device={device!r}: predict now runs on the trainer group as training does; use "
            "trainer.accelerator=cpu|gpu|auto (and trainer.devices=[N] for GPU N)"
        )
    log.warning(
        "device=%s is retired: predict runs on the trainer group as training does; taking it as "
        "trainer.accelerator=%s",
        device,
        _ACCELERATORS[device],
    )
    OmegaConf.update(run_cfg, "trainer.accelerator", _ACCELERATORS[device])


def _writer(
    cfg: DictConfig, datamodule: L.LightningDataModule, source: str, split: bool
) -> PredictionWriter:
    """The prediction writer of the data module's task view."""
    output = Path(OmegaConf.select(cfg, "output", throw_on_missing=True)).expanduser()
    if datamodule.task == "semantic":
        return SemanticMaskWriter(
            output=output,
            palette=datamodule.palette,
            mean=datamodule.mean,
            std=datamodule.std,
            overlay=bool(cfg.get("overlay", True)),
            alpha=float(cfg.get("overlay_alpha", 0.5)),
        )
    if datamodule.task == "instance":
        stem = source if split else output_stem(str(Path(source).expanduser().resolve()))
        path = output if output.suffix == ".json" else output / f"{stem}_results.json"
        images = (
            None if split else path.with_name(f"{path.stem.removesuffix('_results')}_images.json")
        )
        return CocoResultsWriter(
            path=path,
            label_to_category=_label_to_category(datamodule, split),
            images_path=images,
            class_names=datamodule.class_names,
        )
    if datamodule.task == "panoptic":
        return CocoPanopticWriter(
            output=output,
            stem=f"{source if split else output_stem(str(Path(source).expanduser()))}_panoptic",
            category_ids=datamodule.category_ids,
            class_names=datamodule.class_names,
            num_things=datamodule.num_things,
            palette=datamodule.palette,
            overlay=bool(cfg.get("overlay", True)),
            alpha=float(cfg.get("overlay_alpha", 0.5)),
        )
    raise ValueError(
        f"data.task={datamodule.task!r}: predict writes semantic, instance and panoptic "
        "predictions; no writer for this view"
    )


def _label_to_category(datamodule: L.LightningDataModule, split: bool) -> dict[int, int] | None:
    """The dataset's category ids (COCO-format data), or None: the labels themselves.

    For image files they are read from the dataset's annotation file where it is present; a
    COCO-trained checkpoint predicts on one's own images without the dataset at hand."""
    try:
        return getattr(datamodule, "label_to_category", None)
    except FileNotFoundError as err:
        if split:
            raise
        log.warning("category ids are the model's labels 1..K-1: %s", err)
        return None
