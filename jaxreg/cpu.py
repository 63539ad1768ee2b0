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

jaxlib 0.10's CPU backend hands work to YNNPACK library fusions by default;
under them XLA's own convolution ran the train step of a small CIFAR conv net
3.5x slower than without them (``benchmarks/bench_xla_conv.py``), and jaxreg's
im2col convolution was the faster path. :func:`fast_convolutions` turns those
fusions off before JAX starts its CPU backend; every jaxreg convolution
(:func:`jaxreg.functional.conv_general_dilated`, so every ``jaxreg.models``
conv) then runs as XLA's own, and that step took half the time of the im2col
one under the default flags.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

__all__ = ["fast_convolutions", "native_convolutions", "retain_freed_memory"]

#: the XLA flag :func:`fast_convolutions` sets: an empty list of YNNPACK fusion types
YNN_OFF_FLAG = "--xla_cpu_experimental_ynn_fusion_type="

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


def _check_bytes(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"retain_freed_memory: {name} must be an int, got {value!r}.")
    if not 1 <= value <= _INT_MAX:
        raise ValueError(f"retain_freed_memory: {name} must lie in [1, {_INT_MAX}], got {value}.")


def retain_freed_memory(
    threshold_bytes: int = _INT_MAX, *, trim_threshold_bytes: int | None = None
) -> bool:
    """Let glibc keep freed memory for reuse instead of unmapping it (process-wide).

    Sets glibc's ``M_MMAP_THRESHOLD`` to ``threshold_bytes`` (blocks below it
    come from the heap, not from a fresh ``mmap``) and, by default, turns heap
    trimming off (``M_TRIM_THRESHOLD``: free memory at the top of the heap is
    never handed back to the kernel), so the temporaries of repeated XLA (and
    PyTorch) CPU calls reuse pages that are already mapped. The cost is memory:
    the heap stays at its peak size. It also limits glibc to one malloc arena
    (threads share it), which slowed compilation-heavy short jobs: the default
    ``jaxreg compare`` on two of its configs took 30-39 s with it and 22-28 s
    without (three runs each on a 2-core CPU), so it is opt-in and best for long
    training runs of large conv nets.

    Trimming matters for large steps: with trimming at 1 GiB (this function's
    setting until 2026-12-02) the train step of airbench94's CIFAR-10 net
    (batch 512) freed more than 1 GiB at the top of the heap on every call, so
    glibc returned it and the next call faulted about 200,000 pages back in
    (``benchmarks/bench_malloc.py``). So does the mmap threshold: XLA allocates a
    call's temporaries as one block, and with Winograd convolutions
    (``Airbench(conv_method="winograd")``) that block passes 1 GiB (this
    function's threshold until 2026-12-02), so it was mapped afresh on every call
    (about 350,000 page faults a step); the default is now the largest
    ``mallopt`` takes.

    Args:
        threshold_bytes: the mmap threshold, in bytes (1 to 2**31 - 1; default
            2**31 - 1, about 2 GiB).
        trim_threshold_bytes: None (default): never trim; or the size of free
            memory at the top of the heap above which glibc returns it (1 to
            2**31 - 1), to cap the memory kept.

    Returns:
        True when applied; False where the C library is not glibc (macOS,
        Windows, musl), which is left untouched.
    """
    _check_bytes("threshold_bytes", threshold_bytes)
    if trim_threshold_bytes is not None:
        _check_bytes("trim_threshold_bytes", trim_threshold_bytes)
    libc = _glibc()
    if libc is None:
        return False
    # glibc reads the int as a size_t: -1 is the largest size, so the heap's top is
    # never trimmed (mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming")
    trim = -1 if trim_threshold_bytes is None else trim_threshold_bytes
    with _lock:
        ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(threshold_bytes))
        ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(trim))
        ok_arena = libc.mallopt(_M_ARENA_MAX, ctypes.c_int(1))
    return bool(ok_mmap and ok_trim and ok_arena)


def _ynn_off(flags: str) -> bool:
    """True when ``flags`` (an ``XLA_FLAGS`` value) ends with YNNPACK's fusions off."""
    value = None
    for word in flags.split():
        if word.startswith("--xla_cpu_experimental_ynn_fusion_type="):
            value = word.split("=", 1)[1]
    return value == ""


_native: bool | None = None  # what the running CPU backend was started with


def native_convolutions() -> bool:
    """Whether jaxreg's convolutions run as XLA's own (``lax``) convolution.

    True off the CPU (GPU and TPU convolutions are the vendor libraries') and on
    a CPU backend started with YNNPACK's fusions off (:func:`fast_convolutions`
    or the same flag in ``XLA_FLAGS``); False otherwise, where
    :func:`jaxreg.functional.conv_general_dilated` uses its im2col form. Starts
    JAX's backend if it is not running yet.
    """
    global _native
    import jax

    if jax.default_backend() != "cpu":
        return True
    if _native is None:  # XLA read XLA_FLAGS when the backend started (above)
        _native = _ynn_off(os.environ.get("XLA_FLAGS", ""))
    return _native


def fast_convolutions() -> bool:
    """Run convolutions through XLA's own CPU convolution (process-wide, opt-in).

    Appends ``--xla_cpu_experimental_ynn_fusion_type=`` (no YNNPACK library
    fusions) to ``XLA_FLAGS``; XLA reads it when JAX starts its CPU backend, so
    call this first, before any JAX computation. Measured on a 2-core CPU
    (``benchmarks/bench_xla_conv.py``): the train step of airbench's CIFAR net
    (widths 32/128/128, batch 512) ran 1.99x faster than with the default flags
    and jaxreg's im2col convolutions (930 vs 1,855 ms; PyTorch eager: 776 ms),
    the small MNIST CNN's 1.10x; see that benchmark for the tiny MNIST-1D
    conv net, which YNNPACK suits. Hence opt-in (``jaxreg compare --fast-conv``).

    Returns:
        True when the flag is (now) in effect.

    Raises:
        RuntimeError: JAX's backend is already running without the flag (XLA
            reads its flags once); call this at the start of the program.
    """
    global _native
    from jax._src import xla_bridge

    flags = os.environ.get("XLA_FLAGS", "")
    if xla_bridge.backends_are_initialized():
        if native_convolutions():
            return True
        raise RuntimeError(
            "fast_convolutions: JAX's backend is already running with YNNPACK's fusions "
            "on; call jaxreg.cpu.fast_convolutions() before any JAX computation (or "
            f"start Python with XLA_FLAGS={YNN_OFF_FLAG!r})."
        )
    if not _ynn_off(flags):
        os.environ["XLA_FLAGS"] = f"{flags} {YNN_OFF_FLAG}".strip()
    _native = None
    return True
