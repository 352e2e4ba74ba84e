"""The C allocator's handling of large blocks, set once at the agent's start (glibc only; elsewhere nothing).

A poll of a full table builds dicts of a few hundred thousand entries, whose tables are blocks of megabytes, and
frees the last poll's. glibc serves a block above its mmap threshold with mmap and returns it to the system when
it is freed; but by default each such free raises the threshold to the block's size, so that the next poll's
tables come from the heap, whose freed space stays in the process's RSS. Fixing the threshold keeps every block
above it an mmap of its own: measured with the full table tracked, the agent's RSS between polls went from 102 to
90 MiB (VmHWM 112 to 106). The threshold is 1 MiB, not glibc's initial 128 KiB: asyncio gives every TLS connection
a 256 KiB buffer, and an mmap, its page faults and a munmap for each made a flood of TLS connections pile up
faster than the agent could turn them away. Small objects (Python's own allocator) are untouched.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # mallopt's parameter, <malloc.h>
MMAP_THRESHOLD_BYTES = 1024 * 1024  # above a TLS connection's buffer, below a full table's dicts (megabytes)


def return_large_blocks() -> bool:
    """Keep large blocks out of the heap, so that freeing them gives the memory back; False where the C library
    has no mallopt (musl and others) or refuses the setting."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
