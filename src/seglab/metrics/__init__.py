"""Segmentation metrics (torchmetrics) and evaluators.

Names resolve on first use, so ``import seglab.metrics`` stays cheap and
``python -m seglab.metrics.panoptic_quality`` runs without importing the module twice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from seglab.metrics.mask_ap import MaskAP
    from seglab.metrics.panoptic_quality import PanopticQuality, pq_compute
    from seglab.metrics.rand_error import RandError
    from seglab.metrics.semantic import SemanticMetrics

__all__ = ["MaskAP", "PanopticQuality", "RandError", "SemanticMetrics", "pq_compute"]

_SOURCES = {
    "MaskAP": "mask_ap",
    "PanopticQuality": "panoptic_quality",
    "pq_compute": "panoptic_quality",
    "RandError": "rand_error",
    "SemanticMetrics": "semantic",
}


def __getattr__(name: str) -> Any:
    if name in _SOURCES:
        return getattr(importlib.import_module(f"{__name__}.{_SOURCES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
