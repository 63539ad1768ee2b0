"""BatchNorm on 8 CPU devices (child process): sharded jit, shard_map and pmap == one device.

The child gets ``XLA_FLAGS=--xla_force_host_platform_device_count=8``, runs every
case on the whole batch on one device and on the batch split over a 1-D
``'data'`` mesh (both ``Auto`` and ``Explicit`` mesh axes), and prints the
largest differences as JSON; the tests below assert they are within
``rtol = atol = 1e-5`` (outputs and updated batch statistics).
"""

import textwrap

import pytest

from tests.conftest import run_on_cpu_devices

TOL = 1.0  # the child reports max |a - b| / (1e-5 + 1e-5 |b|)

CHILD = textwrap.dedent(
    """
    import json
    import warnings

    warnings.simplefilter("error")

    import flax.linen as fnn
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxreg.nn import BatchNorm

    jax.config.update("jax_numpy_rank_promotion", "raise")
    assert jax.device_count() == 8, jax.devices()

    rng = np.random.default_rng(0)
    spread = rng.uniform(0.5, 2.0, (1, 4, 3))
    x = jnp.asarray((rng.standard_normal((64, 4, 3)) * spread + 3.0).astype(np.float32))
    INIT = {
        "scale_init": jax.nn.initializers.normal(1.0),
        "bias_init": jax.nn.initializers.normal(1.0),
    }
    CASES = {  # per-device batch: 8 examples
        "bn": {},
        "bn_slow_var": {"use_fast_variance": False},
        "bn_axis1": {"axis": 1},
        "ghost4": {"virtual_batch_size": 4},  # groups inside a device
        "ghost8_axis1": {"virtual_batch_size": 8, "axis": 1},  # one group per device
        "ghost16": {"virtual_batch_size": 16},  # groups straddle two devices
    }


    def step(module):
        def train(variables, x):
            y, upd = module.apply(
                variables, x, use_running_average=False, mutable=["batch_stats"]
            )
            return y, upd["batch_stats"]

        return train


    def maxdiff(a, b):
        # largest |a - b| / (1e-5 + 1e-5 |b|): <= 1 means allclose(rtol=atol=1e-5)
        worst = 0.0
        for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            u, w = np.asarray(u, np.float64), np.asarray(w, np.float64)
            worst = max(worst, float(np.max(np.abs(u - w) / (1e-5 + 1e-5 * np.abs(w)))))
        return worst


    out = {"jit": {}, "shard_map": {}, "errors": {}, "reference_vs_flax": {}}
    for name, kw in CASES.items():
        module = BatchNorm(momentum=0.9, **INIT, **kw)
        v = module.init(jax.random.key(1), x, use_running_average=False)
        v = {**v, "batch_stats": {"mean": v["batch_stats"]["mean"] + 1.0,
                                  "var": 2.0 * v["batch_stats"]["var"]}}
        y_ref, s_ref = jax.jit(step(module))(v, x)  # the whole batch on one device
        if "virtual_batch_size" not in kw:
            y_f, s_f = jax.jit(step(fnn.BatchNorm(momentum=0.9, **kw)))(v, x)
            out["reference_vs_flax"][name] = max(maxdiff(y_ref, y_f), maxdiff(s_ref, s_f))
        for mode in ("Auto", "Explicit"):
            mesh = jax.make_mesh((8,), ("data",), axis_types=(getattr(AxisType, mode),))
            xs = jax.device_put(x, NamedSharding(mesh, P("data")))
            vs = jax.device_put(v, NamedSharding(mesh, P()))
            key = f"{name}/{mode}"
            with jax.set_mesh(mesh):
                try:
                    y, s = jax.jit(step(module))(vs, xs)
                except ValueError as e:
                    out["errors"][key] = str(e)
                    continue
                out["jit"][key] = {
                    "y": maxdiff(y, y_ref),
                    "stats": maxdiff(s, s_ref),
                    "y_devices": len(y.sharding.device_set),
                    "y_sharded": not y.sharding.is_fully_replicated,
                }
                if kw.get("virtual_batch_size", 8) > 8:
                    continue  # with axis_name, groups are local: they cannot straddle devices
                mapped = BatchNorm(momentum=0.9, axis_name="data", **INIT, **kw)
                f = jax.shard_map(
                    step(mapped), mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P())
                )
                y, s = jax.jit(f)(vs, xs)
                out["shard_map"][key] = {"y": maxdiff(y, y_ref), "stats": maxdiff(s, s_ref)}

    # pmap with axis_index_groups: devices 0-3 and 4-7 form two batches of 32
    groups = [[0, 1, 2, 3], [4, 5, 6, 7]]
    grouped = BatchNorm(momentum=0.9, axis_name="data", axis_index_groups=groups)
    v = grouped.init(jax.random.key(1), x, use_running_average=False)
    y, s = jax.pmap(step(grouped), axis_name="data", in_axes=(None, 0))(v, x.reshape(8, 8, 4, 3))
    diffs = []
    for half in (0, 1):
        y_h, s_h = step(BatchNorm(momentum=0.9))(v, x[32 * half : 32 * (half + 1)])
        diffs.append(maxdiff(y[4 * half : 4 * (half + 1)].reshape(32, 4, 3), y_h))
        for d in range(4 * half, 4 * (half + 1)):
            diffs.append(maxdiff(jax.tree.map(lambda a, d=d: a[d], s), s_h))
    out["pmap_axis_index_groups"] = max(diffs)
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def child():
    return run_on_cpu_devices(CHILD, devices=8)


PLAIN = ["bn", "bn_slow_var", "bn_axis1"]
LOCAL = [*PLAIN, "ghost4", "ghost8_axis1"]  # ghost batches inside one device
MODES = ["Auto", "Explicit"]


def test_single_device_reference_equals_flax(child):
    assert set(child["reference_vs_flax"]) == set(PLAIN)
    assert max(child["reference_vs_flax"].values()) <= TOL, child["reference_vs_flax"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", LOCAL)
def test_jit_with_sharded_batch_equals_single_device(child, name, mode):
    r = child["jit"][f"{name}/{mode}"]
    assert r["y"] <= TOL and r["stats"] <= TOL, r
    assert r["y_devices"] == 8 and r["y_sharded"], r  # the output stays split over devices


def test_ghost_groups_straddling_devices(child):
    # Auto mesh axes: XLA moves the data and the result is exact
    r = child["jit"]["ghost16/Auto"]
    assert r["y"] <= TOL and r["stats"] <= TOL, r
    # Explicit mesh axes: a clear error naming the argument instead of a hidden reshard
    msg = child["errors"]["ghost16/Explicit"]
    assert "virtual_batch_size=16 does not divide the per-device batch 8" in msg
    assert set(child["errors"]) == {"ghost16/Explicit"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", LOCAL)
def test_shard_map_with_axis_name_equals_global(child, name, mode):
    r = child["shard_map"][f"{name}/{mode}"]
    assert r["y"] <= TOL and r["stats"] <= TOL, r


def test_pmap_axis_index_groups(child):
    assert child["pmap_axis_index_groups"] <= TOL
