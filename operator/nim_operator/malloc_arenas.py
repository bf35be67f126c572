"""Two malloc arenas for the operator process: its memory follows what it holds, not how many threads ran.

glibc gives each thread that finds the heap busy an arena of its own (up to eight per core), and memory
freed in one arena is not reused by another. The reconcile workers, kopf's executor threads and the Event
poster each parse and drop large JSON bodies, so free space scattered over arenas was a tenth of the
operator's peak RSS at 1,000 services (`make bench-operator`: 245 MB with glibc's default, 222 MB with
two arenas). Set at start, before the threads exist; ``MALLOC_ARENA_MAX`` in the environment, when a
user sets it, is left to glibc.
"""

from __future__ import annotations

import ctypes
import os

#: glibc's mallopt parameter for the arena limit (malloc.h: M_ARENA_MAX).
M_ARENA_MAX = -8
ARENAS = 2


def limit_arenas(count: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``count``; False where the environment decides or there is no glibc."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_ARENA_MAX, count))
