"""glibc malloc settings for the operator process: its memory follows what it holds, not what it once held.

Two habits of glibc's allocator, each measured by `make bench-operator` at 1,000 services:

- Arenas. glibc gives each thread that finds the heap busy an arena of its own (up to eight per core), and
  memory freed in one arena is not reused by another. The reconcile workers, kopf's executor threads and
  the Event poster each parse and drop large JSON bodies, so free space scattered over arenas was a tenth
  of the peak RSS (245 MB with glibc's default, 222 MB with two arenas).
- Thresholds. glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), so after
  the first big list response every later one is carved from the heap, where a freed block between live
  ones cannot go back to the kernel. Fixed at 128 KiB (glibc's starting value), blocks that large are
  mapped and unmapped on their own, and the heap's free top is trimmed from 128 KiB on (211 -> 204 MB).

Set at start, before the threads exist. A setting whose ``MALLOC_*`` variable the user sets is left to glibc.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

#: mallopt parameters (malloc.h) and the environment variable through which a user sets each one instead.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ENVIRONMENT = {
    M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_",
    M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_",
    M_ARENA_MAX: "MALLOC_ARENA_MAX",
}
#: What the operator sets: two arenas, and blocks of 128 KiB or more mapped on their own.
SETTINGS = {M_ARENA_MAX: 2, M_MMAP_THRESHOLD: 128 * 1024, M_TRIM_THRESHOLD: 128 * 1024}


def tune_malloc(settings: dict[int, int] = SETTINGS) -> dict[int, bool]:
    """Apply ``settings`` through mallopt; for each parameter, whether it was set (False where the
    environment decides, glibc refused, or there is no glibc)."""
    mallopt = _mallopt()
    return {
        param: mallopt is not None and ENVIRONMENT[param] not in os.environ and bool(mallopt(param, value))
        for param, value in settings.items()
    }


def _mallopt() -> Callable[[int, int], int] | None:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt
