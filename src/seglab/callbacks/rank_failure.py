"""Under DDP, an exception on one rank ends every rank at once, with its message printed once."""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import subprocess
import time

import lightning as L
import torch.distributed as dist
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

from seglab.utils.failure import error_line, is_quiet, mark_quiet, set_peer_error

__all__ = ["EndRanksOnFailure"]

log = logging.getLogger(__name__)

# the key under which a failing rank leaves its message in torch.distributed's store
_STORE_KEY = "seglab/failed_rank"
# what torch's backends say when a peer process has gone; no exception class tells it apart
_PEER_LOST = re.compile(
    r"Connection (closed|reset) by peer|remote worker crash|communicator was aborted|"
    r"NCCL communicator|Broken pipe",
    re.IGNORECASE,
)


class EndRanksOnFailure(L.Callback):
    """Report an exception once and end every rank of a DDP run within seconds.

    The failing rank (not rank 0) leaves its message in torch.distributed's store, which rank 0
    hosts, and prints it. Its peers then fail in their next collective with an error that only
    says a peer went away (gloo notices a closed connection at once): those ranks exit 1 without
    printing (``seglab.utils.failure.mark_quiet``), and rank 0 writes the failing rank's message
    into ``metrics.json``. When rank 0 itself fails, it kills the ranks Lightning started for it
    (SIGKILL, as Lightning does on Ctrl+C), which would otherwise wait in a collective until the
    process group's timeout (30 minutes by default).

    Lightning's child-process observer would SIGKILL rank 0 as soon as a rank it started exits
    non-zero, before rank 0 has written ``metrics.json``; rank 0 takes those ranks off the
    observer's list and waits for them itself. (A rank 0 busy for more than the observer's 5 s
    period when another rank fails is still killed by it: exit status 137, no ``metrics.json``.)

    Interrupts (``KeyboardInterrupt``, ``SystemExit`` of the signal handlers) are left alone.
    seglab's ``train`` adds this callback to every run; it does nothing in a single process.

    Args:
        grace_s: how long rank 0 waits for a failing rank to print its message and exit before
            it kills it.
    """

    def __init__(self, grace_s: float = 20.0) -> None:
        self.grace_s = grace_s

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if trainer.world_size < 2 or not isinstance(exception, Exception):
            return
        store = _store()
        if trainer.global_rank != 0:
            if is_quiet(exception) or _PEER_LOST.search(str(exception)):
                mark_quiet(exception)
            elif store is not None:
                line = f"rank {trainer.global_rank}: {error_line(exception)}"
                try:
                    store.set(_STORE_KEY, line)
                except Exception as err:  # rank 0 is gone too: nobody to tell
                    log.debug("could not leave the failure in the store: %s", err)
            return
        note = _read(store)
        if note is not None:
            set_peer_error(exception, note)
            mark_quiet(exception)
        launcher = trainer.strategy.launcher
        if isinstance(launcher, _SubprocessScriptLauncher) and launcher.procs:
            _end_children(launcher, grace_s=self.grace_s if note is not None else 0.0)


def _end_children(launcher: _SubprocessScriptLauncher, grace_s: float) -> None:
    """Wait up to ``grace_s`` for the ranks ``launcher`` started, then SIGKILL the rest."""
    procs = list(launcher.procs)
    launcher.procs.clear()  # the same list Lightning's observer polls: it stops, killing nobody
    deadline = time.monotonic() + grace_s
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def _store() -> dist.Store | None:
    """torch.distributed's default store (a TCPStore served by rank 0), or None without one."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:
        return None


def _read(store: dist.Store | None) -> str | None:
    if store is None:
        return None
    try:
        if store.check([_STORE_KEY]):
            return store.get(_STORE_KEY).decode()
    except Exception as err:
        log.debug("could not read the store: %s", err)
    return None
