"""Shared fixtures: composing the project's configs in-process and the real sample data root.

Tests that need the sample datasets use the ``data_root`` fixture (or ``support.require_data``).
Without the data they skip with a reason; with ``SEGLAB_REQUIRE_DATA=1`` (set by ``.ci/run``) a
missing dataset fails instead. The small Mask R-CNN settings serve the instance and panoptic
tests. ``semantic_run`` and ``ddp_cpu_run`` are training runs trained once for the session, read
by the tests of several files (none of which writes into them).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from support import DDP_TINY, SMALL_MASKRCNN, compose_config, require_data, run_cli

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


@pytest.fixture(scope="session")
def semantic_run(tmp_path_factory) -> tuple[DictConfig, dict, dict]:
    """``train`` of the tiny default job (``support.QUICK_TRAIN``) for 2 epochs, with a test pass:
    its ``(cfg, metrics, objects)``. Read by the eval, predict, bad-input and resume tests."""
    from seglab.train import train  # here: a conftest import would load Lightning for every test

    out = tmp_path_factory.mktemp("semantic_run")
    metrics, objects = train(compose_config("train", ["trainer.max_epochs=2", "test=true"], out))
    return objects["cfg"], metrics, objects


@dataclass(frozen=True)
class DdpRun:
    """A finished ``python src/train.py`` under ``trainer=ddp_cpu``: its console and run folder."""

    result: subprocess.CompletedProcess
    logs: Path  # the paths.log_dir it was given
    run: Path  # its only run folder, logs/train/runs/<date>_<time>


@pytest.fixture(scope="session")
def ddp_cpu_run(tmp_path_factory) -> DdpRun:
    """``python src/train.py`` + ``support.DDP_TINY`` (2 CPU ranks over gloo), warnings shown.

    Trained once for the session: starting 2 ranks costs far more than the tiny job itself, and
    the console test, the run-folder and eval-under-DDP test and the torchrun comparison each
    only read this run (none of them writes into it).
    """
    logs = tmp_path_factory.mktemp("ddp_cpu_run")
    result = run_cli("train.py", *DDP_TINY, f"paths.log_dir={logs}", warnings=True)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((logs / "train" / "runs").iterdir())
    assert len(runs) == 1, f"one run folder expected, 2 ranks wrote {runs}"
    return DdpRun(result=result, logs=logs, run=runs[0])
