"""A console that shows what a user can act on: the few messages of Lightning and torch that say
nothing about the run are dropped, each matched by its own text, with the reason beside it."""

from __future__ import annotations

import logging
import warnings

from lightning.fabric.utilities.warnings import PossibleUserWarning

__all__ = ["KNOWN_WARNINGS", "quiet_known_noise"]

# (message regex, category, module regex) of each warning filtered, and why it is not actionable
KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # Lightning 2.6's own pytree helper builds torch's LeafSpec, which newer torch deprecates: a
    # Lightning release fixes it, no setting of a run does.
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        r"lightning\.pytorch\.utilities\._pytree",
    ),
    # Says that an epoch shorter than log_every_n_steps has no train rows: seglab's tasks also log
    # every training loss once per epoch (train/<name>_epoch, SegmentationTask.log_train).
    (
        r"The number of training batches \(\d+\) is smaller than the logging interval",
        PossibleUserWarning,
        r"lightning\.pytorch\.loops\.fit_loop",
    ),
    # torchdata 0.11's StatefulDataLoader (seglab's training loader) calls torch.set_vital, which
    # newer torch deprecates: a torchdata release fixes it, no setting of a run does.
    (r"'set_vital' is deprecated", UserWarning, r"torchdata\.stateful_dataloader"),
)

# Lightning's advertisements for its cloud products ("💡 Tip: ... litlogger ...", "... litmodels
# ..."), logged at INFO on rank 0 by every Trainer; Lightning's documented switch for its console
# messages is Python logging (docs: "Console logging"), so a logging filter drops exactly these.
_TIP_PREFIX = "💡 Tip:"
_LIGHTNING_INFO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


class _DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TIP_PREFIX)


def quiet_known_noise() -> None:
    """Filter the warnings of ``KNOWN_WARNINGS`` and Lightning's product tips in this process.

    Every other warning still shows. Idempotent; the entry points call it before building the
    trainer (each DDP process runs the entry point, so each filters its own).
    """
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in _LIGHTNING_INFO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningTips) for f in logger.filters):
            logger.addFilter(_DropLightningTips())
