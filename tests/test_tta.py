"""Test-time augmentation (``seglab.inference.tta_logits``): flipped and rescaled views run by any
inference mode, mapped back and averaged; and the ``inference.tta`` key of the semantic task,
eval and predict."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from support import compose_config
from torch import nn

from seglab.eval import evaluate
from seglab.inference import configure_inference, parse_tta, predict_logits, tta_logits, whole
from seglab.models.unet import UNet
from seglab.predict import predict
from seglab.tasks.semantic import SemanticSegmentationTask
from seglab.utils.instantiate import build_datamodule, build_task, saved_config

ALL_FLIPS = ["h", "v", "hv"]


def conv_net(symmetric: bool, in_channels: int = 3, num_classes: int = 4) -> nn.Module:
    """Two zero-padded 3x3 convolutions; with ``symmetric`` every kernel is made the mean of its
    four flips, so the net commutes with left-right and up-down flips (zero padding does too)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, num_classes, 3, padding=1),
    )
    if symmetric:
        with torch.no_grad():
            for conv in (net[0], net[2]):
                w = conv.weight
                w.copy_((w + w.flip(-1) + w.flip(-2) + w.flip(-2, -1)) / 4)
    return net.eval()


def test_flip_tta_of_a_flip_equivariant_net_equals_the_plain_result():
    image = torch.randn(2, 3, 13, 18)
    net = conv_net(symmetric=True)
    plain = whole(net, image)
    torch.testing.assert_close(tta_logits(net, image, flips=ALL_FLIPS), plain)
    probs = tta_logits(net, image, flips=["h"], average="probs")
    torch.testing.assert_close(probs.softmax(1), plain.softmax(1))
    # the flipped views are run and flipped back: an ordinary net gives the mean of both
    net = conv_net(symmetric=False)
    with torch.no_grad():
        plain, mirrored = net(image), net(image.flip(-1)).flip(-1)
    assert not torch.allclose(plain, mirrored, atol=1e-3)
    torch.testing.assert_close(tta_logits(net, image, flips=["h"]), (plain + mirrored) / 2)


def test_scale_tta_resizes_the_image_and_its_logits_back():
    image = torch.randn(1, 3, 13, 18)
    net = conv_net(symmetric=False)
    plain = whole(net, image)
    torch.testing.assert_close(tta_logits(net, image, scales=[1.0]), plain, rtol=0, atol=0)
    with torch.no_grad():  # 13 x 18 at 0.5: 7 x 9 (halves round up)
        small = net(F.interpolate(image, size=(7, 9), mode="bilinear", align_corners=False))
    back = F.interpolate(small, size=(13, 18), mode="bilinear", align_corners=False)
    torch.testing.assert_close(tta_logits(net, image, scales=[0.5, 1.0]), (plain + back) / 2)


def test_tta_wraps_slide_and_overlap_tile():
    image = torch.randn(2, 3, 21, 18)
    per_pixel = nn.Conv2d(3, 4, kernel_size=1).eval()  # sliding windows equal one whole pass
    tta = {"flips": ["h", "v"], "scales": [0.75, 1.25]}
    slid = predict_logits(
        per_pixel, image, mode="slide", crop_size=8, stride=5, num_classes=4, tta=tta
    )
    assert slid.shape == (2, 4, 21, 18)
    torch.testing.assert_close(slid, predict_logits(per_pixel, image, tta=tta))
    assert not torch.allclose(slid, whole(per_pixel, image), atol=1e-3)  # scales blur it

    torch.manual_seed(0)
    unpadded = UNet(in_channels=1, num_classes=2, base_channels=4, depth=2).eval()
    grey = torch.randn(1, 1, 30, 30)
    tiled = predict_logits(unpadded, grey, mode="overlap_tile", tile_size=60, tta=tta)
    assert tiled.shape == (1, 2, 30, 30) and torch.isfinite(tiled).all()
    with pytest.raises(ValueError, match=r"tta: .* needs logits at the input size .*overlap_tile"):
        tta_logits(unpadded, torch.randn(1, 1, 60, 60), flips=["h"])


def test_parse_tta_completes_and_names_the_bad_key():
    assert parse_tta(None) is None and parse_tta(False) is None
    assert parse_tta({"flips": ["h"]}) == {"flips": ["h"], "scales": [1.0], "average": "logits"}
    assert parse_tta(OmegaConf.create({"scales": [1, 0.5], "average": "probs"})) == {
        "flips": [],
        "scales": [1.0, 0.5],
        "average": "probs",
    }
    bad = [
        ({"flip": ["h"]}, r"inference.tta.flip: no such option; .* \['flips', 'scales', 'avera"),
        ({"flips": ["x"]}, r"inference.tta.flips=\['x'\]: 'x' is no flip; expected h"),
        ({"flips": "hv"}, r"inference.tta.flips='hv': expected a list"),
        ({"flips": ["h", "h"]}, r"inference.tta.flips=\['h', 'h'\]: each at most once"),
        ({"scales": [0.5, 0]}, r"inference.tta.scales=\[0.5, 0\]: expected a non-empty list of"),
        ({"scales": []}, r"inference.tta.scales=\[\]"),
        ({"scales": ["1"]}, r"inference.tta.scales=\['1'\]"),
        ({"average": "mean"}, r"inference.tta.average='mean': expected one of \['logits', 'p"),
        (True, r"inference.tta=True: expected null, false or a mapping"),
    ]
    for value, message in bad:
        with pytest.raises(ValueError, match=message):
            parse_tta(value)


