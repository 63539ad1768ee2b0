"""Batched image augmentation: jaxreg against dm-pix, augmax and NumPy, op by op.

A batch of ``uint8`` images (default 512 x 32 x 32 x 3, CIFAR-sized), a fresh key
(or NumPy generator state) every step, per-example draws everywhere. Cases:

* ``crop+flip``: random crop with 4-pixel reflect padding, then a random
  horizontal flip (the benchmark target): jaxreg's fused ``random_crop_flip``
  against a per-example NumPy loop, vectorised NumPy, dm-pix (``jax.vmap`` of
  ``jnp.pad`` + ``pix.random_crop`` + ``pix.random_flip_left_right``) and augmax
  (``Chain(RandomCrop, HorizontalFlip)`` on the padded image, vmapped over keys),
  plus the alternative kernels measured to choose jaxreg's (``variant:`` rows).
* ``crop+flip+erasing``: the same followed by random erasing (p=0.5); neither
  dm-pix nor augmax has erasing, so only NumPy is compared.
* one case per op with a counterpart: ``flip``, ``crop``, ``rotate`` (bilinear,
  +-30 degrees: dm-pix ``rotate``, augmax ``Rotate``), ``affine`` (rotation,
  translation, zoom, shear: dm-pix ``affine_transform`` with a per-example
  matrix), ``erasing`` and ``cutout`` (NumPy only).

JAX versions are jitted and compiled before timing (one warm-up call,
``block_until_ready``); implementations are interleaved within each repeat; the
report gives median milliseconds per batch and ``ratio_<impl>_over_jaxreg`` =
time(impl) / time(jaxreg). torchvision is not measured: PyPI's torchvision does
not import beside torch==2.13.0 on these machines, and installing another torch
is not an option.

Command (the table in benchmarks/README.md):

    pip install -e . dm-pix augmax
    python benchmarks/bench_augment.py --batch 512 --size 32 --repeats 7 --steps 10

Prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxreg
from jaxreg.augment.color import color_jitter
from jaxreg.augment.erasing import cutout, random_erasing
from jaxreg.augment.geometric import (
    affine_matrices,
    random_affine,
    random_crop,
    random_crop_flip,
    random_flip,
)
from jaxreg.augment.pipeline import compose

try:  # optional baselines
    import dm_pix as pix
except ImportError:  # pragma: no cover - depends on the environment
    pix = None
try:
    import augmax
except ImportError:  # pragma: no cover - depends on the environment
    augmax = None

PAD = 4
TORCHVISION = "not installable beside torch==2.13.0 (not measured)"


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- NumPy


def np_crop_flip_loop(rng, x, erase=False):
    """Per-example loop: pad, slice a window, maybe mirror (and maybe erase)."""
    n, h, w, _ = x.shape
    out = np.empty_like(x)
    for i in range(n):
        img = np.pad(x[i], ((PAD, PAD), (PAD, PAD), (0, 0)), mode="reflect")
        dy, dx = rng.integers(0, 2 * PAD + 1, size=2)
        img = img[dy : dy + h, dx : dx + w]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        out[i] = img
        if erase:
            _np_erase_one(rng, out[i])
    return out


def _np_erase_one(rng, img, p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3)):
    if rng.random() >= p:
        return
    h, w = img.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        r = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        eh, ew = round(np.sqrt(area * r)), round(np.sqrt(area / r))
        if eh < h and ew < w:
            top, left = rng.integers(0, h - eh + 1), rng.integers(0, w - ew + 1)
            img[top : top + eh, left : left + ew] = 0
            return


def np_erasing_loop(rng, x):
    out = x.copy()
    for i in range(x.shape[0]):
        _np_erase_one(rng, out[i])
    return out


def np_cutout_loop(rng, x, size=16):
    out = x.copy()
    h, w = x.shape[1:3]
    for i in range(x.shape[0]):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        out[
            i,
            max(cy - size // 2, 0) : cy - size // 2 + size,
            max(cx - size // 2, 0) : cx - size // 2 + size,
        ] = 0
    return out


def np_crop_flip_vectorised(rng, x):
    """Pad once, then one fancy-indexing gather with per-example offsets and flips."""
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)), mode="reflect")
    off = rng.integers(0, 2 * PAD + 1, size=(n, 2))
    flip = rng.random(n) < 0.5
    cols = np.arange(w)[None, :]
    cols = np.where(flip[:, None], w - 1 - cols, cols) + off[:, 1:2]
    rows = np.arange(h)[None, :] + off[:, 0:1]
    return xp[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def np_flip_loop(rng, x):
    out = x.copy()
    for i in range(x.shape[0]):
        if rng.random() < 0.5:
            out[i] = x[i, :, ::-1]
    return out


def np_crop_loop(rng, x):
    n, h, w, _ = x.shape
    out = np.empty_like(x)
    for i in range(n):
        img = np.pad(x[i], ((PAD, PAD), (PAD, PAD), (0, 0)), mode="reflect")
        dy, dx = rng.integers(0, 2 * PAD + 1, size=2)
        out[i] = img[dy : dy + h, dx : dx + w]
    return out


# --------------------------------------------------------------------------- JAX baselines


def _per_example(fn):
    """Batch a per-image ``fn(key, image)`` with one split key per example."""

    def batched(key, x):
        return jax.vmap(fn)(jax.random.split(key, x.shape[0]), x)

    return batched


def _pad(img):
    return jnp.pad(img, ((PAD, PAD), (PAD, PAD), (0, 0)), mode="reflect")


def pix_crop_flip(key, img):
    k1, k2 = jax.random.split(key)
    img = pix.random_crop(k1, _pad(img), img.shape)
    return pix.random_flip_left_right(k2, img)


def pix_crop(key, img):
    return pix.random_crop(key, _pad(img), img.shape)


def pix_flip(key, img):
    return pix.random_flip_left_right(key, img)


def pix_rotate(key, img, max_deg=30.0):
    angle = jnp.deg2rad(jax.random.uniform(key, (), minval=-max_deg, maxval=max_deg))
    out = pix.rotate(img.astype(jnp.float32), angle, order=1, mode="constant")
    return jnp.clip(jnp.round(out), 0, 255).astype(img.dtype)


AFFINE = dict(rotation=30.0, translation=0.1, zoom=0.1, shear=10.0)


def pix_affine(key, x):
    """dm-pix ``affine_transform`` per image, with jaxreg's per-example matrices."""
    n, h, w, _ = x.shape
    m = affine_matrices(key, n, h, w, **AFFINE)  # (x, y) order; dm-pix uses (row, col, ch)

    def one(img, m):
        mat = jnp.array(
            [[m[1, 1], m[1, 0], 0.0], [m[0, 1], m[0, 0], 0.0], [0.0, 0.0, 1.0]], jnp.float32
        )
        off = jnp.stack([m[1, 2], m[0, 2], jnp.zeros(())])
        out = pix.affine_transform(
            img.astype(jnp.float32), mat, offset=off, order=1, mode="constant"
        )
        return jnp.clip(jnp.round(out), 0, 255).astype(img.dtype)

    return jax.vmap(one)(x, m)


JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)


def pix_color_jitter(key, img):
    """dm-pix's four colour ops in turn on one [0, 1] float image (brightness is additive)."""
    kb, kc, ks, kh = jax.random.split(key, 4)
    x = img.astype(jnp.float32) / 255.0
    x = pix.random_brightness(kb, x, JITTER["brightness"])
    x = pix.random_contrast(kc, x, 1 - JITTER["contrast"], 1 + JITTER["contrast"])
    x = pix.random_saturation(ks, x, 1 - JITTER["saturation"], 1 + JITTER["saturation"])
    x = pix.random_hue(kh, x, JITTER["hue"])
    return jnp.clip(jnp.round(x * 255.0), 0, 255).astype(img.dtype)


def augmax_batched(*transforms, pad=False):
    chain = augmax.Chain(*transforms)

    def one(key, img):
        return chain(key, _pad(img) if pad else img)

    return _per_example(one)


# --------------------------------------------------------------------------- jaxreg variants


def variant_vmap_dynamic_slice(key, x):
    """Pad the batch, ``vmap(dynamic_slice)`` per-example windows, select flipped copies."""
    n, h, w, c = x.shape
    k_off, k_flip = jax.random.split(key)
    off = jax.random.randint(k_off, (n, 2), 0, 2 * PAD + 1)
    flip = jax.random.uniform(k_flip, (n,)) < 0.5
    xp = jnp.pad(x, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)), mode="reflect")
    y = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(xp, off)
    return jnp.where(flip.reshape(n, 1, 1, 1), y[:, :, ::-1], y)


