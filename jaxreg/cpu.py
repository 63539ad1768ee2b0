"""CPU runtime settings for training on the host (opt-in, process-wide).

XLA's CPU backend allocates the temporary buffers of every call of a compiled
program with ``malloc``. glibc serves a block above its mmap threshold (dynamic,
at most 32 MiB by default) with fresh pages from ``mmap`` and returns them to
the kernel at ``free``, so every call of a conv net's train step page-faults its
large temporaries anew: measured on a 2-core CPU, about 13,000 minor faults per
call of a 3x3-conv kernel gradient (batch 128, 14x14x32 -> 64 channels) whose
patch matrix is a 29 MB temporary, which made that call 2.8x slower
(``benchmarks/bench_conv.py``). PyTorch's CPU kernels pay the same price.
:func:`retain_freed_memory` makes glibc keep freed memory in the heap for reuse.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

__all__ = ["retain_freed_memory"]

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1
_lock = threading.Lock()


def _glibc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it)
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def retain_freed_memory(threshold_bytes: int = 1 << 30) -> bool:
    """Let glibc keep freed memory for reuse instead of unmapping it (process-wide).

    Sets glibc's ``M_MMAP_THRESHOLD`` (blocks below it come from the heap, not
    from a fresh ``mmap``) and ``M_TRIM_THRESHOLD`` (free memory at the top of
    the heap is kept up to this size) to ``threshold_bytes``, so the temporaries
    of repeated XLA (and PyTorch) CPU calls reuse pages that are already
    mapped. The cost is memory: up to ``threshold_bytes`` of freed heap may stay
    with the process. It also limits glibc to one malloc arena (threads share
    it), which slowed compilation-heavy short jobs: the default ``jaxreg
    compare`` on two of its configs took 30-39 s with it and 22-28 s without
    (three runs each on a 2-core CPU), so it is opt-in and best for long
    training runs of large conv nets.

    Args:
        threshold_bytes: both thresholds, in bytes (1 to 2**31 - 1; default 1 GiB).

    Returns:
        True when applied; False where the C library is not glibc (macOS,
        Windows, musl), which is left untouched.
    """
    if isinstance(threshold_bytes, bool) or not isinstance(threshold_bytes, int):
        raise TypeError(
            f"retain_freed_memory: threshold_bytes must be an int, got {threshold_bytes!r}."
        )
    if not 1 <= threshold_bytes <= _INT_MAX:
        raise ValueError(
            f"retain_freed_memory: threshold_bytes must lie in [1, {_INT_MAX}], "
            f"got {threshold_bytes}."
        )
    libc = _glibc()
    if libc is None:
        return False
    with _lock:
        ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(threshold_bytes))
        ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(threshold_bytes))
        ok_arena = libc.mallopt(_M_ARENA_MAX, ctypes.c_int(1))
    return bool(ok_mmap and ok_trim and ok_arena)
