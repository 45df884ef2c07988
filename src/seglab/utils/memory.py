"""glibc malloc settings for CPU training.

A CPU training step frees and re-allocates the same activation buffers every step. With glibc's
defaults, buffers above the (dynamic) mmap threshold are mapped and unmapped each time and freed
heap tops are trimmed back to the OS, so every step pays for tens of thousands of page faults
(about 15,000 a step for the default U-Net job here). Raising the mmap and trim thresholds keeps
that memory in the process for reuse. ``python bench/malloc.py`` measures the effect.
The price: the process's resident size no longer shrinks after a peak.

The thresholds are 32 MiB (mmap: glibc's own ceiling for its dynamic threshold) and 64 MiB
(trim), not higher: buffers above 32 MiB (a VGG-16 FCN's 264-px activations, its fc6 weights)
are still mapped and returned on free. With 1 GiB for both, ``model=fcn16s data=shapes
debug=fast_dev_run`` peaked at 6.6 GB resident against 3.9 GB with these values
(``bench/memory.py`` measures every model), while the default U-Net job's buffers (8 MiB and
less) stay in the heap either way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["tune_malloc"]

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_malloc(
    mmap_threshold_mb: int = 32, trim_threshold_mb: int = 64, top_pad_mb: int = 64
) -> bool:
    """Raise glibc's mmap threshold, trim threshold and top pad for this process.

    Returns True when applied; False (and nothing changes) off Linux/glibc or when glibc refuses
    a value. Blocks above ``mmap_threshold_mb`` are still mapped directly. Each value must be
    below 2048 (mallopt takes a C int of bytes).
    """
    for key, mb in (
        ("mmap_threshold_mb", mmap_threshold_mb),
        ("trim_threshold_mb", trim_threshold_mb),
        ("top_pad_mb", top_pad_mb),
    ):
        if not 0 <= mb < 2048:
            raise ValueError(f"{key}={mb}: expected 0 <= value < 2048 (MiB)")
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = (
        (_M_MMAP_THRESHOLD, mmap_threshold_mb),
        (_M_TRIM_THRESHOLD, trim_threshold_mb),
        (_M_TOP_PAD, top_pad_mb),
    )
    applied = all(mallopt(param, mb << 20) == 1 for param, mb in settings)
    if not applied:
        log.warning("glibc refused a malloc setting; CPU steps may page-fault more")
    return applied
