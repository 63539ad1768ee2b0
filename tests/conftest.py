"""Shared fixtures and helpers for the jaxreg tests."""

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
