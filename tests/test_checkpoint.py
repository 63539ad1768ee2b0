"""Tests for jaxreg.checkpoint: round trips, resume == uninterrupted, retention, errors."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxreg.checkpoint import (
    all_steps,
    latest_step,
    restore_checkpoint,
    save_checkpoint,
)
from tests.conftest import run_on_cpu_devices


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(4)(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        return nn.Dense(2)(nn.relu(x))


class State(train_state.TrainState):
    batch_stats: Any
    key: jax.Array
    ema: Any
    nothing: Any
    meta: Any


def make_state(seed):
    """A realistic training state; different seeds give different values, same structure."""
    # jitted once (eager op-by-op compilation of this takes ~10 s on a 2-core CPU)
    state = _make_arrays(seed)
    return state.replace(meta={"epoch": seed, "best": 0.5 + seed, "done": False})


@jax.jit
def _make_arrays(seed):
    model = Net()
    k_init, k_data, k_run = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(k_data, (8, 3))
    variables = model.init(k_init, x)
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.inject_hyperparams(optax.adam)(learning_rate=1e-2),
    )
    state = State.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables["batch_stats"],
        key=k_run,
        ema=jax.tree.map(lambda p: p.astype(jnp.bfloat16), variables["params"]),
        nothing=None,
        meta=None,
    )

    def loss(params):
        out, upd = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.mean(out**2), upd

    grads, upd = jax.grad(loss, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=upd["batch_stats"])
    return state.replace(
        step=jnp.asarray(state.step, jnp.int32), key=jax.random.fold_in(state.key, 1)
    )


def assert_trees_equal(a, b):
    # same leaf paths and node types (static fields such as apply_fn may be other objects)
    assert type(a) is type(b)
    flat_a, flat_b = (
        jax.tree_util.tree_flatten_with_path(a)[0],
        jax.tree_util.tree_flatten_with_path(b)[0],
    )
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (_, x), (_, y) in zip(flat_a, flat_b, strict=True):
        assert type(x) is type(y) or (isinstance(x, jax.Array) and isinstance(y, jax.Array))
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert x.dtype == y.dtype
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_realistic_state(tmp_path):
    saved = make_state(0)
    fresh = make_state(1)
    # the fresh target really differs, so an untouched target would fail the check
    assert not np.array_equal(saved.params["Dense_0"]["kernel"], fresh.params["Dense_0"]["kernel"])
    path = save_checkpoint(tmp_path, saved, saved.step)
    assert path == tmp_path / "checkpoint_1.msgpack" and path.is_file()

    restored = restore_checkpoint(tmp_path, fresh)
    assert_trees_equal(restored, saved)
    assert restored.step.dtype == jnp.int32
    assert restored.ema["Dense_0"]["kernel"].dtype == jnp.bfloat16
    assert restored.nothing is None
    assert restored.meta == {"epoch": 0, "best": 0.5, "done": False}
    assert jax.random.key_impl(restored.key) == "threefry2x32"
    adam_state = restored.opt_state[1].inner_state[0]
    assert isinstance(adam_state, optax.ScaleByAdamState)
    assert restored.opt_state[1].hyperparams["learning_rate"] == pytest.approx(1e-2)
    # static fields come from the target and still work
    assert restored.apply_fn is fresh.apply_fn and restored.tx is fresh.tx
    stepped = jax.jit(lambda s: s.apply_gradients(grads=s.params))(restored)
    assert int(stepped.step) == 2 and int(stepped.opt_state[1].count) == 2


def test_round_trip_into_abstract_target(tmp_path):
    saved = make_state(0)
    save_checkpoint(tmp_path, saved, 3)
    abstract = jax.eval_shape(lambda: make_state(1))
    assert isinstance(abstract.params["Dense_0"]["kernel"], jax.ShapeDtypeStruct)
    restored = restore_checkpoint(tmp_path, abstract)
    # Python scalars in the target became ShapeDtypeStructs under eval_shape
    restored = restored.replace(meta=saved.meta)
    assert_trees_equal(restored, saved)


def test_rbg_key_and_raw_uint32_key(tmp_path):
    state = {
        "typed": jax.random.split(jax.random.key(3, impl="rbg"), 2),
        "raw": jax.random.PRNGKey(4),
    }
    save_checkpoint(tmp_path, state, 0)
    target = {
        "typed": jax.random.split(jax.random.key(9, impl="rbg"), 2),
        "raw": jax.random.PRNGKey(9),
    }
    restored = restore_checkpoint(tmp_path, target)
    assert_trees_equal(restored, state)
    with pytest.raises(ValueError, match=r"\['typed'\].*'rbg'.*threefry2x32"):
        restore_checkpoint(
            tmp_path, {"typed": jax.random.split(jax.random.key(0), 2), "raw": target["raw"]}
        )


def test_dtype_follows_target(tmp_path):
    save_checkpoint(tmp_path, {"w": jnp.array([1.0, 2.5], jnp.float32)}, 0)
    out = restore_checkpoint(tmp_path, {"w": jnp.zeros(2, jnp.bfloat16)})
    assert out["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out["w"], np.float32), [1.0, 2.5])
    out = restore_checkpoint(tmp_path, {"w": np.zeros(2, np.float64)})
    assert isinstance(out["w"], np.ndarray) and out["w"].dtype == np.float64


# --------------------------------------------------------------------------- resume


def _regression():
    kx, kw = jax.random.split(jax.random.key(42))
    x = jax.random.normal(kx, (32, 4))
    y = x @ jax.random.normal(kw, (4,)) + 0.3
    tx = optax.adam(5e-2)

    @jax.jit
    def init(seed):
        params = {"w": jnp.zeros(4), "b": jnp.zeros(())}
        return {
            "params": params,
            "opt_state": tx.init(params),
            "step": jnp.int32(0),
            "key": jax.random.key(seed),
        }

    @jax.jit
    def train_step(state):
        key = jax.random.fold_in(state["key"], state["step"])

        def loss(p):
            keep = jax.random.bernoulli(key, 0.8, x.shape)
            xd = jnp.where(keep, x / 0.8, 0.0)
            return jnp.mean((xd @ p["w"] + p["b"] - y) ** 2)

        grads = jax.grad(loss)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        return {
            "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state,
            "step": state["step"] + 1,
            "key": state["key"],
        }

    return init, train_step


def test_resume_equals_uninterrupted(tmp_path):
    init, train_step = _regression()
    straight = init(0)
    for _ in range(10):
        straight = train_step(straight)

    first = init(0)
    for _ in range(5):
        first = train_step(first)
    save_checkpoint(tmp_path, first, first["step"])
    del first
    resumed = restore_checkpoint(tmp_path, init(123))
    assert int(resumed["step"]) == 5
    middle = resumed["params"]["w"]
    for _ in range(5):
        resumed = train_step(resumed)

    assert not np.array_equal(middle, resumed["params"]["w"])  # training went on
    assert int(resumed["step"]) == 10
    pairs = zip(
        jax.tree.leaves(straight["params"]), jax.tree.leaves(resumed["params"]), strict=True
    )
    for a, b in pairs:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bitwise


# --------------------------------------------------------------------------- files


def test_keep_latest_all_steps(tmp_path):
    d = tmp_path / "new" / "dir"
    assert all_steps(d) == [] and latest_step(d) is None
    for s in [1, 2, 3, 4]:
        save_checkpoint(d, {"w": jnp.full(2, s)}, jnp.int32(s), keep=2)
    assert sorted(p.name for p in d.iterdir()) == ["checkpoint_3.msgpack", "checkpoint_4.msgpack"]
    assert all_steps(d) == [3, 4] and latest_step(d) == 4
    assert restore_checkpoint(d, {"w": jnp.zeros(2, jnp.int32)})["w"].tolist() == [4, 4]
    assert restore_checkpoint(d, {"w": jnp.zeros(2, jnp.int32)}, step=3)["w"].tolist() == [3, 3]

    save_checkpoint(d, {"w": jnp.zeros(2)}, 10, keep=None)
    save_checkpoint(d, {"w": jnp.zeros(2)}, 11, keep=None)
    assert all_steps(d) == [3, 4, 10, 11]
    # the checkpoint just written is never deleted, even below `keep` newer ones
    save_checkpoint(d, {"w": jnp.zeros(2)}, 5, keep=1)
    assert all_steps(d) == [5, 11]


def test_overwrite_refused_unless_asked(tmp_path):
    save_checkpoint(tmp_path, {"w": jnp.zeros(2)}, 7)
    with pytest.raises(FileExistsError, match=r"step=7"):
        save_checkpoint(tmp_path, {"w": jnp.ones(2)}, 7)
    target = {"w": jnp.full(2, 9.0)}
    assert restore_checkpoint(tmp_path, target)["w"].tolist() == [0.0, 0.0]
    save_checkpoint(tmp_path, {"w": jnp.ones(2)}, 7, overwrite=True)
    assert restore_checkpoint(tmp_path, target)["w"].tolist() == [1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_7.msgpack"]  # no temp files


@pytest.mark.parametrize("step", [-1, 1.5, jnp.zeros(2, jnp.int32)])
def test_bad_step(tmp_path, step):
    with pytest.raises((ValueError, TypeError), match="step"):
        save_checkpoint(tmp_path, {"w": 0.0}, step)


@pytest.mark.parametrize("keep", [0, -1, 1.0])
def test_bad_keep(tmp_path, keep):
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(tmp_path, {"w": 0.0}, 0, keep=keep)


# --------------------------------------------------------------------------- errors


def test_missing_directory_or_checkpoint(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        restore_checkpoint(missing, {"w": 0.0})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        restore_checkpoint(empty, {"w": 0.0})
    save_checkpoint(empty, {"w": 0.0}, 2)
    with pytest.raises(FileNotFoundError, match=r"step=3.*\[2\]"):
        restore_checkpoint(empty, {"w": 0.0}, step=3)


def test_structure_mismatch_names_path(tmp_path):
    state = make_state(0)
    save_checkpoint(tmp_path, state, 0)
    extra = state.replace(batch_stats={**state.batch_stats, "Extra_0": {"mean": jnp.zeros(4)}})
    with pytest.raises(
        ValueError, match=r"structure mismatch.*\.batch_stats\['Extra_0'\]\['mean'\]"
    ):
        restore_checkpoint(tmp_path, extra)
    save_checkpoint(tmp_path, state.replace(nothing={"a": 1.0}), 1)
    with pytest.raises(
        ValueError, match=r"checkpoint has \.nothing\['a'\] but the target does not"
    ):
        restore_checkpoint(tmp_path, state, step=1)


def test_none_vs_array_is_a_structure_mismatch(tmp_path):
    save_checkpoint(tmp_path, {"a": jnp.zeros(2), "b": jnp.ones(3)}, 0)
    with pytest.raises(ValueError, match=r"checkpoint has \['b'\] but the target does not"):
        restore_checkpoint(tmp_path, {"a": jnp.zeros(2), "b": None})


def test_shape_mismatch_names_path(tmp_path):
    state = make_state(0)
    save_checkpoint(tmp_path, state, 0)
    params = dict(state.params)
    params["Dense_1"] = {**params["Dense_1"], "kernel": jnp.zeros((4, 3))}
    with pytest.raises(
        ValueError, match=r"shape mismatch at \.params\['Dense_1'\]\['kernel'\].*\(4, 2\).*\(4, 3\)"
    ):
        restore_checkpoint(tmp_path, state.replace(params=params))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file_names_file(tmp_path, damage):
    path = save_checkpoint(tmp_path, make_state(0), 4)
    data = path.read_bytes()
    path.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"\x00not msgpack", "empty": b""}[damage]
    )
    with pytest.raises(ValueError, match=r"checkpoint_4\.msgpack"):
        restore_checkpoint(tmp_path, make_state(1))


# --------------------------------------------------------------------------- sharding


def test_restore_uses_target_sharding_one_device(tmp_path):
    mesh = jax.make_mesh((1,), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    save_checkpoint(tmp_path, {"w": jnp.arange(4.0), "key": jax.random.key(0)}, 0)
    target = {
        "w": jax.device_put(jnp.zeros(4), sharding),
        "key": jax.device_put(jax.random.key(1), NamedSharding(mesh, P())),
    }
    out = restore_checkpoint(tmp_path, target)
    assert out["w"].sharding == sharding
    assert out["key"].sharding == target["key"].sharding
    assert out["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    sds = {"w": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=sharding), "key": target["key"]}
    assert restore_checkpoint(tmp_path, sds)["w"].sharding == sharding


def test_sharded_save_and_restore_on_four_devices(tmp_path):
    script = f"""
import json, jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxreg.checkpoint import save_checkpoint, restore_checkpoint
mesh = jax.make_mesh((4,), ("data",))
rows = NamedSharding(mesh, P("data"))
w = jax.device_put(jnp.arange(16.0).reshape(8, 2), rows)
save_checkpoint({str(tmp_path)!r}, {{"w": w}}, 0)
replicated = NamedSharding(mesh, P())
out = restore_checkpoint({str(tmp_path)!r}, {{"w": jax.device_put(jnp.zeros((8, 2)), replicated)}})
abstract = {{"w": jax.ShapeDtypeStruct((8, 2), jnp.float32, sharding=rows)}}
back = restore_checkpoint({str(tmp_path)!r}, abstract)
print("RESULT " + json.dumps({{
    "replicated": out["w"].sharding == replicated,
    "rows": back["w"].sharding == rows,
    "shards": len(back["w"].addressable_shards),
    "equal": bool(np.array_equal(np.asarray(back["w"]), np.asarray(w))),
}}))
"""
    result = run_on_cpu_devices(script, devices=4)
    assert result == {"replicated": True, "rows": True, "shards": 4, "equal": True}
