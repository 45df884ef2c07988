"""The detectors resize images to the scale their dataset declares (``data.detector_scale``), so
that ``model=maskrcnn data=shapes`` trains 64-pixel scenes at 64 pixels, not at COCO's 800.
Config only: bench/memory.py measures the memory of every model x data=shapes job."""

import pytest
from omegaconf import OmegaConf

from seglab.utils.instantiate import build_datamodule

PAIRS = [
    ("maskrcnn", "shapes"),
    ("panoptic_fpn", "shapes"),
    ("maskrcnn", "coco"),
    ("panoptic_fpn", "coco_panoptic"),
    ("maskrcnn", "dsb2018"),
    ("panoptic_fpn", "cityscapes"),
]


def scale(cfg) -> tuple[object, object]:
    values = (cfg.model.net.min_size, cfg.model.net.max_size)
    return tuple(OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for v in values)


@pytest.mark.parametrize(("model", "data"), PAIRS)
def test_detector_takes_the_datasets_scale(compose_cfg, model, data):
    cfg = compose_cfg(overrides=[f"model={model}", f"data={data}"], quick=False)
    declared = OmegaConf.to_container(cfg.data.detector_scale, resolve=True)
    assert scale(cfg) == (declared["min_size"], declared["max_size"])
    if data == "shapes":  # the scenes at their own size, whatever it is set to
        assert scale(cfg) == (cfg.data.image_size, cfg.data.image_size)
        cfg = compose_cfg(overrides=[f"model={model}", f"data={data}", "data.image_size=48"])
        assert scale(cfg) == (48, 48)
        assert build_datamodule(cfg.data).detector_scale == {"min_size": 48, "max_size": 48}
        # up to 100 masks an image at evaluation: smaller detector batches than the semantic ones
        semantic = compose_cfg(overrides=["model=unet_small"], quick=False).data
        cfg = compose_cfg(overrides=[f"model={model}"], quick=False)
        assert cfg.data.batch_size < semantic.batch_size
        assert cfg.data.eval_batch_size < semantic.eval_batch_size
    elif data.startswith("coco"):  # the papers' COCO setting
        assert scale(cfg) == (800, 1333)
    elif data == "cityscapes":  # Mask R-CNN's: short side 800..1024, evaluated at 1024
        min_size, max_size = scale(cfg)
        assert (min(min_size), min_size[-1], max_size) == (800, 1024, 2048)


def test_user_override_and_undeclared_data(compose_cfg):
    cfg = compose_cfg(overrides=["model=maskrcnn", "model.net.min_size=96"])
    assert scale(cfg)[0] == 96
    # a data config that declares no scale (here: one without an instance view) gets COCO's
    cfg = compose_cfg(overrides=["model=maskrcnn", "data=voc"], quick=False)
    assert "detector_scale" not in cfg.data and scale(cfg) == (800, 1333)
