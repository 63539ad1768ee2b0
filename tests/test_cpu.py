"""jaxreg.cpu: retained freed memory (no page faults on large XLA temporaries) and
fast_convolutions (YNNPACK fusions off, convolutions through XLA's own)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jaxreg.cpu import YNN_OFF_FLAG, _glibc, _ynn_off, retain_freed_memory

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import jaxreg.cpu
    applied = jaxreg.cpu.retain_freed_memory() if sys.argv[1] == "on" else None
    import jax, jax.numpy as jnp

    @jax.jit
    def f(x):  # a 32 MB temporary (8 shifted copies, concatenated), reduced to a scalar
        big = jnp.concatenate([jnp.roll(x, i, axis=0) for i in range(8)], axis=1)
        return jnp.sum(big @ jnp.ones((big.shape[1], 4), big.dtype))

    x = jnp.ones((65536, 16), jnp.float32)
    f(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        f(x).block_until_ready()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
    print("RESULT " + json.dumps({"applied": applied, "faults_per_call": faults}))
    """
)


def _faults(mode):
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


@pytest.mark.skipif(_glibc() is None, reason="glibc only")
def test_retained_memory_removes_the_page_faults_of_large_temporaries():
    off, on = _faults("off"), _faults("on")
    assert on["applied"] is True
    # 32 MB of fresh pages is ~8,000 faults per call without; with it, pages are reused
    assert off["faults_per_call"] > 4000, off
    # measured 1,500-6,100 with it against 15,360 without (the rest varies with
    # which threads allocate first)
    assert on["faults_per_call"] < off["faults_per_call"] / 2, (on, off)


HEAP_CHILD = textwrap.dedent(
    """
    import ctypes, json, resource, sys
    import jaxreg.cpu
    kwargs, size, count = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    applied = jaxreg.cpu.retain_freed_memory(**kwargs)
    libc = jaxreg.cpu._glibc()
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def cycle():  # count blocks of size bytes, touched, then freed
        blocks = [libc.malloc(size) for _ in range(count)]
        for b in blocks:
            ctypes.memset(b, 1, size)
        for b in blocks:
            libc.free(b)

    cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        cycle()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 2
    print("RESULT " + json.dumps({"applied": applied, "faults_per_cycle": faults}))
    """
)


def _heap_faults(kwargs: dict, size: int, count: int = 1) -> dict:
    """Page faults per malloc-touch-free cycle after a first one, in a child
    process under ``retain_freed_memory(**kwargs)``."""
    proc = subprocess.run(
        [sys.executable, "-c", HEAP_CHILD, json.dumps(kwargs), str(size), str(count)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


@pytest.mark.skipif(_glibc() is None, reason="glibc only")
def test_retained_memory_is_never_trimmed_by_default():
    # two 48 MiB heap blocks (under a 64 MiB mmap threshold) freed: 96 MiB at the
    # top of the heap. A 64 MiB trim threshold (what the function set before, at
    # 1 GiB, for the same effect on larger steps) hands it back, so every cycle
    # faults its 24,576 pages in again; the default keeps it
    kw = {"threshold_bytes": 64 << 20}
    capped = _heap_faults({**kw, "trim_threshold_bytes": 64 << 20}, 48 << 20, 2)
    kept = _heap_faults(kw, 48 << 20, 2)
    assert capped["applied"] is True and kept["applied"] is True
    assert capped["faults_per_cycle"] > 20000, capped
    assert kept["faults_per_cycle"] < 1000, kept


@pytest.mark.skipif(_glibc() is None, reason="glibc only")
def test_blocks_above_one_gib_come_from_the_heap_by_default():
    # airbench94's step with Winograd convolutions allocates more than 1 GiB of
    # temporaries at once: above a 1 GiB mmap threshold (the default until
    # 2026-12-02) that block is mapped and unmapped every call, 327,680 fresh
    # pages a cycle for this 1.25 GiB block; the default threshold (2 GiB - 1)
    # keeps it in the heap
    mapped = _heap_faults({"threshold_bytes": 1 << 30}, 5 << 28)
    kept = _heap_faults({}, 5 << 28)
    assert mapped["applied"] is True and kept["applied"] is True
    assert mapped["faults_per_cycle"] > 300000, mapped
    assert kept["faults_per_cycle"] < 1000, kept


def test_bad_threshold_is_named():
    with pytest.raises(ValueError, match="threshold_bytes"):
        retain_freed_memory(0)
    with pytest.raises(ValueError, match="threshold_bytes"):
        retain_freed_memory(2**31)
    with pytest.raises(TypeError, match="threshold_bytes"):
        retain_freed_memory(1.5)
    with pytest.raises(ValueError, match="trim_threshold_bytes"):
        retain_freed_memory(trim_threshold_bytes=0)
    with pytest.raises(TypeError, match="trim_threshold_bytes"):
        retain_freed_memory(trim_threshold_bytes=True)


FAST_CHILD = textwrap.dedent(
    """
    import json, os, sys
    import jaxreg.cpu as cpu
    mode, out = sys.argv[1], {}
    if mode == "fast":
        out["returned"] = cpu.fast_convolutions()
    import jax, jax.numpy as jnp
    from jax import lax
    from jaxreg.functional import conv_general_dilated
    if mode == "late":  # the backend starts first: too late for the flag
        jnp.ones(1).block_until_ready()
        try:
            cpu.fast_convolutions()
            out["raised"] = None
        except RuntimeError as e:
            out["raised"] = str(e)
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
    k = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    dn = ("NHWC", "HWIO", "NHWC")
    ours = lambda x, k: conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dn)
    ref = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dn)
    out["primitives"] = sorted({e.primitive.name for e in jax.make_jaxpr(ours)(x, k).eqns})
    out["max_err"] = float(jnp.max(jnp.abs(ours(x, k) - ref(x, k))))
    dot = jax.jit(lambda a, b: jnp.tanh(a @ b)).lower(jnp.ones((64, 64)), jnp.ones((64, 64)))
    out["ynn_in_hlo"] = "ynn" in dot.compile().as_text()
    out["native"] = cpu.native_convolutions()
    if mode == "fast":
        out["again"] = cpu.fast_convolutions()  # running with the flag: fine
    out["flags"] = os.environ.get("XLA_FLAGS", "")
    print("RESULT " + json.dumps(out))
    """
)


def _fast_child(mode):
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, "-c", FAST_CHILD, mode],
        cwd=repo, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


def test_fast_convolutions_turns_ynnpack_off_and_convs_go_to_xla():
    default, fast = _fast_child("default"), _fast_child("fast")
    # default flags: XLA compiles a matmul into a YNNPACK fusion; jaxreg uses im2col
    assert default["ynn_in_hlo"] is True and default["native"] is False
    assert "conv_general_dilated" not in default["primitives"], default["primitives"]
    # fast_convolutions: the flag reached XLA (no YNNPACK fusion) and convs are lax's
    assert fast["returned"] is True and fast["again"] is True
    assert fast["flags"].split()[-1] == YNN_OFF_FLAG
    assert fast["ynn_in_hlo"] is False and fast["native"] is True
    assert fast["primitives"] == ["conv_general_dilated"]
    for r in (default, fast):  # same values either way
        assert r["max_err"] < 1e-4, r


def test_fast_convolutions_after_the_backend_started_raises():
    late = _fast_child("late")
    assert "before any JAX computation" in late["raised"]
    assert late["native"] is False and YNN_OFF_FLAG not in late["flags"]


@pytest.mark.parametrize(
    ("flags", "off"),
    [
        ("", False),
        (YNN_OFF_FLAG, True),
        (f"--xla_cpu_enable_fast_math=false {YNN_OFF_FLAG}", True),
        ("--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT", False),
        (f"{YNN_OFF_FLAG} --xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT", False),
    ],
)
def test_ynn_flag_parsing_takes_the_last_setting(flags, off):
    assert _ynn_off(flags) is off
