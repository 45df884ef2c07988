"""predict through Trainer.predict and the prediction writers; inference settings in eval and
predict. Checkpoints are untrained tiny models saved with the config train would embed."""

import json
import logging

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from pycocotools.coco import COCO
from support import compose_config

from seglab.callbacks.writers import output_stem
from seglab.eval import evaluate
from seglab.inference import configure_inference, predict_logits
from seglab.predict import predict
from seglab.utils.instantiate import build_datamodule, build_task, saved_config

MASK_RCNN = [
    "model=maskrcnn",
    "model.net.backbone=resnet18",
    "model.net.min_size=64",
    "model.net.max_size=64",
    "model.net.rpn_pre_nms_top_n_test=50",
    "model.net.rpn_post_nms_top_n_test=20",
    "model.net.box_detections_per_img=10",
    # an untrained net scores every box low: keep them, so the results are not empty
    "model.net.box_score_thresh=0.0",
    "model.mask_threshold=0.02",
]


def save_checkpoint(out, overrides, quick=True):
    """An untrained model of ``compose_config("train", overrides)`` as train would save it."""
    cfg = compose_config("train", overrides, out, quick)
    torch.manual_seed(0)
    model = build_task(cfg, build_datamodule(cfg.data))
    path = out / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "seglab_config": saved_config(cfg)}, path)
    return path


def run_predict(compose_cfg, ckpt, source, output, *extra):
    overrides = [f"ckpt_path={ckpt}", f"input={source}", f"output={output}"]
    return predict(compose_cfg("predict", [*overrides, "trainer.accelerator=cpu", *extra]))


def save_images(folder, sizes, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, size in sizes.items():
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / name)


def forward_classes(model, image):
    """The task's own forward on one normalised image (C, H, W): class map (H, W)."""
    with torch.no_grad():
        return model.eval()(image[None]).argmax(1)[0].numpy()


@pytest.fixture(scope="module")
def semantic_ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("semantic"), [])


@pytest.fixture(scope="module")
def instance_ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("instance"), MASK_RCNN)


# ------------------------------------------------------------------------------------ semantic


def test_semantic_folder_writes_forward_classes_and_overlays(semantic_ckpt, compose_cfg, tmp_path):
    images, out = tmp_path / "in", tmp_path / "out"
    save_images(images, {"a.png": (32, 32), "b.jpg": (27, 41)})
    (images / "notes.txt").write_text("not an image")
    written, objects = run_predict(compose_cfg, semantic_ckpt, images, out)
    assert sorted(p.name for p in written) == ["a.png", "a_overlay.png", "b.png", "b_overlay.png"]
    dm, model = objects["datamodule"], objects["model"]
    mean, std = np.asarray(dm.mean) * 255, np.asarray(dm.std) * 255
    colours = np.asarray(dm.palette, np.uint8)
    for name in ("a.png", "b.jpg"):
        rgb = np.asarray(Image.open(images / name).convert("RGB"))
        x = torch.from_numpy(((rgb - mean) / std).transpose(2, 0, 1).astype(np.float32))
        expected = forward_classes(model, x)
        mask = Image.open(out / f"{name[0]}.png")
        assert mask.mode == "P" and mask.size == rgb.shape[1::-1]
        assert mask.getpalette()[: colours.size] == colours.ravel().tolist()
        np.testing.assert_array_equal(np.asarray(mask), expected)
        blend = (0.5 * rgb + 0.5 * colours[expected]).round().astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{name[0]}_overlay.png")), blend)
    assert not list(out.glob(".*"))


def test_semantic_split_writes_one_mask_per_item(semantic_ckpt, compose_cfg, tmp_path):
    out = tmp_path / "out"
    written, objects = run_predict(compose_cfg, semantic_ckpt, "val", out, "overlay=false")
    dataset = objects["datamodule"].dataset("val")
    assert sorted(p.name for p in written) == [f"{i:06d}.png" for i in range(len(dataset))]
    for i in (0, len(dataset) - 1):
        item = dataset[i]
        got = np.asarray(Image.open(out / f"{output_stem(item['name'])}.png"))
        np.testing.assert_array_equal(got, forward_classes(objects["model"], item["image"]))