def test_configure_inference_keeps_tta_across_modes_and_merges_keys():
    def run(inference=None, task="semantic"):
        return OmegaConf.create({"model": {"task": task, "num_classes": 2, "inference": inference}})

    unset = {"flips": None, "scales": None, "average": None}  # eval.yaml's and predict.yaml's
    cfg = run({"mode": "overlap_tile", "tile_size": 572, "tta": {"flips": ["h"]}})
    override = {"mode": "slide", "crop_size": 8, "stride": 4, "tta": {**unset, "scales": [0.5, 1]}}
    configure_inference(cfg, override)
    tta = {"flips": ["h"], "scales": [0.5, 1.0], "average": "logits"}
    expected = {"mode": "slide", "crop_size": 8, "stride": 4, "num_classes": 2, "tta": tta}
    assert OmegaConf.to_container(cfg.model.inference) == expected
    cfg = run({"mode": "whole", "tta": {"flips": ["h"]}})
    configure_inference(cfg, {"mode": None, "tta": False})
    assert cfg.model.inference == {"mode": "whole"}
    cfg = run()
    configure_inference(cfg, {"mode": None, "tta": unset})
    assert cfg.model.inference == {"mode": "whole"}
    cfg = run(task="instance")
    configure_inference(cfg, {"mode": None, "tta": unset})  # eval's defaults: nothing asked
    with pytest.raises(ValueError, match=r"inference.tta: model.task='instance' has no inference"):
        configure_inference(run(task="instance"), {"tta": {**unset, "flips": ["h"]}})
    with pytest.raises(ValueError, match=r"inference.tta.scales=\[-1\]"):
        configure_inference(run(), {"tta": {"scales": [-1]}})


def test_semantic_task_infers_with_its_configured_tta():
    net = conv_net(symmetric=False)
    tta = {"flips": ["h"], "scales": [0.5, 1.0]}
    task = SemanticSegmentationTask(
        net=net, num_classes=4, inference={"mode": "whole", "tta": tta}
    ).eval()
    image = torch.randn(2, 3, 16, 20)
    expected = tta_logits(net, image, **tta)
    torch.testing.assert_close(task.infer(image), expected)
    assert not torch.allclose(expected, whole(net, image), atol=1e-3)
    with pytest.raises(ValueError, match=r"model.inference.tta.flips=\['z'\]: 'z' is no flip"):
        SemanticSegmentationTask(net=net, num_classes=4, inference={"tta": {"flips": ["z"]}})


@pytest.fixture(scope="module")
def semantic_ckpt(tmp_path_factory):
    """An untrained tiny shapes model, saved with the config train would embed."""
    out = tmp_path_factory.mktemp("tta")
    cfg = compose_config("train", [], out)
    torch.manual_seed(0)
    model = build_task(cfg, build_datamodule(cfg.data))
    path = out / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "seglab_config": saved_config(cfg)}, path)
    return path


def test_eval_takes_inference_tta(semantic_ckpt, compose_cfg):
    overrides = ["inference.tta.flips=[h]", "inference.tta.scales=[0.5,1]"]
    cfg = compose_cfg("eval", [f"ckpt_path={semantic_ckpt}", "trainer.accelerator=cpu", *overrides])
    metrics, objects = evaluate(cfg)
    tta = {"flips": ["h"], "scales": [0.5, 1.0], "average": "logits"}
    assert objects["model"].inference == {"mode": "whole", "tta": tta}
    assert 0 <= metrics["val"]["val/miou"] <= 1
    off = compose_cfg("eval", ["ckpt_path=x.ckpt", "inference.tta=false"])
    configured = OmegaConf.create(
        {"model": {"task": "semantic", "num_classes": 6, "inference": {"tta": tta}}}
    )
    configure_inference(configured, off.inference)
    assert configured.model.inference == {"mode": "whole"}


def test_predict_takes_inference_tta_around_slide(semantic_ckpt, compose_cfg, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rgb = np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "a.png")
    overrides = [
        f"ckpt_path={semantic_ckpt}",
        f"input={folder}",
        f"output={tmp_path / 'out'}",
        "trainer.accelerator=cpu",
        "inference={mode: slide, crop_size: 16, stride: 12}",
        "inference.tta={flips: [h, v], scales: [0.75, 1.0]}",
    ]
    _, objects = predict(compose_cfg("predict", overrides))
    model, dm = objects["model"], objects["datamodule"]
    tta = {"flips": ["h", "v"], "scales": [0.75, 1.0], "average": "logits"}
    slide = {"mode": "slide", "crop_size": 16, "stride": 12, "num_classes": 6}
    assert model.inference == {**slide, "tta": tta}
    x = (rgb / np.float32(255) - np.asarray(dm.mean)) / np.asarray(dm.std)
    x = torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32))[None]
    logits = predict_logits(model.net.eval(), x, **slide, tta=tta)
    got = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    np.testing.assert_array_equal(got, logits.argmax(1)[0].numpy())
