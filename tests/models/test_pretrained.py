"""Pretrained backbones: torchvision's weights by name, read from its cache (``$TORCH_HOME``) with
no network, downloaded (hash-checked) only when asked, and frozen batch norm / stages.

The cached files are planted: random values under the real names and shapes. Tensors of more than
``_BROADCAST`` values repeat one random slice along their first dimension (a view, saved as that
slice only), which keeps VGG16's 528 MB file to a few MB; every other tensor is random throughout.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from support import SMALL_MASKRCNN
from torch import nn
from torchvision import models as tvm
from torchvision.ops import FrozenBatchNorm2d

import seglab.eval
import seglab.predict
from seglab.models import FCN, MaskRCNN, PSPNet, SegNet
from seglab.models.backbones import (
    cache_path,
    reads_pretrained_files,
    resnet,
    resolve_weights,
    skip_pretrained_files,
    weights_path,
)
from seglab.models.deeplab import DeepLabV3

pytestmark = pytest.mark.usefixtures("one_thread")

_BROADCAST = 100_000
LEGACY = Path(__file__).parents[1] / "fixtures" / "legacy"


def planted_state(builder: Callable[[], nn.Module]) -> dict[str, torch.Tensor]:
    """A state dict with the names, shapes and dtypes of ``builder()``'s, of random values."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        shapes = {k: (v.shape, v.dtype) for k, v in builder().state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, (shape, dtype) in shapes.items():
        if not dtype.is_floating_point:  # num_batches_tracked
            state[key] = torch.zeros(shape, dtype=dtype)
        elif shape.numel() > _BROADCAST:
            state[key] = torch.randn(shape[1:], generator=generator).expand(shape)
        else:
            state[key] = torch.randn(shape, generator=generator)
        if key.endswith("running_var"):
            state[key] = state[key].abs() + 0.5
    return state


