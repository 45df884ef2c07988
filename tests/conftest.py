"""Shared fixtures: composing the project's configs in-process and the real sample data root.

Tests that need the sample datasets use the ``data_root`` fixture (or ``support.require_data``).
Without the data they skip with a reason; with ``SEGLAB_REQUIRE_DATA=1`` (set by ``.ci/run``) a
missing dataset fails instead. The small Mask R-CNN of the instance tests is in
``tests/instance/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from support import compose_config, require_data

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