def variant_flat_take(key, x):
    """One ``take_along_axis`` over flattened ``H*W`` pixel indices."""
    n, h, w, c = x.shape
    k_off, k_flip = jax.random.split(key)
    off = jax.random.randint(k_off, (n, 2), 0, 2 * PAD + 1) - PAD
    flip = jax.random.uniform(k_flip, (n, 1)) < 0.5

    def reflect(i, size):
        i = jnp.abs(i)
        return jnp.where(i > size - 1, 2 * (size - 1) - i, i)

    rows = reflect(jnp.arange(h)[None, :] + off[:, 0:1], h)
    cols = reflect(jnp.arange(w)[None, :] + off[:, 1:2], w)
    cols = jnp.where(flip, cols[:, ::-1], cols)
    idx = (rows[:, :, None] * w + cols[:, None, :]).reshape(n, h * w, 1)
    return jnp.take_along_axis(x.reshape(n, h * w, c), idx, axis=1).reshape(n, h, w, c)


def variant_unfused(key, x):
    """``random_flip(random_crop(x))``: two gathers (same draws as the fused op)."""
    k1, k2 = jax.random.split(key)
    return random_flip(k2, random_crop(k1, x, padding=PAD))


# --------------------------------------------------------------------------- runners


def jax_runner(fn, x, keys):
    step = jax.jit(fn)
    jax.block_until_ready(step(keys[0], x))  # compile + warm-up

    def run():
        out = None
        for k in keys:
            out = step(k, x)
        jax.block_until_ready(out)

    return run


def np_runner(fn, x, steps):
    rng = np.random.default_rng(0)
    fn(rng, x)  # warm-up

    def run():
        for _ in range(steps):
            fn(rng, x)

    return run


def cases(args):
    """{case: ({impl: (kind, fn)}, {library: reason it is not measured})}."""
    jr = functools.partial
    out = {}
    skip_pix = None if pix is not None else "dm-pix not installed"
    skip_augmax = None if augmax is not None else "augmax not installed"
    impls = {
        "jaxreg": ("jax", jr(random_crop_flip, padding=PAD)),
        "numpy loop": ("np", np_crop_flip_loop),
        "numpy vectorised": ("np", np_crop_flip_vectorised),
    }
    if pix is not None:
        impls["dm-pix"] = ("jax", _per_example(pix_crop_flip))
    if augmax is not None:
        impls["augmax"] = (
            "jax",
            augmax_batched(augmax.RandomCrop(args.size), augmax.HorizontalFlip(), pad=True),
        )
    if not args.no_variants:
        impls["variant: crop then flip (two gathers)"] = ("jax", variant_unfused)
        impls["variant: flat take_along_axis"] = ("jax", variant_flat_take)
        impls["variant: vmap dynamic_slice of padded batch"] = ("jax", variant_vmap_dynamic_slice)
    out["crop+flip"] = (impls, {"dm-pix": skip_pix, "augmax": skip_augmax})

    erase = jr(random_erasing, p=0.5)
    out["crop+flip+erasing"] = (
        {
            "jaxreg": ("jax", compose(jr(random_crop_flip, padding=PAD), erase)),
            "numpy loop": ("np", jr(np_crop_flip_loop, erase=True)),
        },
        {"dm-pix": "has no random erasing", "augmax": "has no random erasing"},
    )

    impls = {"jaxreg": ("jax", random_flip), "numpy loop": ("np", np_flip_loop)}
    if pix is not None:
        impls["dm-pix"] = ("jax", _per_example(pix_flip))
    if augmax is not None:
        impls["augmax"] = ("jax", augmax_batched(augmax.HorizontalFlip()))
    out["flip"] = (impls, {"dm-pix": skip_pix, "augmax": skip_augmax})

    impls = {"jaxreg": ("jax", jr(random_crop, padding=PAD)), "numpy loop": ("np", np_crop_loop)}
    if pix is not None:
        impls["dm-pix"] = ("jax", _per_example(pix_crop))
    if augmax is not None:
        impls["augmax"] = ("jax", augmax_batched(augmax.RandomCrop(args.size), pad=True))
    out["crop"] = (impls, {"dm-pix": skip_pix, "augmax": skip_augmax})

    impls = {"jaxreg": ("jax", jr(random_affine, rotation=30.0))}
    if pix is not None:
        impls["dm-pix"] = ("jax", _per_example(pix_rotate))
    if augmax is not None:
        impls["augmax"] = ("jax", augmax_batched(augmax.Rotate(30.0)))
    out["rotate"] = (impls, {"dm-pix": skip_pix, "augmax": skip_augmax})

    impls = {"jaxreg": ("jax", jr(random_affine, **AFFINE))}
    if pix is not None:
        impls["dm-pix"] = ("jax", pix_affine)
    out["affine"] = (
        impls,
        {"dm-pix": skip_pix, "augmax": "no single affine op (a Chain of warps is not one op)"},
    )

    impls = {"jaxreg": ("jax", jr(color_jitter, **JITTER))}
    if pix is not None:
        impls["dm-pix"] = ("jax", _per_example(pix_color_jitter))
    if augmax is not None:
        # augmax's ColorJitter needs float images: convert in and out, as a user must.
        jitter = augmax_batched(augmax.ByteToFloat(), augmax.ColorJitter(**JITTER, p=1.0))
        impls["augmax"] = (
            "jax",
            lambda k, x: jnp.clip(jnp.round(jitter(k, x) * 255.0), 0, 255).astype(jnp.uint8),
        )
    out["color jitter"] = (impls, {"dm-pix": skip_pix, "augmax": skip_augmax})

    out["erasing"] = (
        {"jaxreg": ("jax", erase), "numpy loop": ("np", np_erasing_loop)},
        {"dm-pix": "has no random erasing", "augmax": "has no random erasing"},
    )
    out["cutout"] = (
        {"jaxreg": ("jax", jr(cutout, size=16)), "numpy loop": ("np", np_cutout_loop)},
        {"dm-pix": "has no cutout", "augmax": "has no cutout"},
    )
    return out


