"""What a failed run leaves behind: ``"status": "failed"`` and its error in ``metrics.json``, the
full traceback in the run's log, and its message once, as the last line of the console.

``recorded_failure`` wraps ``seglab.train.train``; ``reports_errors`` and ``run_entry`` wrap the
task function and the ``@hydra.main`` function of each entry script. Only ``Exception`` is handled here: ``KeyboardInterrupt`` and
``SystemExit`` (Ctrl+C, SIGTERM and the other signals) are the signal handling's to report.

Under DDP one failure makes every rank fail, the others with errors of their own that only say a
peer went away. Such an error is *quiet* (``mark_quiet``): its rank exits 1 without printing, so
the console shows the failing rank's message once. ``seglab.callbacks.EndRanksOnFailure``
decides which errors are quiet and hands the failing rank's message to rank 0 for
``metrics.json`` (``set_peer_error``).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "error_line",
    "is_quiet",
    "log_traceback",
    "mark_quiet",
    "peer_error",
    "recorded_failure",
    "reports_errors",
    "run_entry",
    "set_peer_error",
    "write_failed",
]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# set by the first process of a command, inherited by the DDP ranks it starts: errors are
# reported here, in short, although HYDRA_FULL_ERROR=1 is set for Hydra (see run_entry)
_SHORT_ERRORS_ENV = "SEGLAB_SHORT_ERRORS"
_QUIET_ATTR = "_seglab_quiet"
_PEER_ATTR = "_seglab_peer_error"


def _root_cause(err: BaseException) -> BaseException:
    """``err`` without Hydra's instantiation wrappers, whose message repeats the target and key
    around the error that the object's own constructor raised."""
    from hydra.errors import InstantiationException

    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return err


def error_line(err: BaseException) -> str:
    """``err`` as one line, ``Type: message``: the lines of a multi-line message joined."""
    from hydra.errors import CompactHydraException

    err = _root_cause(err)
    # Hydra's missing-option errors end with the config search path: not the user's to act on
    text = _joined(str(err).split("\nConfig search path")[0])
    if isinstance(err, CompactHydraException):  # Hydra's config errors are written for users
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _joined(text: str) -> str:
    """The lines of ``text`` as one: indented lines (a list of options) joined by commas."""
    out = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not out:
            out = line
        elif raw[:1].isspace() and not out.endswith(":"):
            out += f", {line}"
        else:
            out += f" {line}" if out.endswith((":", ".", ";", ",")) else f". {line}"
    return out


def mark_quiet(err: BaseException) -> None:
    """Report ``err`` by the exit status only: another rank prints the cause."""
    setattr(err, _QUIET_ATTR, True)


def is_quiet(err: BaseException) -> bool:
    return bool(getattr(err, _QUIET_ATTR, False))


def set_peer_error(err: BaseException, line: str) -> None:
    """Record that ``err`` follows the failure of another rank, described by ``line``."""
    setattr(err, _PEER_ATTR, line)


def peer_error(err: BaseException) -> str | None:
    return getattr(err, _PEER_ATTR, None)


def write_failed(output_dir: str | Path, err: BaseException, wall_time_s: float) -> Path:
    """Write ``metrics.json`` with ``"status": "failed"`` and ``error`` (one line) in the run
    folder, atomically; a ``metrics.json`` already there is an earlier run's and is moved aside.

    Also ``run_dir``, ``overrides`` and ``wall_time_s``, the keys a sweep summary reads."""
    from seglab.utils.config import task_overrides
    from seglab.utils.io import move_aside, write_json

    path = Path(output_dir) / "metrics.json"
    move_aside(path)
    write_json(
        path,
        {
            "status": "failed",
            "error": peer_error(err) or error_line(err),
            "run_dir": str(output_dir),
            "overrides": task_overrides(),
            "wall_time_s": round(wall_time_s, 3),
        },
    )
    return path


def recorded_failure(train: F) -> F:
    """Make ``train(cfg)`` leave ``metrics.json`` with ``"status": "failed"`` (rank 0) when it
    raises, also before the first epoch (bad config, missing data), then re-raise.

    A failed run's folder therefore always says so; it is kept, with its log and ``.hydra/``,
    rather than removed, because its log holds the traceback."""

    @functools.wraps(train)
    def wrapper(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return train(cfg, *args, **kwargs)
        except Exception as err:
            from lightning.pytorch.utilities import rank_zero_only

            output_dir = _output_dir(cfg)
            if output_dir and getattr(rank_zero_only, "rank", 0) == 0:
                try:
                    write_failed(output_dir, err, time.perf_counter() - start)
                except Exception as write_err:  # the run's own error is the one to report
                    log.warning("could not mark %s failed: %s", output_dir, write_err)
            raise

    return wrapper  # type: ignore[return-value]


def _output_dir(cfg: Any) -> str | None:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(cfg, "paths.output_dir", default=None)
    except Exception:  # an interpolation that does not resolve: no folder to mark
        return None


def log_traceback(err: BaseException) -> None:
    """Write ``err``'s full traceback to the log files of this process only (the run's
    ``<task_name>.log`` that Hydra's job logging opens), not to the console."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not files:
        return
    exc_info = (type(err), err, err.__traceback__)
    record = log.makeRecord(
        log.name, logging.ERROR, __file__, 0, "%s", (error_line(err),), exc_info
    )
    for handler in files:
        handler.handle(record)


def _report(err: BaseException) -> None:
    """The end of a failed command: exit status 1, and ``err``'s message as the last line of
    stderr unless it is quiet."""
    if not is_quiet(err):
        sys.stdout.flush()
        print(error_line(err), file=sys.stderr, flush=True)
    sys.exit(1)


def _full_errors() -> bool:
    """Did the user ask for Hydra's full tracebacks (``HYDRA_FULL_ERROR=1``)?"""
    return os.environ.get("HYDRA_FULL_ERROR") == "1" and os.environ.get(_SHORT_ERRORS_ENV) != "1"


def reports_errors(task: F) -> F:
    """Decorate an entry script's task function, under ``@hydra.main``: an exception of a single
    run goes to the run's log with its traceback, and ends the process as ``run_entry`` says.

    Here, inside the job, rather than in ``run_entry`` only: the run's log is open, and Hydra
    would print ``Error executing job with overrides: ...`` above the message, from every DDP
    rank. A multirun job's exception goes on to Hydra, which records the job as failed (the sweep
    summary lists it) and raises it after the sweep, to ``run_entry``."""

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except Exception as err:
            log_traceback(err)
            if _full_errors() or _in_multirun():
                raise
            _report(err)

    return wrapper  # type: ignore[return-value]


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_entry(main: Callable[[], Any]) -> None:
    """Run an entry script's ``@hydra.main`` function; an exception ends the process with exit
    status 1 and its message once, as the last line of stderr, without a traceback.

    The job's traceback is in the run's log (``reports_errors``). With ``HYDRA_FULL_ERROR=1``
    set by the user, Hydra prints tracebacks in full instead, as it documents. Otherwise Hydra is
    asked to raise rather than print (``HYDRA_FULL_ERROR=1`` for the call, noted for the DDP ranks
    it starts), so that config errors and a failed multirun end the same way.
    """
    if _full_errors():
        main()
        return
    saved = {key: os.environ.get(key) for key in ("HYDRA_FULL_ERROR", _SHORT_ERRORS_ENV)}
    os.environ.update({"HYDRA_FULL_ERROR": "1", _SHORT_ERRORS_ENV: "1"})
    try:
        main()
    except Exception as err:
        _report(err)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
