"""Lightning callbacks of seglab."""

from seglab.callbacks.config import CONFIG_KEY, EmbedConfig
from seglab.callbacks.nan_guard import NanGuard, NonFiniteLossError, NonFiniteWeightsError
from seglab.callbacks.rank_failure import EndRanksOnFailure
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
    "EndRanksOnFailure",
    "ExactResume",
    "Interruption",
    "NanGuard",
    "NonFiniteLossError",
    "NonFiniteWeightsError",
    "PredictionWriter",
    "SemanticMaskWriter",
    "Visuals",
    "WandbRun",
    "output_stem",
    "wandb_callbacks",
    "wandb_resume",
]
