"""Shared fixtures: composing the project's configs in-process and the real sample data root.

Tests that need the sample datasets use the ``data_root`` fixture (or ``support.require_data``).
Without the data they skip with a reason; with ``SEGLAB_REQUIRE_DATA=1`` (set by ``.ci/run``) a
missing dataset fails instead. The small Mask R-CNN settings serve the instance and panoptic
tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from support import SMALL_MASKRCNN, compose_config, require_data

import seglab  # noqa: F401  (registers the config resolvers)

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def data_root() -> Path:
    """``$SEGLAB_DATA_DIR`` as a Path (skips, or fails under SEGLAB_REQUIRE_DATA=1, if unset)."""
    return require_data()


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """``compose_config`` with outputs under the test's ``tmp_path``."""

    def _compose(
        name: str = "train", overrides: list[str] | None = None, quick: bool = True
    ) -> DictConfig:
        return compose_config(name, overrides, tmp_path, quick)

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module: on a shared 2-core machine, two threads contend badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_maskrcnn() -> dict[str, int]:
    """``MaskRCNN`` keyword arguments of a small, fast net (use with ``backbone="resnet18"``):
    the detection contract does not depend on the input size or the proposal counts."""
    return dict(SMALL_MASKRCNN)


@pytest.fixture(scope="session")
def small_maskrcnn_overrides() -> list[str]:
    """``small_maskrcnn`` on ResNet-18 as ``model=maskrcnn`` command-line overrides."""
    return ["model.net.backbone=resnet18"] + [
        f"model.net.{key}={value}" for key, value in SMALL_MASKRCNN.items()
    ]


@pytest.fixture(scope="session")
def untrained_but_scored() -> list[str]:
    """Overrides that keep a barely trained net's low-score detections and faint masks, so that
    its AP is not trivially 0 (a step or two scores objects far below the paper's thresholds)."""
    return ["optimizer.lr=0.0003", "model.net.box_score_thresh=0.0", "model.mask_threshold=0.02"]
