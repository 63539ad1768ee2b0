"""Masks do not depend on sharding: same key, same mask on 1 device, 8 devices or a 4x2 mesh.

The masks hash each element's *global* position, so under ``jax.jit`` a sharded
batch gets bit-for-bit the unsharded result, and each device computes its own
slice without communication. Runs in a subprocess with 8 simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``).
"""

import textwrap

from tests.conftest import run_on_cpu_devices

SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import jaxreg.functional as F
    import jaxreg.nn as jnn

    jax.config.update("jax_numpy_rank_promotion", "raise")
    assert jax.device_count() == 8, jax.devices()
    key = jax.random.key(3)
    x2 = jax.random.normal(jax.random.key(1), (64, 48))
    x4 = jax.random.normal(jax.random.key(2), (16, 8, 8, 4))

    def module_dropout(k, x):
        return jnn.Dropout(0.3).apply({}, x, deterministic=False, rngs={"dropout": k})

    cases = {
        "dropout": (lambda k, x: F.dropout(k, x, 0.3), x2),
        "dropout_bcast": (lambda k, x: F.dropout(k, x, 0.3, broadcast_dims=(1,)), x2),
        "module_Dropout": (module_dropout, x2),
        "gaussian_dropout": (lambda k, x: F.gaussian_dropout(k, x, 0.3), x2),
        "gaussian_noise": (lambda k, x: F.gaussian_noise(k, x, 0.3), x2),
        "alpha_dropout": (lambda k, x: F.alpha_dropout(k, x, 0.3), x2),
        "spatial_dropout": (lambda k, x: F.spatial_dropout(k, x, 0.3), x4),
        "drop_path": (lambda k, x: F.drop_path(k, x, 0.3), x4),
        "drop_block": (lambda k, x: F.drop_block(k, x, 0.3, block_size=3), x4),
    }
    devices = np.array(jax.devices())
    meshes = {
        "8 on batch": (Mesh(devices, ("b",)), lambda nd: P("b")),
        "4x2 batch x last": (
            Mesh(devices.reshape(4, 2), ("b", "f")),
            lambda nd: P("b", *([None] * (nd - 2)), "f"),
        ),
    }
    collectives = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")
    report = {}
    for name, (fn, x) in cases.items():
        f = jax.jit(fn)
        ref = np.asarray(f(key, x))  # one device
        for mesh_name, (mesh, spec) in meshes.items():
            xs = jax.device_put(x, NamedSharding(mesh, spec(x.ndim)))
            compiled = f.lower(key, xs).compile()
            y, hlo = compiled(key, xs), compiled.as_text()
            report[f"{name} / {mesh_name}"] = {
                "equal": bool(np.array_equal(np.asarray(y), ref)),
                "shards": len(y.sharding.device_set),
                "collectives": [c for c in collectives if c in hlo],
            }
    print("RESULT " + json.dumps(report))
    """
)


def test_masks_identical_whatever_the_sharding():
    report = run_on_cpu_devices(SCRIPT, devices=8)
    assert len(report) == 18
    for case, r in report.items():
        assert r["equal"], f"{case}: sharded mask differs from the single-device mask"
        assert r["shards"] == 8, case
        if not case.startswith("drop_block"):  # drop_block sums the kept fraction
            assert r["collectives"] == [], f"{case}: communicates {r['collectives']}"
