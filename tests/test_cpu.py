"""jaxreg.cpu.retain_freed_memory: large XLA temporaries stop page-faulting."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jaxreg.cpu import _glibc, retain_freed_memory

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


def test_bad_threshold_is_named():
    with pytest.raises(ValueError, match="threshold_bytes"):
        retain_freed_memory(0)
    with pytest.raises(ValueError, match="threshold_bytes"):
        retain_freed_memory(2**31)
    with pytest.raises(TypeError, match="threshold_bytes"):
        retain_freed_memory(1.5)