def plant(entry: tvm.WeightsEnum, state: dict[str, torch.Tensor]) -> Path:
    """Save ``state`` where torch.hub caches ``entry``'s file under the current ``TORCH_HOME``."""
    path = cache_path(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def use_torch_home(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # torch.hub.set_dir would take precedence


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torchvision cache under ``tmp_path``."""
    use_torch_home(monkeypatch, tmp_path / "torch")
    return tmp_path / "torch"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """torch.hub's download and urllib's ``urlopen`` raise; returns the calls they got."""
    calls: list[tuple] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise AssertionError(f"the network was used: {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return calls


@pytest.fixture(scope="module")
def resnet50_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A torchvision cache holding a planted ``ResNet50_Weights.IMAGENET1K_V1`` file."""
    home = tmp_path_factory.mktemp("torch")
    state = planted_state(tvm.resnet50)
    entry = tvm.ResNet50_Weights.IMAGENET1K_V1
    path = home / "hub" / "checkpoints" / Path(entry.url).name
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return home, state


def test_names_resolve_to_torchvision_weights(torch_home: Path) -> None:
    r50 = tvm.ResNet50_Weights
    assert resolve_weights("resnet50", "imagenet") is r50.IMAGENET1K_V1
    assert resolve_weights("resnet50", "DEFAULT") is r50.DEFAULT is r50.IMAGENET1K_V2
    assert resolve_weights("resnet50", "ResNet50_Weights.IMAGENET1K_V2") is r50.IMAGENET1K_V2
    assert resolve_weights("vgg16", "imagenet") is tvm.VGG16_Weights.IMAGENET1K_V1
    assert resolve_weights("vgg16_bn", "imagenet") is tvm.VGG16_BN_Weights.IMAGENET1K_V1
    # the original ImageNet models, not DEFAULT where torchvision's newer recipe replaced them
    mobilenet = tvm.MobileNet_V3_Large_Weights
    assert resolve_weights("mobilenet_v3_large", "imagenet") is mobilenet.IMAGENET1K_V1
    assert mobilenet.DEFAULT is not mobilenet.IMAGENET1K_V1
    assert resolve_weights("resnet50", "weights/r50.pth") == Path("weights/r50.pth")
    assert resolve_weights("resnet50", "./DEFAULT") == Path("DEFAULT")
    assert weights_path("resnet101", "imagenet") == (
        torch_home / "hub" / "checkpoints" / Path(tvm.ResNet101_Weights.IMAGENET1K_V1.url).name
    )
    with pytest.raises(ValueError, match=r"backbone_weights='IMAGENET1K_V9'.*'IMAGENET1K_V2'"):
        resolve_weights("resnet50", "IMAGENET1K_V9")
    with pytest.raises(ValueError, match=r"not a torchvision weights name of resnet50"):
        resolve_weights("resnet50", "ResNet101_Weights.IMAGENET1K_V1")


def test_resnet_weights_load_from_the_cache_without_network(
    resnet50_home: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch, offline: list
) -> None:
    """The planted file's content does not match the hash in its name: a cached file is read as
    it is. DeepLabv3's default fine-tunes the backbone's batch norm, as the paper."""
    home, state = resnet50_home
    use_torch_home(monkeypatch, home)
    net = DeepLabV3(num_classes=2, backbone="resnet50", backbone_weights="imagenet")
    backbone = net.backbone
    assert torch.equal(backbone.conv1.weight, state["conv1.weight"])
    assert torch.equal(backbone.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])
    assert torch.equal(backbone.layer3[0].bn2.running_var, state["layer3.0.bn2.running_var"])
    assert isinstance(backbone.bn1, nn.BatchNorm2d)
    assert all(p.requires_grad for p in backbone.parameters())
    assert offline == []


def test_frozen_batch_norm_and_stages_take_no_gradient(
    resnet50_home: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch, offline: list
) -> None:
    home, state = resnet50_home
    use_torch_home(monkeypatch, home)
    net = PSPNet(
        num_classes=2,
        backbone="resnet50",
        backbone_weights="ResNet50_Weights.IMAGENET1K_V1",
        frozen_batch_norm=True,
        trainable_backbone_layers=3,
        aux=False,
    ).train()
    backbone = net.backbone
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d)]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    assert all(not list(m.parameters()) for m in norms)  # statistics and affine are buffers
    assert torch.equal(backbone.layer2[1].bn1.running_mean, state["layer2.1.bn1.running_mean"])
    assert torch.equal(backbone.layer2[1].bn1.weight, state["layer2.1.bn1.weight"])
    assert isinstance(net.classifier[1], nn.BatchNorm2d)  # the head's batch norm trains
    before = {k: v.clone() for k, v in backbone.state_dict().items()}

    net(torch.randn(2, 3, 32, 32)).sum().backward()

    for name, param in backbone.named_parameters():
        frozen = name.startswith(("conv1.", "layer1."))  # the stem and res2
        assert param.requires_grad is not frozen, name
        assert (param.grad is None) is frozen, name
    for key, value in backbone.state_dict().items():  # no statistics updated in train mode
        assert torch.equal(value, before[key]), key
    assert offline == []


def test_vgg16_weights_load_into_fcn(torch_home: Path, offline: list) -> None:
    """The one test that plants VGG16 (fc6 and fc7 come from its classifier)."""
    state = planted_state(tvm.vgg16)
    plant(tvm.VGG16_Weights.IMAGENET1K_V1, state)
    net = FCN(num_classes=2, variant="32s", backbone_weights="imagenet")
    assert torch.equal(net.to_pool3[0].weight, state["features.0.weight"])
    assert torch.equal(net.to_pool5[-3].bias, state["features.28.bias"])
    assert torch.equal(net.fc[0].weight, state["classifier.0.weight"].reshape(4096, 512, 7, 7))
    assert torch.equal(net.fc[3].bias, state["classifier.3.bias"])
    assert offline == []


