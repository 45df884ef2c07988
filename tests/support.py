"""Helpers the test files import (``from support import require_data``): composing the project's
configs in-process and finding the real sample data.

Not in a conftest.py: pytest imports every conftest.py outside a package as the module
``conftest``, so ``from conftest import ...`` would find whichever was imported last.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig

from seglab.utils.config import compose_config as seglab_compose

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def require_data(*parts: str) -> Path:
    """Path of a sample dataset under ``$SEGLAB_DATA_DIR``; skip (or fail in CI) when absent."""
    root = os.environ.get("SEGLAB_DATA_DIR")
    folder = Path(root, *parts) if root else None
    if folder is None or not folder.exists():
        reason = (
            f"sample data {'/'.join(parts)!r} not found under SEGLAB_DATA_DIR={root!r} "
            "(see ../shared/data/README.md)"
        )
        if os.environ.get("SEGLAB_REQUIRE_DATA") == "1":
            pytest.fail(f"SEGLAB_REQUIRE_DATA=1 but {reason}")
        pytest.skip(reason)
    return folder.resolve()  # absolute: tests link to it from temporary folders


# MaskRCNN / PanopticFPN keyword arguments of a small, fast net (with backbone="resnet18")
SMALL_MASKRCNN = {
    "min_size": 64,
    "max_size": 64,
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50,
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 64,
    "box_detections_per_img": 20,
}

QUICK_TRAIN = [
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "data.num_samples={train: 8, val: 5, test: 3}",
    "data.image_size=32",
    "data.batch_size=4",
    "logger=csv",
]


# The tiny default job under 2 CPU ranks: `python src/train.py` with these overrides (and a
# paths.log_dir) is what the session's shared 2-process run (conftest ``ddp_cpu_run``) trained.
# 5 validation scenes: the ranks get 3 and 2, so an uneven split is exercised too.
DDP_TINY = [
    "trainer=ddp_cpu",
    "trainer.max_epochs=1",
    "data.num_samples={train: 8, val: 5, test: 3}",
    "data.image_size=32",
    "data.batch_size=4",
]


def compose_config(
    name: str, overrides: list[str] | None, output_dir: Path, quick: bool = True
) -> DictConfig:
    """Compose ``conf/<name>.yaml`` with outputs under ``output_dir`` and the Hydra context set.

    ``quick`` (train only) starts from a small, fast, single-process CPU setting.
    """
    quick_train = QUICK_TRAIN if quick and name == "train" else []
    return seglab_compose(name, [*quick_train, *(overrides or [])], output_dir)


def run_cli(
    script: str, *args: str, timeout: int = 600, warnings: bool = False
) -> subprocess.CompletedProcess:
    """Run ``src/<script>`` with ``args`` in a fresh process (one OpenMP thread); Python warnings
    off unless ``warnings`` (for the tests that check there are none)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    if warnings:
        env.pop("PYTHONWARNINGS")
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )
