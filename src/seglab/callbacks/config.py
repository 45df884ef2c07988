"""Stores the run's resolved model and data config inside every checkpoint."""

from __future__ import annotations

from typing import Any

import lightning as L

CONFIG_KEY = "seglab_config"


class EmbedConfig(L.Callback):
    """Writes ``config`` under ``checkpoint["seglab_config"]`` so eval and predict need only the file."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict
    ) -> None:
        checkpoint[CONFIG_KEY] = self.config