def test_output_stems_of_pages_are_distinct_and_safe():
    stems = [output_stem(f"/x/test-volume.tif[page {i}]") for i in (3, 13)]
    assert stems == ["test-volume_page_3", "test-volume_page_13"]
    assert output_stem("/data/a.b.png") == "a.b" and output_stem("shapes/val/000007") == "000007"


def test_device_is_taken_as_trainer_accelerator(semantic_ckpt, compose_cfg, tmp_path, caplog):
    save_images(tmp_path / "in", {"a.png": (16, 16)})
    with caplog.at_level(logging.WARNING, logger="seglab.predict"):
        _, objects = run_predict(
            compose_cfg, semantic_ckpt, tmp_path / "in", tmp_path / "o", "device=cpu"
        )
    assert "device=cpu is retired" in caplog.text and "trainer.accelerator=cpu" in caplog.text
    assert objects["cfg"].trainer.accelerator == "cpu"
    with pytest.raises(ValueError, match=r"device='tpu:3': .* use trainer.accelerator="):
        run_predict(compose_cfg, semantic_ckpt, tmp_path / "in", tmp_path / "p", "device=tpu:3")


# ------------------------------------------------------------------------------------ instance


def test_instance_folder_writes_coco_results_and_images(instance_ckpt, compose_cfg, tmp_path):
    images, out = tmp_path / "in", tmp_path / "out"
    save_images(images, {"a.png": (40, 48), "b.png": (64, 56)})
    written, objects = run_predict(compose_cfg, instance_ckpt, images, out)
    assert written == [out / "in_results.json", out / "in_images.json"]
    gt = COCO(str(out / "in_images.json"))
    assert [(i["id"], i["file_name"], i["height"], i["width"]) for i in gt.dataset["images"]] == [
        (0, str(images / "a.png"), 40, 48),
        (1, str(images / "b.png"), 64, 56),
    ]
    assert gt.dataset["categories"] == [
        {"id": k, "name": n} for k, n in enumerate(objects["datamodule"].class_names) if k
    ]
    results = json.loads((out / "in_results.json").read_text())
    assert results, "an untrained net with box_score_thresh=0 still detects"
    loaded = gt.loadRes(str(out / "in_results.json"))
    for ann in loaded.dataset["annotations"]:
        info = gt.imgs[ann["image_id"]]
        assert ann["segmentation"]["size"] == [info["height"], info["width"]]


def write_coco_split(root, *, n=3, size=48, category_id=7):
    """``root/val/*.png`` and ``root/val.json``: one bright square per image, category 7."""
    (root / "val").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(n):
        pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        x, y, w = 8 + 4 * i, 10, 20
        pixels[y : y + w, x : x + w] = 220
        Image.fromarray(pixels).save(root / "val" / f"{i}.png")
        images.append({"id": 100 + i, "file_name": f"{i}.png", "height": size, "width": size})
        polygon = [x, y, x + w, y, x + w, y + w, x, y + w]
        annotations.append(
            {
                "id": 1 + i,
                "image_id": 100 + i,
                "category_id": category_id,
                "segmentation": [polygon],
                "bbox": [x, y, w, w],
                "area": w * w,
                "iscrowd": 0,
            }
        )
    categories = [{"id": category_id, "name": "square"}]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (root / "val.json").write_text(json.dumps(coco))


def test_instance_split_writes_results_with_the_dataset_ids(compose_cfg, tmp_path):
    root = tmp_path / "coco"
    write_coco_split(root)
    data = [
        "data=coco",
        f"data.data_dir={root}",
        # both splits replace COCO 2017's; train is never read here
        "data.split_files={train: {images: val, annotations: val.json}, val: {images: val, "
        "annotations: val.json}}",
        "data.class_names=null",
        "data.num_classes=2",
        "data.num_workers=0",
    ]
    ckpt = save_checkpoint(tmp_path, [*MASK_RCNN, *data], quick=False)
    written, _ = run_predict(compose_cfg, ckpt, "val", tmp_path / "out")
    assert written == [tmp_path / "out" / "val_results.json"]
    results = json.loads(written[0].read_text())
    assert results and {r["category_id"] for r in results} == {7}
    assert {r["image_id"] for r in results} <= {100, 101, 102}
    COCO(str(root / "val.json")).loadRes(str(written[0]))


