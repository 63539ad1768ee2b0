"""One conformance suite that every jaxreg transform passes.

Each registry entry names a factory, the keyword arguments of a working instance,
the numeric hyperparameter to sweep with ``jax.vmap`` and the arguments that
``optax.inject_hyperparams`` must keep static.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg
from tests.conftest import assert_trees_close, model_params


def guarded_sgd(learning_rate):
    return jaxreg.skip_non_finite(optax.sgd(learning_rate))


def guarded_momentum_checked(learning_rate):
    return jaxreg.skip_non_finite(optax.sgd(learning_rate, momentum=0.9), check_updates=True)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    factory: Callable
    kwargs: dict
    hyper: str  # numeric argument swept by vmap / injected
    values: tuple = (0.05, 0.3, 1.5)
    static_args: tuple = ()
    per_leaf: bool = True  # output of a leaf depends on that leaf only
    supports_mask_arg: bool = True

    def make(self, **override):
        return self.factory(**{**self.kwargs, **override})


SGD = optax.sgd(0.1)
REGISTRY = [
    Case("add_l2_decay", jaxreg.add_l2_decay, {"weight_decay": 0.1}, "weight_decay"),
    Case(
        "coupled_weight_decay",
        jaxreg.coupled_weight_decay,
        {"optimizer": optax.adam(0.1), "weight_decay": 0.1},
        "weight_decay",
        per_leaf=True,
    ),
    Case(
        "decoupled_weight_decay",
        jaxreg.decoupled_weight_decay,
        {"optimizer": optax.adam(0.1), "weight_decay": 0.1, "learning_rate": 0.1},
        "weight_decay",
    ),
    Case(
        "independent_weight_decay",
        jaxreg.independent_weight_decay,
        {"optimizer": SGD, "weight_decay": 0.01},
        "weight_decay",
        values=(0.0, 0.01, 0.2),
    ),
    Case("prox_l1", jaxreg.prox_l1, {"strength": 0.5, "learning_rate": 0.5}, "strength"),
    Case(
        "prox_elastic_net",
        jaxreg.prox_elastic_net,
        {"strength": 0.5, "learning_rate": 0.5, "l1_ratio": 0.7},
        "strength",
    ),
    Case(
        "prox_group_lasso",
        jaxreg.prox_group_lasso,
        {"strength": 0.5, "learning_rate": 0.5},
        "strength",
        static_args=("axis",),
    ),
    Case(
        "keep_max_norm",
        jaxreg.keep_max_norm,
        {"max_value": 1.0},
        "max_value",
        (0.5, 1.0, 3.0),
        static_args=("axis",),
    ),
    Case(
        "keep_min_max_norm",
        jaxreg.keep_min_max_norm,
        {"min_value": 0.5, "max_value": 1.5, "rate": 0.8},
        "rate",
        (0.0, 0.5, 1.0),
        static_args=("axis",),
    ),
    Case(
        "clip_by_global_norm",
        jaxreg.clip_by_global_norm,
        {"max_norm": 1.0},
        "max_norm",
        per_leaf=False,
        supports_mask_arg=False,
    ),
    Case(
        "clip_by_unit_norm",
        jaxreg.clip_by_unit_norm,
        {"max_norm": 0.5},
        "max_norm",
        static_args=("axis",),
    ),
    Case("clip_by_leaf_norm", jaxreg.clip_by_leaf_norm, {"max_norm": 0.5}, "max_norm"),
    Case(
        "adaptive_grad_clip",
        jaxreg.adaptive_grad_clip,
        {"clipping": 0.05},
        "clipping",
        static_args=("axis",),
    ),
    Case(
        "skip_non_finite",
        guarded_sgd,
        {"learning_rate": 0.1},
        "learning_rate",
        per_leaf=True,
        supports_mask_arg=False,
    ),
    Case(
        "skip_non_finite_checked",
        guarded_momentum_checked,
        {"learning_rate": 0.1},
        "learning_rate",
        supports_mask_arg=False,
    ),
]
REGISTRY.append(
    Case(
        "lookahead",
        jaxreg.lookahead,
        {"sync_period": 2, "slow_step_size": 0.5},
        "slow_step_size",
        (0.0, 0.5, 1.0),
        static_args=("sync_period",),
        supports_mask_arg=False,
    )
)
# Transforms with no numeric hyperparameter: checked by the parts that apply.
NO_HYPER = [
    Case("keep_unit_norm", jaxreg.keep_unit_norm, {}, ""),
    Case("keep_non_negative", jaxreg.keep_non_negative, {}, ""),
]
ALL = REGISTRY + NO_HYPER
ids = [c.name for c in ALL]
hyper_ids = [c.name for c in REGISTRY]


def grads_like(params, key=1, scale=1.0):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(key), len(leaves))
    return treedef.unflatten(
        [
            (scale * jax.random.normal(k, x.shape)).astype(x.dtype)
            for k, x in zip(keys, leaves, strict=True)
        ]
    )


def run(tx, params, steps=3, update=None):
    """Apply ``tx`` for a few steps of fixed gradients; return last updates, params, state."""
    update = update or tx.update
    state = tx.init(params)
    updates = None
    for i in range(steps):
        g = grads_like(params, key=10 + i)
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
    return updates, params, state


def test_every_public_transform_is_in_the_registry():
    guards = (guarded_sgd, guarded_momentum_checked)
    factories = {c.factory for c in ALL if c.factory not in guards} | {jaxreg.skip_non_finite}
    public = {
        getattr(jaxreg, n)
        for n in jaxreg.transforms.__all__
        if n[0].islower() and n not in ("global_norm", "soft_threshold")
    }
    assert public == factories


@pytest.mark.parametrize("case", ALL, ids=ids)
def test_jit_equals_eager(case):
    tx = case.make()
    p = model_params()
    eager = run(tx, p)
    jitted = run(tx, p, update=jax.jit(tx.update))
    assert_trees_close(eager, jitted, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ALL, ids=ids)
def test_init_on_shape_dtype_structs(case):
    tx = case.make()
    p = model_params()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), p)
    concrete = tx.init(p)
    for shapes in (jax.eval_shape(tx.init, abstract), tx.init(abstract)):
        assert jax.tree.structure(shapes) == jax.tree.structure(concrete)
        for s, c in zip(jax.tree.leaves(shapes), jax.tree.leaves(concrete), strict=True):
            assert (s.shape, s.dtype) == (c.shape, c.dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("case", ALL, ids=ids)
def test_state_stable_and_dtype_kept(case, dtype):
    tx = case.make()
    p = model_params(dtype=dtype)
    s0 = tx.init(p)
    updates, _, s3 = run(tx, p)
    assert jax.tree.structure(s0) == jax.tree.structure(s3)
    for a, b in zip(jax.tree.leaves(s0), jax.tree.leaves(s3), strict=True):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
    for u in jax.tree.leaves(updates):
        assert u.dtype == dtype
        assert bool(jnp.all(jnp.isfinite(u.astype(jnp.float32))))


@pytest.mark.parametrize("case", ALL, ids=ids)
def test_strict_dtype_promotion(case):
    # optax.adam itself breaks under strict promotion; check ours around SGD.
    tx = case.make(optimizer=optax.sgd(0.1)) if "optimizer" in case.kwargs else case.make()
    p = model_params(dtype=jnp.bfloat16)
    with jax.numpy_dtype_promotion("strict"):
        updates, _, _ = run(tx, p)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("case", ALL, ids=ids)
def test_inside_chain_equals_composition(case):
    tx = case.make()
    chained = optax.chain(optax.scale(0.5), tx)
    p = model_params()
    g = grads_like(p)
    u_chain, _ = chained.update(g, chained.init(p), p)
    u_manual, _ = tx.update(jax.tree.map(lambda x: 0.5 * x, g), tx.init(p), p)
    assert_trees_close(u_chain, u_manual)


def _conv_excluded(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "Conv_0" not in jax.tree_util.keystr(path), params
    )


@pytest.mark.parametrize("case", ALL, ids=ids)
def test_under_optax_masked(case):
    tx = case.make()
    p = model_params()
    g = grads_like(p)
    masked = optax.masked(tx, _conv_excluded)
    u_masked, _ = masked.update(g, masked.init(p), p)
    np.testing.assert_array_equal(u_masked["Conv_0"]["kernel"], g["Conv_0"]["kernel"])
    if case.per_leaf:
        u_full, _ = tx.update(g, tx.init(p), p)
        assert_trees_close(u_masked["Dense_0"], u_full["Dense_0"])
    else:
        assert not np.allclose(u_masked["Dense_0"]["kernel"], g["Dense_0"]["kernel"])


@pytest.mark.parametrize("case", [c for c in ALL if c.supports_mask_arg], ids=lambda c: c.name)
def test_mask_argument_equals_optax_masked(case):
    p = model_params()
    g = grads_like(p)
    tx_arg = case.make(mask=_conv_excluded)
    u_arg, _, _ = run(tx_arg, p)
    if "optimizer" in case.kwargs:
        # The mask selects what is decayed; the optimizer still sees every leaf,
        # so a masked-out leaf gets the bare optimizer's update.
        u_opt, _, _ = run(case.kwargs["optimizer"], p)
        u_full, _, _ = run(case.make(), p)
        assert_trees_close(u_arg["Conv_0"], u_opt["Conv_0"], rtol=1e-5)
        assert_trees_close(u_arg["Dense_0"], u_full["Dense_0"], rtol=1e-5)
        assert not np.allclose(u_arg["Dense_0"]["kernel"], u_opt["Dense_0"]["kernel"])
        return
    tx_masked = optax.masked(case.make(), _conv_excluded)
    u_masked, _, _ = run(tx_masked, p)
    assert_trees_close(u_arg, u_masked, rtol=1e-5)
    u_arg1, _ = tx_arg.update(g, tx_arg.init(p), p)
    np.testing.assert_array_equal(u_arg1["Conv_0"]["kernel"], g["Conv_0"]["kernel"])


@pytest.mark.parametrize("case", REGISTRY, ids=hyper_ids)
def test_inject_hyperparams_same_updates(case):
    p = model_params()
    plain = case.make()
    injected = optax.inject_hyperparams(case.factory, static_args=case.static_args)(**case.kwargs)
    assert_trees_close(run(plain, p)[:2], run(injected, p)[:2], rtol=1e-5)
    # The injected value can be changed in the state without rebuilding.
    state = injected.init(p)
    state.hyperparams[case.hyper] = jnp.asarray(case.values[2], jnp.float32)
    g = grads_like(p)
    u_changed, _ = injected.update(g, state, p)
    u_ref, _ = case.make(**{case.hyper: case.values[2]}).update(
        g, case.make(**{case.hyper: case.values[2]}).init(p), p
    )
    assert_trees_close(u_changed, u_ref, rtol=1e-5)


@pytest.mark.parametrize("case", REGISTRY, ids=hyper_ids)
def test_vmap_over_hyperparameter_equals_separate_runs(case):
    p = model_params()

    def final_params(h):
        return run(case.make(**{case.hyper: h}), p)[1]

    values = jnp.asarray(case.values, jnp.float32)
    stacked = jax.vmap(final_params)(values)
    for i, v in enumerate(case.values):
        assert_trees_close(jax.tree.map(lambda x, i=i: x[i], stacked), final_params(v), rtol=1e-5)
    # the members really differ: the hyperparameter is not ignored
    first, last = (jax.tree.leaves(jax.tree.map(lambda x, i=i: x[i], stacked)) for i in (0, 2))
    assert any(not np.allclose(a, b) for a, b in zip(first, last, strict=True))


@pytest.mark.parametrize("case", REGISTRY, ids=hyper_ids)
def test_schedule_hyperparameter(case):
    """A schedule evaluated at the step count equals the constant at that step."""
    v0, v1 = case.values[0], case.values[2]

    def schedule(count):
        return jnp.where(count < 1, v0, v1)

    p = model_params()
    tx = case.make(**{case.hyper: schedule})
    g = grads_like(p)
    state = tx.init(p)
    u0, state = tx.update(g, state, p)
    u1, _ = tx.update(g, state, p)
    ref0, _ = case.make(**{case.hyper: v0}).update(g, case.make(**{case.hyper: v0}).init(p), p)
    assert_trees_close(u0, ref0, rtol=1e-5)
    if "optimizer" not in case.kwargs and case.factory not in (
        guarded_sgd,
        guarded_momentum_checked,
    ):
        ref1, _ = case.make(**{case.hyper: v1}).update(g, case.make(**{case.hyper: v1}).init(p), p)
        assert_trees_close(u1, ref1, rtol=1e-5)


@pytest.mark.parametrize("case", ALL, ids=ids)
def test_no_retrace_across_steps(case):
    tx = case.make()
    p = model_params()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(g, state, params):
        return tx.update(g, state, params)

    state = tx.init(p)
    for i in range(3):
        u, state = step(grads_like(p, key=i), state, p)
        p = optax.apply_updates(p, u)
    chex.clear_trace_counter()


@pytest.mark.parametrize("case", ALL, ids=ids)
def test_none_leaves_pass_through(case):
    p = {"a": jnp.ones((3, 2)), "frozen": None}
    g = {"a": jnp.full((3, 2), 0.5), "frozen": None}
    tx = case.make()
    u, _ = tx.update(g, tx.init(p), p)
    assert u["frozen"] is None
    assert u["a"].shape == (3, 2)


@pytest.mark.parametrize("case", ALL, ids=ids)
def test_state_and_params_can_be_donated(case):
    """No two state leaves share a buffer, so ``jit(..., donate_argnums)`` works."""
    tx = case.make()

    def step(params, state, g):
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    donated = jax.jit(step, donate_argnums=(0, 1))
    p = model_params()
    expected = step(p, tx.init(p), grads_like(p))
    got = donated(model_params(), tx.init(model_params()), grads_like(p))
    assert_trees_close(got, expected, rtol=1e-6)