def run_case(args, name, impls, skipped, x, keys):
    xn = np.asarray(x)
    runners = {
        impl: jax_runner(fn, x, keys) if kind == "jax" else np_runner(fn, xn, args.steps)
        for impl, (kind, fn) in impls.items()
    }
    times = {impl: [] for impl in runners}
    for _ in range(args.repeats):  # interleaved
        for impl, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[impl].append((time.perf_counter() - t0) / args.steps)
    med = {impl: statistics.median(ts) for impl, ts in times.items()}
    result = {
        "case": f"{name} {list(x.shape)} uint8",
        "ms_per_batch": {impl: round(t * 1e3, 4) for impl, t in med.items()},
    }
    for impl, t in med.items():
        if impl != "jaxreg":
            result[f"ratio_{impl}_over_jaxreg"] = round(t / med["jaxreg"], 2)
    result["not_measured"] = {
        "torchvision": TORCHVISION,
        **{lib: why for lib, why in skipped.items() if why is not None},
    }
    result.update(
        shape=list(x.shape),
        dtype="uint8",
        repeats=args.repeats,
        steps_per_repeat=args.steps,
        device_kind=jax.devices()[0].device_kind,
        device_count=jax.device_count(),
        cpu_count=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        jax=jax.__version__,
        jaxreg=jaxreg.__version__,
        dm_pix=_version("dm-pix"),
        augmax=_version("augmax"),
        numpy=np.__version__,
        python=platform.python_version(),
    )
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--size", type=int, default=32, help="image height and width")
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--only", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--no-variants", action="store_true", help="skip the jaxreg variants")
    args = ap.parse_args(argv)
    shape = (args.batch, args.size, args.size, args.channels)
    x = jax.random.randint(jax.random.key(0), shape, 0, 256).astype(jnp.uint8)
    keys = [jax.random.fold_in(jax.random.key(1), i) for i in range(args.steps)]
    only = {c for c in args.only.split(",") if c}
    results = []
    for name, (impls, skipped) in cases(args).items():
        if only and name not in only:
            continue
        res = run_case(args, name, impls, skipped, x, keys)
        print(json.dumps(res), flush=True)
        results.append(res)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
