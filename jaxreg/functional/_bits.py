"""Counter-based random bits: a keyed integer hash of each element's global position.

Private module. ``jax.random`` runs the threefry block cipher for every 32-bit
word it returns, which dominates the cost of a dropout mask on a CPU. Here the
key is spent once per call on two 32-bit seed words ``(b, a)`` (``a`` forced
odd), and element ``i`` (its row-major position in the full logical array) gets

    bits[i] = mix(a * i + b)   (mod 2**32)

where ``mix`` is a xorshift-multiply finaliser ("lowbias32", constants found by
C. Wellons' hash prospector, 2018). ``mix`` is a bijection of ``uint32`` with
good avalanche, so every position gets its own well-mixed word; the key-dependent
odd multiplier makes the masks of two keys unrelated permutations of each other
rather than shifted copies (``benchmarks/bench_dropout.py`` measures this single
round against two rounds and against 16-bit pairs; it was the fastest).

Properties the dropout kernels rely on:

* the bits depend only on (key, global position, logical shape): a sharded
  array under ``jax.jit`` gets bit-for-bit the same mask whatever the sharding,
  and each device computes its own slice without communication;
* the same key gives the same bits; callers derive keys per layer and per step
  (flax's ``make_rng`` folds in the module path; ``fold_in(key, step)``);
* arrays of ``2**32`` elements or more hash the leading axes into a per-row
  offset, so positions never wrap around.

Under ``shard_map``/``pmap`` a kernel sees only its local block: fold
``lax.axis_index`` into the key there, as with ``jax.random``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "hash_bits",
    "keep_mask",
    "keep_threshold",
    "mix32",
    "normal",
    "positions",
    "seed_words",
    "uniform",
]

_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)
_LIMIT = 2**32  # positions are exact below this many elements per hashed block
_BITS = 16  # threshold resolution of keep masks: realised keep = t / 2**16


def mix32(x: jax.Array) -> jax.Array:
    """The lowbias32 finaliser: a bijective xorshift-multiply mix of ``uint32`` words."""
    x = x ^ (x >> 16)
    x = x * _M1
    x = x ^ (x >> 15)
    x = x * _M2
    return x ^ (x >> 16)


def seed_words(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two ``uint32`` words from ``key`` (typed or raw): offset ``b`` and odd multiplier ``a``."""
    words = jax.random.bits(key, (2,), jnp.uint32)
    return words[0], words[1] | np.uint32(1)


def _linear(shape: tuple[int, ...], axes: range) -> jax.Array:
    """Row-major position over ``axes`` of ``shape`` (other axes ignored), as uint32."""
    pos = None
    stride = 1
    for ax in reversed(axes):
        if shape[ax] == 1:
            continue
        term = lax.broadcasted_iota(jnp.uint32, shape, ax)
        if stride != 1:
            term = term * np.uint32(stride)
        pos = term if pos is None else pos + term
        stride *= shape[ax]
    return jnp.zeros(shape, jnp.uint32) if pos is None else pos


def positions(shape: tuple[int, ...], *, limit: int = _LIMIT) -> tuple[jax.Array, jax.Array | None]:
    """Global positions as ``(lo, hi)``: ``lo`` over the trailing axes, ``hi`` over the rest.

    The trailing block is the longest suffix of axes with fewer than ``limit``
    elements, so ``lo`` is exact; ``hi`` is None unless the array is that large.
    """
    shape = tuple(int(d) for d in shape)
    split = len(shape)
    while split > 0 and math.prod(shape[split - 1 :]) < limit:
        split -= 1
    if split == len(shape) and shape:
        raise ValueError(
            f"an axis of {shape[-1]} elements is too long for 32-bit positions (shape {shape})."
        )
    lo = _linear(shape, range(split, len(shape)))
    hi = _linear(shape, range(split)) if math.prod(shape[:split]) > 1 else None
    return lo, hi


def hash_bits(key: jax.Array, shape: tuple[int, ...], *, limit: int = _LIMIT) -> jax.Array:
    """32 random bits per element of ``shape``: ``mix(a * position + b)``."""
    b, a = seed_words(key)
    lo, hi = positions(shape, limit=limit)
    word = lo * a + b
    if hi is not None:  # > 2**32 elements: a pseudo-random offset per leading row
        word = word + mix32(mix32(hi ^ b) + a)
    return mix32(word)


def keep_threshold(rate: jax.Array) -> tuple[jax.Array, jax.Array]:
    """16-bit keep threshold ``t = round((1 - rate) 2**16)`` and the realised keep ``t / 2**16``.

    ``rate`` may be traced; it is clipped to [0, 1]. An element is kept when the
    top 16 bits of its hash are below ``t``, which happens with probability
    exactly ``t / 2**16`` (at most ``2**-17`` from ``1 - rate``).
    """
    rate = jnp.clip(jnp.asarray(rate, jnp.float32), 0.0, 1.0)
    t = jnp.round((1.0 - rate) * float(2**_BITS)).astype(jnp.uint32)
    return t, t.astype(jnp.float32) / float(2**_BITS)


def keep_mask(key: jax.Array, shape: tuple[int, ...], threshold: jax.Array) -> jax.Array:
    """Boolean mask, True with probability ``threshold / 2**16`` per element."""
    return (hash_bits(key, shape) >> (32 - _BITS)) < threshold


def uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 uniforms ``(k + 1/2) / 2**23`` on the open interval (0, 1), from the top 23 bits.

    23 bits keep ``k + 1/2`` exact in float32, so 0 and 1 never occur.
    """
    top = (hash_bits(key, shape) >> 9).astype(jnp.float32)
    return (top + 0.5) * float(2.0**-23)


def normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 standard normals by inverting the CDF of :func:`uniform` (tails cut at about 5.3)."""
    return float(np.sqrt(2.0)) * lax.erf_inv(2.0 * uniform(key, shape) - 1.0)
