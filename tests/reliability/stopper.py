"""A callback the resume tests put in a run: it sends a signal to its own process after a
given training step, a stop at an exact, repeatable point."""

from __future__ import annotations

import os
import signal

import lightning as L
from lightning.pytorch.callbacks import Callback


class StopAt(Callback):
    """Send ``signal_name`` (``SIGTERM``, ``SIGINT``, ``SIGKILL``) to this process when training
    step ``step`` (1-based global step) has ended."""

    def __init__(self, step: int, signal_name: str) -> None:
        self.step = step
        self.signal = signal.Signals[signal_name]

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signal)
