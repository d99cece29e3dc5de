"""Keep a service's resident memory near what it uses (glibc only; elsewhere a no-op).

Two glibc defaults inflate a Python service's RSS: one malloc arena per thread
(aiosqlite and password hashing run in threads), each keeping what it freed;
and a sliding mmap threshold that, once an argon2 hash (12 MiB) has been freed,
serves the next ones from an arena that keeps the memory. Capping the arenas and
fixing the threshold returns such blocks to the system when they are freed.
"""

import ctypes
import ctypes.util

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD_BYTES = 1024 * 1024


def tune_malloc() -> bool:
    """Apply the settings above; False when this C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, ARENAS)) and bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    )
