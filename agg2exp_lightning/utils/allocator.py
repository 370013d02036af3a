"""Keep freed memory in the process (glibc), so that a CPU training step does not pay the kernel again.

Each activation of a CPU training step larger than glibc's ``mmap`` threshold (128 KiB at first, raised
dynamically up to 32 MiB) is a fresh ``mmap`` whose pages the kernel zeroes on first touch, and freed
memory at the top of the heap is handed back (``trim``) so the next step faults it in again. On the demo
model this showed as system time of about a third of the user time.
:func:`keep_freed_memory` raises the ``mmap`` threshold to its maximum and the trim threshold and top
pad well above one step's working set, through ``mallopt`` (the same as the ``MALLOC_*_`` environment
variables, but settable after start-up). Measured with ``benchmarks/bench_train_step.py``
(``docs/benchmarks.md``). The cost is memory the process keeps after a peak.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

#: glibc's ``mallopt`` parameters (``malloc.h``).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
#: Largest mmap threshold glibc accepts on 64-bit systems (``HEAP_MAX_SIZE / 2``).
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
#: Freed memory kept at the top of the heap before glibc trims it.
TRIM_THRESHOLD = 1024 * 1024 * 1024
#: Extra memory obtained with each heap extension.
TOP_PAD = 64 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Tell glibc's ``malloc`` to serve large blocks from the heap and keep what is freed.

    Returns:
        True when the settings took effect; False (and nothing changed) on a C library without
        ``mallopt`` (macOS, Windows, musl) or when glibc refused a value.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success, 0 on error; the mmap threshold first, since setting it fixes the
    # dynamic threshold that would otherwise keep moving
    ok = all(mallopt(param, value) == 1 for param, value in
             ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
    if not ok:
        log.debug("mallopt refused a setting; the allocator keeps its defaults where it did")
    return ok
