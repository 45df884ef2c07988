"""data=dsb2018 instance view: one nucleus target per mask file, on the real sample."""

import numpy as np
import pytest
import torch
from PIL import Image
from support import require_data

from seglab.data.dsb2018 import DSB2018DataModule, load_dsb2018_instances
from seglab.train import train
from seglab.utils.instantiate import build_datamodule

CROWDED = "0402a81e75262469925ea893b6706183832e85324f7b1e08e634129f5d522cdd"  # 125 nuclei
OVERLAP = "1609b1b8480ee52652a644403b3f7d5511410a016750aa3b9a4c8ddb3e893e8e"  # 2 masks share 1 px
SMALL = [
    "model.net.backbone=resnet18",
    "model.net.min_size=64",
    "model.net.max_size=64",
    "model.net.rpn_pre_nms_top_n_train=200",
    "model.net.rpn_post_nms_top_n_train=100",
    "model.net.rpn_pre_nms_top_n_test=100",
    "model.net.rpn_post_nms_top_n_test=50",
    "model.net.box_batch_size_per_image=64",
    "model.net.box_detections_per_img=20",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two threads contend badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def dsb_dir():
    return require_data("dsb2018_nuclei")


def find(dataset, image_id):
    return dataset[dataset.ids.index(image_id)]


@pytest.mark.realdata
def test_one_target_per_mask_file(dsb_dir):
    dm = DSB2018DataModule(data_dir=str(dsb_dir), task="instance", val_fraction=0.0)
    dataset = dm.dataset("train")
    image, target = find(dataset, CROWDED)
    instances = load_dsb2018_instances(dm.folder, CROWDED)
    assert image.shape == (3, 260, 347) and image.min() >= 0 and image.max() <= 1
    assert target["labels"].tolist() == [1] * 125 and target["iscrowd"].sum() == 0
    masks = target["masks"].numpy()
    assert masks.shape == (125, 260, 347)
    files = sorted((dm.folder / CROWDED / "masks").glob("*.png"))
    for k in (0, 60, 124):
        np.testing.assert_array_equal(masks[k], np.asarray(Image.open(files[k])) > 0)
    np.testing.assert_array_equal(masks.any(0), instances > 0)
    for box, mask in zip(target["boxes"][:10], masks[:10]):
        ys, xs = np.nonzero(mask)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    _, target = find(dataset, OVERLAP)
    assert len(target["labels"]) == len(list((dm.folder / OVERLAP / "masks").glob("*.png")))


@pytest.mark.realdata
def test_hydra_instance_view_and_fast_dev_run(compose_cfg, dsb_dir):
    overrides = [
        "model=maskrcnn",
        "data=dsb2018",
        f"data.data_dir={dsb_dir}",
        "data.batch_size=2",
        "data.crop_size=96",
        "trainer.accelerator=cpu",
        "debug=fast_dev_run",
        *SMALL,
    ]
    cfg = compose_cfg(overrides=overrides, quick=False)
    assert cfg.data.task == "instance" and cfg.data.num_classes == 2
    dm = build_datamodule(cfg.data)
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert [tuple(i.shape) for i in images] == [(3, 96, 96)] * 2  # crops with their nuclei
    for target in targets:
        assert len(target["labels"]) == len(target["masks"]) == len(target["boxes"])
        assert (target["boxes"][:, 2:] > target["boxes"][:, :2]).all()
    with pytest.raises(ValueError, match="weight maps belong to the semantic view"):
        DSB2018DataModule(data_dir=str(dsb_dir), task="instance", weight_map=True)
    metrics, _ = train(cfg)
    assert np.isfinite(metrics["fit"]["train/loss_mask"])
    assert "val/map_segm" in metrics["val"]
