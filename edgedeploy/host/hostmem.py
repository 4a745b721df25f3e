"""glibc malloc thresholds for PyTorch inference and training on the CPU.

PyTorch's CPU allocator takes every tensor from glibc malloc, which serves blocks above its mmap
threshold (128 KiB at start, raised only towards sizes it has seen freed) with ``mmap`` and gives
them back with ``munmap`` as soon as they are freed. One TinyViT-21M-512 forward pass allocates and
frees hundreds of 1-25 MB activations, so each pass maps, page-faults and zeroes the same memory
again: on the 2-core reference machine about half of a host scoring run was kernel time, and a
forward pass took 0.72 s per image instead of 0.49 s (batch 4). Raising the mmap and trim
thresholds keeps freed blocks in the heap for the next pass — what PyTorch's CPU performance
guide gets by preloading jemalloc or tcmalloc, here without a preload.

Numbers do not change: c10 allocates tensors with ``posix_memalign`` at 64 bytes either way. The
process keeps up to ``TRIM_THRESHOLD`` of freed memory instead of returning it at once. Anything
but Linux with glibc is left alone.
"""

from __future__ import annotations

import ctypes
import platform
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 1024 << 20

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise this process's glibc mmap and trim thresholds (once); True where they are in effect."""
    global _applied
    if _applied is None:
        _applied = _set_thresholds()
    return _applied


def _set_thresholds() -> bool:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return mmap_ok and trim_ok
