"""Shared fixtures and helpers for the jaxreg tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# Implicit rank promotion hides broadcasting bugs in kernels: make it an error.
jax.config.update("jax_numpy_rank_promotion", "raise")


def model_params(key=0, dtype=jnp.float32, scale=1.0):
    """A flax-shaped parameter tree: Dense (in, out), Conv HWIO, a bias, a norm scale."""
    k = jax.random.split(jax.random.key(key), 5)
    tree = {
        "Dense_0": {
            "kernel": jax.random.normal(k[0], (5, 3)),
            "bias": jax.random.normal(k[1], (3,)),
        },
        "Conv_0": {"kernel": jax.random.normal(k[2], (3, 3, 2, 4))},
        "BatchNorm_0": {"scale": 1.0 + 0.1 * jax.random.normal(k[3], (4,))},
    }
    return jax.tree.map(lambda x: (scale * x).astype(dtype), tree)


def assert_trees_close(a, b, rtol=1e-6, atol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b), (
        f"structures differ:\n{jax.tree.structure(a)}\n{jax.tree.structure(b)}"
    )
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(
            np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol
        )


@pytest.fixture
def params():
    return model_params(0)


def _child_env(devices):
    """Environment of a child Python: ``devices`` CPU devices, the repo importable."""
    env = dict(os.environ)
    flags = f"--xla_force_host_platform_device_count={devices}"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    env["JAX_PLATFORMS"] = "cpu"
    repo = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_on_cpu_devices(script, devices=8, timeout=300):
    """Run ``script`` in a child Python with ``devices`` simulated CPU devices.

    The child must print one line ``RESULT <json>``; its parsed JSON is returned.
    Warnings are errors in the child too; a failing child fails the test with its
    output.
    """
    env, repo = _child_env(devices), Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        env=env,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"child failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout[-3000:]
    return json.loads(lines[0].removeprefix("RESULT "))


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_processes(script, processes=2, devices=2, timeout=300):
    """Run ``script`` as ``processes`` JAX processes of ``devices`` CPU devices each.

    Every child gets ``JAXREG_COORDINATOR``, ``JAXREG_NUM_PROCESSES`` and
    ``JAXREG_PROCESS_ID`` for ``jax.distributed.initialize`` (CPU collectives
    go through gloo over localhost) and must print one ``RESULT <json>`` line;
    the parsed results are returned in process order.
    """
    env, repo = _child_env(devices), Path(__file__).resolve().parents[1]
    env["JAXREG_COORDINATOR"] = f"localhost:{_free_port()}"
    env["JAXREG_NUM_PROCESSES"] = str(processes)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            env={**env, "JAXREG_PROCESS_ID": str(i)},
            cwd=repo,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout))
    finally:
        for p in procs:
            p.kill()
    results = []
    for i, (p, (out, err)) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, f"process {i} failed:\n{out[-3000:]}\n{err[-3000:]}"
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        assert len(lines) == 1, out[-3000:]
        results.append(json.loads(lines[0].removeprefix("RESULT ")))
    return results
