"""Lightning callbacks of seglab."""

from seglab.callbacks.config import CONFIG_KEY, EmbedConfig
from seglab.callbacks.resume import ExactResume, Interruption
from seglab.callbacks.visuals import Visuals
from seglab.callbacks.wandb_run import WANDB_RUN_KEY, WandbRun, wandb_callbacks, wandb_resume
from seglab.callbacks.writers import (
    CocoResultsWriter,
    PredictionWriter,
    SemanticMaskWriter,
    output_stem,
)

__all__ = [
    "CONFIG_KEY",
    "WANDB_RUN_KEY",
    "CocoResultsWriter",
    "EmbedConfig",
    "ExactResume",
    "Interruption",
    "PredictionWriter",
    "SemanticMaskWriter",
    "Visuals",
    "WandbRun",
    "output_stem",
    "wandb_callbacks",
    "wandb_resume",
]
