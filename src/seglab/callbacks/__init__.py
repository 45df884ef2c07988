"""Lightning callbacks of seglab."""

from seglab.callbacks.config import CONFIG_KEY, EmbedConfig
from seglab.callbacks.writers import (
    CocoResultsWriter,
    PredictionWriter,
    SemanticMaskWriter,
    output_stem,
)

__all__ = [
    "CONFIG_KEY",
    "CocoResultsWriter",
    "EmbedConfig",
    "PredictionWriter",
    "SemanticMaskWriter",
    "output_stem",
]
