"""Masks: builders, presets, combination, structure errors and reports."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import jaxreg


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        x = nn.LayerNorm()(x.reshape(x.shape[0], -1))
        x = nn.Embed(10, 3)(jnp.zeros(x.shape[0], jnp.int32)) + nn.Dense(3)(x)
        return nn.Dense(2)(x)


@pytest.fixture(scope="module")
def flax_params():
    variables = _Net().init(jax.random.key(0), jnp.ones((1, 6, 6, 1)))
    return variables["params"]


def test_by_kernels_on_a_real_flax_model(flax_params):
    report = jaxreg.mask_report(flax_params, jaxreg.by_kernels())
    assert report.selected == [
        "Conv_0/kernel",
        "Dense_0/kernel",
        "Dense_1/kernel",
        "Embed_0/embedding",
    ]
    assert set(report.excluded) == {
        "BatchNorm_0/bias",
        "BatchNorm_0/scale",
        "Conv_0/bias",
        "Dense_0/bias",
        "Dense_1/bias",
        "LayerNorm_0/bias",
        "LayerNorm_0/scale",
    }


def test_by_kernels_excludes_rank2_params_inside_norm_layers():
    params = {"bn1": {"scale": jnp.ones((2, 3))}, "block": {"ln": {"w": jnp.ones((2, 3))}}}
    assert jaxreg.mask_report(params, jaxreg.by_kernels()).selected == []


def test_by_path_and_by_ndim_and_combinators(flax_params):
    kernels = jaxreg.by_path(r"/kernel$")
    assert jaxreg.mask_report(flax_params, kernels).selected == [
        "Conv_0/kernel",
        "Dense_0/kernel",
        "Dense_1/kernel",
    ]
    not_dense1 = kernels & ~jaxreg.by_path("^Dense_1/")
    assert jaxreg.mask_report(flax_params, not_dense1).selected == [
        "Conv_0/kernel",
        "Dense_0/kernel",
    ]
    either = jaxreg.by_path("^Embed") | jaxreg.by_path("^Dense_1/bias$")
    assert jaxreg.mask_report(flax_params, either).selected == [
        "Dense_1/bias",
        "Embed_0/embedding",
    ]
    assert len(jaxreg.mask_report(flax_params, jaxreg.by_ndim(1)).selected) == 11
    assert "by_path" in repr(not_dense1)


def test_masks_work_on_shape_dtype_structs(flax_params):
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), flax_params)
    assert jaxreg.by_kernels()(abstract) == jaxreg.by_kernels()(flax_params)


def test_prefix_mask_covers_subtrees(flax_params):
    prefix = {k: k.startswith("Dense") for k in flax_params}
    full = jaxreg.resolve_mask(prefix, flax_params)
    assert full["Dense_0"] == {"bias": True, "kernel": True}
    assert full["Conv_0"] == {"bias": False, "kernel": False}


def test_mismatched_mask_names_the_path():
    params = {"a": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "b": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"'b' is in the params but not in the mask"):
        jaxreg.resolve_mask({"a": True}, params)
    with pytest.raises(ValueError, match=r"'a/typo' is in the mask but not in the params"):
        jaxreg.resolve_mask({"a": {"kernel": True, "bias": True, "typo": False}, "b": True}, params)
    with pytest.raises(ValueError, match=r"bools.*at 'a'"):
        jaxreg.resolve_mask({"a": 1.0, "b": True}, params)


def test_wrong_mask_in_a_transform_is_reported_at_trace_time():
    params = {"a": jnp.ones((2, 2)), "b": jnp.ones(3)}
    tx = jaxreg.keep_max_norm(1.0, mask={"a": True, "c": True})
    with pytest.raises(ValueError, match=r"mask does not match.*'b'"):
        tx.update(params, tx.init(params), params)
    with pytest.raises(ValueError, match=r"mask leaves must be Python bools"):
        jaxreg.adaptive_grad_clip(0.1, mask={"a": jnp.array(True)})


def test_report_counts_and_table(flax_params):
    report = jaxreg.mask_report(flax_params, jaxreg.by_kernels())
    kernel_sizes = sum(
        x.size
        for path, x in jax.tree_util.tree_flatten_with_path(flax_params)[0]
        if jax.tree_util.keystr(path).endswith(("['kernel']", "['embedding']"))
    )
    assert report.selected_size == kernel_sizes
    text = str(report)
    assert "Conv_0/kernel" in text and "4/11 leaves" in text


def test_bad_builder_arguments():
    with pytest.raises(ValueError, match="min_ndim"):
        jaxreg.by_ndim(-1)
    with pytest.raises(ValueError, match="regex"):
        jaxreg.by_path("(")