def test_inference_override_refused_for_instance_checkpoints(instance_ckpt, compose_cfg, tmp_path):
    with pytest.raises(ValueError, match=r"inference.mode: model.task='instance' has no inference"):
        run_predict(compose_cfg, instance_ckpt, "val", tmp_path / "o", "inference.mode=whole")


# ----------------------------------------------------------------------------------- inference

SPELLINGS = {
    "keys": ["inference.mode=slide", "inference.crop_size=16", "inference.stride=12"],
    "mapping": ["inference={mode: slide, crop_size: 16, stride: 12}"],
}
SLIDE = {"mode": "slide", "crop_size": 16, "stride": 12, "num_classes": 6}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_predict_inference_override(spelling, semantic_ckpt, compose_cfg, tmp_path):
    save_images(tmp_path / "in", {"a.png": (24, 40)})
    _, objects = run_predict(
        compose_cfg, semantic_ckpt, tmp_path / "in", tmp_path / "out", *SPELLINGS[spelling]
    )
    model, dm = objects["model"], objects["datamodule"]
    assert model.inference == SLIDE
    rgb = np.asarray(Image.open(tmp_path / "in" / "a.png"), np.float32) / 255
    x = (rgb - np.asarray(dm.mean)) / np.asarray(dm.std)
    x = torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32))[None]
    with torch.no_grad():
        logits = predict_logits(model.net.eval(), x, **SLIDE)
    got = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    np.testing.assert_array_equal(got, logits.argmax(1)[0].numpy())


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_eval_inference_override(spelling, semantic_ckpt, compose_cfg):
    overrides = [f"ckpt_path={semantic_ckpt}", "trainer.accelerator=cpu", *SPELLINGS[spelling]]
    metrics, objects = evaluate(compose_cfg("eval", overrides))
    assert objects["model"].inference == SLIDE
    assert 0 <= metrics["val"]["val/miou"] <= 1


def test_configure_inference_starts_from_the_checkpoint_model():
    def run(inference=None, task="semantic"):
        model = {"task": task, "num_classes": 2, "inference": inference}
        return OmegaConf.create({"model": model})

    tile = {"mode": "overlap_tile", "tile_size": 572}
    cfg = run(tile)
    configure_inference(cfg, {"mode": None, "tile_size": None})
    assert cfg.model.inference == tile  # the experiment's setting, not whole-image
    cfg = run(tile)
    configure_inference(cfg, {"tile_size": 188, "batch_size": 4})
    assert cfg.model.inference == {**tile, "tile_size": 188, "batch_size": 4}
    cfg = run(tile)
    configure_inference(cfg, {"mode": "whole"})
    assert cfg.model.inference == {"mode": "whole"}  # a new mode drops the old mode's options
    cfg = run()
    configure_inference(cfg, None)
    assert cfg.model.inference == {"mode": "whole"}
    with pytest.raises(ValueError, match=r"inference.tile_size: inference.mode=slide takes no"):
        configure_inference(run(), {"mode": "slide", "crop_size": 8, "stride": 4, "tile_size": 8})
    with pytest.raises(ValueError, match=r"inference.mode=overlap_tile needs inference.tile_size"):
        configure_inference(run(), {"mode": "overlap_tile"})
    with pytest.raises(ValueError, match=r"inference.mode='tiles': expected one of"):
        configure_inference(run(), {"mode": "tiles"})
    cfg = run(task="instance")
    configure_inference(cfg, {"mode": None})
    assert "inference" not in cfg.model or cfg.model.inference is None
