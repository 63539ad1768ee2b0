"""Parameter masks: which leaves a decay, penalty or constraint acts on.

A mask is a pytree of Python bools with the structure of the params (or a prefix
of it: ``{"encoder": True, "head": False}`` covers whole sub-trees), or a
callable ``params -> such a pytree``. The builders here return callables that
compose with ``&``, ``|`` and ``~``::

    mask = jaxreg.by_ndim(2) & ~jaxreg.by_path(r"^embed/")

A mask whose structure does not match the params raises ``ValueError`` naming
the first path where they differ, and :func:`mask_report` shows per path what a
mask selects, so a mask that silently selects nothing is seen before training.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from jaxreg._util import leaves_with_paths, path_str

__all__ = [
    "MaskFn",
    "MaskReport",
    "by_kernels",
    "by_ndim",
    "by_path",
    "mask_report",
    "resolve_mask",
]

# Leaf names that are never kernels, and module names of normalization layers
# (flax's defaults ``BatchNorm_0``, ``LayerNorm_1``, ... and common ``bn1``/``ln``).
_NON_KERNEL_NAMES = {"bias", "scale", "offset", "b", "beta", "gamma"}
_NORM_SHORT = re.compile(r"(bn|ln|gn)_?\d*")


def _in_norm_layer(path: str) -> bool:
    return any(
        "norm" in seg.lower() or _NORM_SHORT.fullmatch(seg.lower()) for seg in path.split("/")[:-1]
    )


def _ndim(leaf: Any) -> int:
    return len(np.shape(leaf)) if not hasattr(leaf, "shape") else len(leaf.shape)


@dataclasses.dataclass(frozen=True)
class MaskFn:
    """A callable mask ``params -> bool pytree``; combine with ``&``, ``|``, ``~``.

    Example:
        >>> import jax.numpy as jnp, jaxreg
        >>> params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
        >>> (jaxreg.by_ndim(2) | jaxreg.by_path("bias$"))(params)
        {'dense': {'bias': True, 'kernel': True}}
    """

    predicate: Callable[[str, Any], bool]
    description: str

    def __call__(self, params: Any) -> Any:
        def leaf_fn(path, leaf):
            return bool(self.predicate(path_str(path), leaf))

        return jax.tree_util.tree_map_with_path(leaf_fn, params)

    def __and__(self, other: MaskFn) -> MaskFn:
        return MaskFn(
            lambda p, x: self.predicate(p, x) and other.predicate(p, x),
            f"({self.description} & {other.description})",
        )

    def __or__(self, other: MaskFn) -> MaskFn:
        return MaskFn(
            lambda p, x: self.predicate(p, x) or other.predicate(p, x),
            f"({self.description} | {other.description})",
        )

    def __invert__(self) -> MaskFn:
        return MaskFn(lambda p, x: not self.predicate(p, x), f"~{self.description}")

    def __repr__(self) -> str:
        return f"MaskFn({self.description})"


def by_ndim(min_ndim: int = 2) -> MaskFn:
    """Select leaves of rank at least ``min_ndim`` (default 2: kernels, not biases).

    Args:
        min_ndim: smallest rank selected, >= 0.

    Example:
        >>> import jax.numpy as jnp, jaxreg
        >>> jaxreg.by_ndim(2)({"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)})
        {'bias': False, 'kernel': True}
    """
    if not isinstance(min_ndim, int) or isinstance(min_ndim, bool) or min_ndim < 0:
        raise ValueError(f"min_ndim must be an int >= 0, got {min_ndim!r}.")
    return MaskFn(lambda _, x: _ndim(x) >= min_ndim, f"by_ndim({min_ndim})")


def by_path(regex: str) -> MaskFn:
    """Select leaves whose '/'-joined path matches ``regex`` (``re.search``).

    Paths are spelled as flax names them: ``Dense_0/kernel``, ``Conv_1/bias``,
    ``layers/0/w`` for lists. Anchor with ``^``/``$`` for exact matches.

    Args:
        regex: a regular expression, e.g. ``r".*/kernel$"``.

    Example:
        >>> import jax.numpy as jnp, jaxreg
        >>> params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
        >>> jaxreg.by_path(r"/kernel$")(params)
        {'Dense_0': {'bias': False, 'kernel': True}}
    """
    if not isinstance(regex, str):
        raise TypeError(f"regex must be a str, got {type(regex).__name__}.")
    try:
        pattern = re.compile(regex)
    except re.error as e:
        raise ValueError(f"regex {regex!r} is not a valid regular expression: {e}") from None
    return MaskFn(lambda p, _: pattern.search(p) is not None, f"by_path({regex!r})")


def _is_kernel(path: str, leaf: Any) -> bool:
    if _ndim(leaf) < 2:
        return False
    if path.rsplit("/", 1)[-1].lower() in _NON_KERNEL_NAMES:
        return False
    return not _in_norm_layer(path)


def by_kernels() -> MaskFn:
    """Preset: kernels and embeddings only; biases and normalization parameters out.

    Selects leaves of rank >= 2 that are not named ``bias``/``scale``/``offset``
    and do not live in a normalization layer (``BatchNorm_0``, ``LayerNorm``,
    ``GroupNorm``, ``RMSNorm``, ``*_norm``, ``bn*``, ``ln*``). This is what weight
    decay usually should touch (Loshchilov & Hutter 2019; the BERT and timm
    defaults).

    Example:
        >>> import jax.numpy as jnp, jaxreg
        >>> params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)},
        ...           "BatchNorm_0": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
        ...           "Embed_0": {"embedding": jnp.ones((10, 2))}}
        >>> jaxreg.mask_report(params, jaxreg.by_kernels()).selected
        ['Dense_0/kernel', 'Embed_0/embedding']
    """
    return MaskFn(_is_kernel, "by_kernels()")


# --------------------------------------------------------------------------- resolution


def _path_tuples(tree: Any) -> list[tuple]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [tuple(path_str((k,)) for k in p) for p, _ in flat]


def _first_mismatch(mask: Any, params: Any) -> str | None:
    mask_paths = _path_tuples(mask)
    param_paths = _path_tuples(params)
    mask_set = set(mask_paths)
    for p in param_paths:
        if not any(p[:i] in mask_set for i in range(len(p) + 1)):
            return f"'{'/'.join(p)}' is in the params but not in the mask"
    prefixes = {p[:i] for p in param_paths for i in range(len(p) + 1)}
    for m in mask_paths:
        if m not in prefixes:
            return f"'{'/'.join(m)}' is in the mask but not in the params"
    return None


def resolve_mask(mask: Any, params: Any, *, name: str = "mask") -> Any:
    """Return ``mask`` as a bool pytree with the full structure of ``params``.

    Args:
        mask: a bool pytree (same structure as ``params`` or a prefix of it) or a
            callable ``params -> bool pytree``.
        params: the parameters (arrays or ``jax.ShapeDtypeStruct``).
        name: the argument name used in error messages.

    Raises:
        ValueError: naming the first path where mask and params differ, or the
            first leaf that is not a Python/NumPy bool.
    """
    tree = mask(params) if callable(mask) else mask
    for path, leaf in leaves_with_paths(tree):
        if not isinstance(leaf, (bool, np.bool_)) and not (
            isinstance(leaf, np.ndarray) and leaf.shape == () and leaf.dtype == bool
        ):
            raise ValueError(
                f"{name} leaves must be Python bools (masks are static), got "
                f"{type(leaf).__name__} at '{path}'."
            )
    problem = _first_mismatch(tree, params)
    if problem is not None:
        raise ValueError(f"{name} does not match the params structure: {problem}.")
    try:
        return jax.tree.map(lambda m, sub: jax.tree.map(lambda _: bool(m), sub), tree, params)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{name} does not match the params structure (container types differ): {e}"
        ) from None


def _checked(mask: Any, name: str) -> Callable[[Any], Any]:
    return lambda tree: resolve_mask(mask, tree, name=name)


def check_mask(mask: Any, name: str = "mask") -> None:
    """Construction-time check: None, a callable, or a pytree of Python bools.

    The structure can only be checked against params, at init/update time.
    """
    if mask is None or callable(mask):
        return
    for path, leaf in leaves_with_paths(mask):
        if not isinstance(leaf, (bool, np.bool_)):
            raise ValueError(
                f"{name} leaves must be Python bools (masks are static), got "
                f"{type(leaf).__name__} at '{path}'."
            )


def apply_mask(tx: optax.GradientTransformation, mask: Any, name: str = "mask"):
    """``optax.masked(tx, mask)`` with structure checks; ``tx`` itself if mask is None."""
    if mask is None:
        return tx
    check_mask(mask, name)
    return optax.masked(tx, _checked(mask, name))


def mask_leaves(mask: Any, params: Any, name: str = "mask") -> list[bool]:
    """Flat list of bools, one per leaf of ``params`` (all True when mask is None)."""
    if mask is None:
        return [True] * len(jax.tree.leaves(params))
    return jax.tree.leaves(resolve_mask(mask, params, name=name))


# --------------------------------------------------------------------------- reports


@dataclasses.dataclass(frozen=True)
class MaskReport:
    """What a mask selects, per parameter path. ``str()`` gives a table."""

    rows: tuple  # (path, shape, dtype, selected)

    @property
    def selected(self) -> list[str]:
        return [r[0] for r in self.rows if r[3]]

    @property
    def excluded(self) -> list[str]:
        return [r[0] for r in self.rows if not r[3]]

    @property
    def selected_size(self) -> int:
        return sum(int(np.prod(r[1], dtype=np.int64)) for r in self.rows if r[3])

    @property
    def total_size(self) -> int:
        return sum(int(np.prod(r[1], dtype=np.int64)) for r in self.rows)

    def __str__(self) -> str:
        width = max([len(r[0]) for r in self.rows] + [4])
        lines = [f"{'path':<{width}}  {'shape':<16} {'dtype':<9} selected"]
        for path, shape, dtype, sel in self.rows:
            lines.append(f"{path:<{width}}  {shape!s:<16} {dtype!s:<9} {'yes' if sel else '-'}")
        lines.append(
            f"{len(self.selected)}/{len(self.rows)} leaves, "
            f"{self.selected_size:,}/{self.total_size:,} values selected"
        )
        return "\n".join(lines)


def mask_report(params: Any, mask: Any) -> MaskReport:
    """Report per path which leaves of ``params`` a ``mask`` selects.

    Example:
        >>> import jax.numpy as jnp, jaxreg
        >>> params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
        >>> print(jaxreg.mask_report(params, jaxreg.by_ndim(2)))
        path            shape            dtype     selected
        Dense_0/bias    (2,)             float32   -
        Dense_0/kernel  (3, 2)           float32   yes
        1/2 leaves, 6/8 values selected
    """
    full = resolve_mask(mask, params) if mask is not None else jax.tree.map(lambda _: True, params)
    rows = []
    for (path, leaf), sel in zip(leaves_with_paths(params), jax.tree.leaves(full), strict=True):
        rows.append((path, tuple(np.shape(leaf)), str(np.dtype(leaf.dtype)), bool(sel)))
    return MaskReport(tuple(rows))
