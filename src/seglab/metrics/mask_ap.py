"""COCO box and mask AP / AR, exact under DDP, with pycocotools or faster-coco-eval underneath."""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torchmetrics.detection import MeanAveragePrecision

try:  # newer torchmetrics keep their COCO tools in a CocoBackend
    from torchmetrics.detection.helpers import CocoBackend, _load_coco_backend_tools
except ImportError:
    CocoBackend = None

__all__ = ["BACKENDS", "MaskAP", "resolve_backend"]

BACKENDS = ("auto", "pycocotools", "faster_coco_eval")
_FASTER_MIN = (1, 6)  # the fast-eval extra's floor


@functools.cache
def _faster_coco_eval_usable() -> bool:
    """Whether faster-coco-eval >= 1.6 is installed and its C++ evaluator imports."""
    try:
        version = importlib.metadata.version("faster-coco-eval")
        import faster_coco_eval.core.faster_eval_api  # noqa: F401
    except ImportError:  # PackageNotFoundError included
        return False
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2]) >= _FASTER_MIN


def resolve_backend(backend: str) -> str:
    """The COCOeval implementation ``backend`` names: ``auto`` is ``faster_coco_eval`` when
    faster-coco-eval >= 1.6 imports, else ``pycocotools``.

    Raises:
        ValueError: ``backend`` is none of ``BACKENDS``.
        ImportError: the backend named explicitly is not installed.
    """
    if backend not in BACKENDS:
        raise ValueError(
            f"MaskAP backend={backend!r} (model.map_backend): expected one of {list(BACKENDS)}"
        )
    if backend == "auto":
        return "faster_coco_eval" if _faster_coco_eval_usable() else "pycocotools"
    if backend == "faster_coco_eval" and not _faster_coco_eval_usable():
        raise ImportError(
            "MaskAP backend='faster_coco_eval' (model.map_backend) needs faster-coco-eval >= 1.6: "
            "pip install seglab[fast-eval], or choose auto or pycocotools"
        )
    if backend == "pycocotools":
        try:
            import pycocotools.cocoeval  # noqa: F401
        except ImportError as error:
            raise ImportError(
                "MaskAP backend='pycocotools' (model.map_backend) needs pycocotools: "
                "pip install pycocotools, or choose auto or faster_coco_eval"
            ) from error
    return backend


if CocoBackend is not None:

    class _CocoTools(CocoBackend):
        """torchmetrics' ``CocoBackend`` with the backend's COCO classes loaded once (torchmetrics
        imports them again for every mask and every annotation), and pycocotools' RLE ``encode``
        and ``area`` for either backend where it is installed: the same RLE bytes, and
        faster-coco-eval's ``encode`` of a 256x256 mask takes about three times as long."""

        def __init__(self, backend: str) -> None:
            super().__init__(backend)
            self._coco, self._cocoeval, mask_utils = _load_coco_backend_tools(backend)
            with contextlib.suppress(ImportError):
                import pycocotools.mask as mask_utils
            self._mask_utils = mask_utils.__name__  # a name: modules do not pickle

        @property
        def coco(self) -> object:
            return self._coco

        @property
        def cocoeval(self) -> object:
            return self._cocoeval

        @property
        def mask_utils(self) -> object:
            return importlib.import_module(self._mask_utils)


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Raise logger ``name`` to WARNING for the block: faster-coco-eval logs its whole summary
    at INFO, the level Hydra's job logging shows."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


class MaskAP(MeanAveragePrecision):
    """COCO box and mask AP / AR: torchmetrics' ``MeanAveragePrecision(iou_type=("bbox", "segm"))``
    (COCOeval underneath), made exact under DDP.

    torchmetrics gathers its per-image lists element by element, which needs the same number of
    images on every rank and interleaves them by rank. Here the states of all ranks are gathered as
    objects (any number of images per rank) and ``compute`` evaluates the images in the order of
    their ``image_id``, so the numbers do not depend on how the images were spread over ranks (the
    order decides COCOeval's ties between equal scores). The IoU and recall thresholds are
    COCOeval's float64 ones (``np.linspace``), so the numbers equal COCOeval run directly.

    ``backend``: ``pycocotools`` (COCOeval in Python), ``faster_coco_eval`` (its C++ port, the same
    matching and accumulation, several times faster) or ``auto`` (the default: ``faster_coco_eval``
    when faster-coco-eval >= 1.6 is installed, ``pip install seglab[fast-eval]``, else
    ``pycocotools``); ``self.backend`` is the one used. Masks are RLE-encoded by pycocotools either
    way. The two backends return the same float32 values: the C++ precision is ``tp / (tp + fp)``
    where pycocotools divides by ``tp + fp + np.spacing(1)``, so a precision differs by at most
    one float64 ulp (2.2e-16) and a mean of them by less, far below float32's resolution.
    faster-coco-eval computes the mask IoUs on up to ``min(CPUs, 8)`` threads.

    ``update(preds, target)``: torchmetrics' format (boxes xyxy, ``masks`` bool (N, H, W)), each
    target with an ``image_id`` int and optionally ``iscrowd`` and ``area``.
    """

    def __init__(self, backend: str = "auto", **kwargs: Any) -> None:
        kwargs.setdefault("iou_type", ("bbox", "segm"))
        # COCOeval's own thresholds: torchmetrics' defaults come from a float32 torch.linspace
        # (0.2 -> 0.20000000298...), which moves recall thresholds past recalls such as 1/5.
        kwargs.setdefault("iou_thresholds", np.linspace(0.5, 0.95, 10).tolist())
        kwargs.setdefault("rec_thresholds", np.linspace(0.0, 1.0, 101).tolist())
        resolved = resolve_backend(backend)
        super().__init__(backend=resolved, **kwargs)
        self.backend = resolved  # the COCOeval implementation in use
        tools = getattr(self, "_coco_backend", None)
        if CocoBackend is not None and isinstance(tools, CocoBackend):
            self._coco_backend = _CocoTools(resolved)
        self.add_state("image_ids", default=[], dist_reduce_fx=None)

    def update(self, preds: list[dict[str, Any]], target: list[dict[str, Any]]) -> None:
        super().update(preds, target)
        for item in target:
            self.image_ids.append(torch.tensor(int(item["image_id"]), dtype=torch.int64))

    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any = None) -> None:
        group = process_group or self.process_group
        local = {
            name: [v.cpu() if isinstance(v, torch.Tensor) else v for v in getattr(self, name)]
            for name in self._defaults
        }
        gathered: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, local, group=group)
        for name in self._defaults:
            setattr(self, name, [v for part in gathered for v in part[name]])

    def compute(self) -> dict[str, torch.Tensor]:
        order = sorted(range(len(self.image_ids)), key=lambda i: int(self.image_ids[i]))
        for name in self._defaults:
            values = getattr(self, name)
            if len(values) == len(order):
                setattr(self, name, [values[i] for i in order])
        with _quiet("faster_coco_eval"):
            return super().compute()