def test_a_missing_file_names_path_and_url_and_nothing_is_downloaded(
    torch_home: Path, offline: list
) -> None:
    entry = tvm.VGG16_BN_Weights.IMAGENET1K_V1
    with pytest.raises(FileNotFoundError) as err:
        SegNet(num_classes=2, backbone_weights="imagenet")
    message = str(err.value)
    assert str(cache_path(entry)) in message and entry.url in message
    assert "model.net.backbone_weights='imagenet'" in message
    assert "model.net.download_weights=true" in message and "\n" not in message
    detector = tvm.ResNet18_Weights.IMAGENET1K_V1
    with pytest.raises(FileNotFoundError, match=re.escape(str(cache_path(detector)))):
        MaskRCNN(num_classes=2, backbone="resnet18", backbone_weights="IMAGENET1K_V1")
    assert offline == []
    assert not any(torch_home.rglob("*.pth"))
    cache_path(entry).parent.mkdir(parents=True)
    cache_path(entry).write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="is not a readable torch file") as err:
        SegNet(num_classes=2, backbone_weights="VGG16_BN_Weights.DEFAULT")
    assert entry.url in str(err.value) and "\n" not in str(err.value)


def test_a_checkpoints_net_is_rebuilt_without_its_pretrained_files(
    torch_home: Path, offline: list
) -> None:
    """eval and predict rebuild a net whose checkpoint replaces its weights: inside
    ``skip_pretrained_files`` no file is read, and the net is built as pretrained."""
    with skip_pretrained_files():
        net = MaskRCNN(
            num_classes=2,
            backbone="resnet18",
            backbone_weights="imagenet",
            weights=str(torch_home / "absent.pth"),
            **SMALL_MASKRCNN,
        )
        features = resnet("resnet50", weights="imagenet", frozen_batch_norm=True)
    assert isinstance(net.backbone.body.bn1, FrozenBatchNorm2d)
    trainable = {
        n.split(".")[0] for n, p in net.backbone.body.named_parameters() if p.requires_grad
    }
    assert trainable == {"layer2", "layer3", "layer4"}
    assert isinstance(features.bn1, FrozenBatchNorm2d)
    with pytest.raises(FileNotFoundError, match="model.net.download_weights=false"):
        resnet("resnet50", weights="imagenet")
    assert offline == []


def test_download_on_uses_torchvisions_hash_checked_download(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mask R-CNN's ResNet-18 FPN backbone: fetched into the cache with the hash in the file name
    to check, loaded, and set up as torchvision fine-tunes it (frozen BN, stem and res2)."""
    entry = tvm.ResNet18_Weights.IMAGENET1K_V1
    state = planted_state(tvm.resnet18)
    calls = []

    def download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True):
        calls.append((url, Path(dst), hash_prefix))
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    net = MaskRCNN(
        num_classes=2,
        backbone="resnet18",
        backbone_weights="imagenet",
        download_weights=True,
        **SMALL_MASKRCNN,
    )
    ((url, dst, hash_prefix),) = calls
    assert url == entry.url and dst == cache_path(entry)
    assert hash_prefix and f"-{hash_prefix}." in dst.name
    body = net.backbone.body
    assert torch.equal(body.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert torch.equal(body.bn1.running_var, state["bn1.running_var"])
    trainable = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}

    def unreachable(url: str, dst: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    vgg = tvm.VGG16_Weights.IMAGENET1K_V1
    with pytest.raises(OSError, match="downloading .* failed") as err:
        FCN(num_classes=2, backbone_weights="imagenet", download_weights=True)
    assert vgg.url in str(err.value) and str(cache_path(vgg)) in str(err.value)
    assert not cache_path(vgg).exists()


class _Built(Exception):
    """Raised by the spy in place of building the task."""


def test_eval_and_predict_build_the_checkpoints_net_without_pretrained_files(
    compose_cfg, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Their checkpoint's weights replace the pretrained ones: a checkpoint trained from
    ``imagenet`` is scored on a machine without torchvision's file."""
    reads: list[bool] = []

    def spy(*args: object, **kwargs: object) -> None:
        reads.append(reads_pretrained_files())
        raise _Built

    monkeypatch.setattr(seglab.eval, "build_task", spy)
    monkeypatch.setattr(seglab.predict, "build_task", spy)
    ckpt = f"ckpt_path={LEGACY / 'tiny_unet_shapes.ckpt'}"
    with pytest.raises(_Built):
        seglab.eval.evaluate(compose_cfg("eval", [ckpt, "split=val"]))
    with pytest.raises(_Built):
        seglab.predict.predict(
            compose_cfg("predict", [ckpt, "input=val", f"output={tmp_path / 'out'}"])
        )
    assert reads == [False, False]
    assert reads_pretrained_files()
