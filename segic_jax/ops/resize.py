"""Resizing that reproduces `torch.nn.functional.interpolate` exactly.

`jax.image.resize` antialiases when shrinking and has no notion of PyTorch's `scale_factor`
semantics, so it cannot stand in for the reference's resizes. Here every resize is a pair of
separable interpolation matrices built once on the host (NumPy, float64) from PyTorch's own
index arithmetic, then applied on device as two matmuls. Shapes are static, so the matrices
are constants under `jit`.

Covered (all with `align_corners=False`):
  - "bilinear", antialias off and on;
  - "bicubic" (A = -0.75, indices clamped at the border), antialias off;
  - "bicubic" with antialias on (PyTorch's separable AA filter, A = -0.5, weights normalised);
  - output given either as a size or as a scale factor. With a scale factor, PyTorch maps
    coordinates with 1/scale_factor, not in/out, and the output size is floor(in * scale_factor).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("bilinear", "bicubic")
_CUBIC_A = -0.75
_CUBIC_A_ANTIALIAS = -0.5


def scaled_size(in_size: int, scale_factor: float) -> int:
    """Output length PyTorch gives for `scale_factor` (floor of the product, in float64)."""
    return int(math.floor(float(in_size) * scale_factor))


def _coordinate_scale(in_size: int, out_size: int, scale_factor: float | None) -> float:
    if scale_factor is not None and scale_factor > 0:
        return 1.0 / scale_factor
    return np.float32(in_size) / np.float32(out_size)


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution weights for the 4 taps around a sample at fraction t. (N,) -> (N, 4)."""

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _aa_filter(x: np.ndarray, method: str) -> np.ndarray:
    x = np.abs(x)
    if method == "bilinear":
        return np.clip(1.0 - x, 0.0, None)
    a = _CUBIC_A_ANTIALIAS
    return np.where(
        x < 1.0,
        ((a + 2) * x - (a + 3)) * x * x + 1,
        np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0),
    )


@functools.lru_cache(maxsize=256)
def interpolation_matrix(
    in_size: int,
    out_size: int,
    method: str = "bilinear",
    scale_factor: float | None = None,
    antialias: bool = False,
) -> np.ndarray:
    """The (out_size, in_size) matrix M with `out = M @ in` along one axis, as PyTorch resamples."""
    if method not in METHODS:
        raise ValueError(f"resize method must be one of {METHODS}, got {method!r}")
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize sizes must be positive, got {in_size} -> {out_size}")
    # PyTorch does its index arithmetic in float32 for float32 tensors; matching it (rather than
    # computing exactly) is what brings the difference down to rounding noise.
    scale = np.float32(_coordinate_scale(in_size, out_size, scale_factor))
    dst = np.arange(out_size, dtype=np.float32)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)

    if antialias:
        # PyTorch's separable antialiasing kernel (shared with PIL): the filter is stretched by
        # the downscale factor and the taps are renormalised to sum to one.
        support = (1.0 if method == "bilinear" else 2.0) * max(scale, 1.0)
        inv = 1.0 / scale if scale >= 1.0 else 1.0
        center = scale * (dst + 0.5)
        lo = np.maximum((center - support + 0.5).astype(np.int64), 0)
        hi = np.minimum((center + support + 0.5).astype(np.int64), in_size)
        for i in range(out_size):
            taps = np.arange(lo[i], hi[i])
            w = _aa_filter((taps - center[i] + 0.5) * inv, method)
            total = w.sum()
            matrix[i, taps] = w / total if total != 0 else w
        return matrix

    # PyTorch's CPU kernels compile `scale * (dst + 0.5) - 0.5` to a fused multiply-add: one rounding.
    src = (np.float64(scale) * (dst + np.float32(0.5)).astype(np.float64) - 0.5).astype(np.float32)
    if method == "bilinear":
        src = np.maximum(src, 0.0)
        # past the last input only where an image so thin that its side scales to under one pixel
        # was given one output pixel anyway (PyTorch refuses a size of 0): read the last input there
        i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
        i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
        frac = np.clip(src - i0, 0.0, 1.0)
        np.add.at(matrix, (rows, i0), 1.0 - frac)
        np.add.at(matrix, (rows, i1), frac)
        return matrix

    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    frac = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0))
    weights = _cubic_weights(frac, _CUBIC_A)
    for tap in range(4):
        idx = np.clip(i0 - 1 + tap, 0, in_size - 1)
        np.add.at(matrix, (rows, idx), weights[:, tap])
    return matrix


def resize(
    x: jax.Array,
    size: Sequence[int] | None = None,
    scale_factor: float | Sequence[float] | None = None,
    method: str = "bilinear",
    antialias: bool = False,
    axes: Sequence[int] = (-3, -2),
) -> jax.Array:
    """Resample `x` along `axes` as `F.interpolate(..., align_corners=False)` would.

    Channels-last by default: `x` is (..., H, W, C) and axes (-3, -2) are H and W. Give exactly one
    of `size` (one length per axis) or `scale_factor` (a number or one per axis). The result has
    the dtype of `x`; the arithmetic is float32 or wider. A NumPy input is resized with NumPy.
    """
    if (size is None) == (scale_factor is None):
        raise ValueError("give exactly one of size or scale_factor")
    axes = [a % x.ndim for a in axes]
    if scale_factor is not None:
        factors = (
            list(scale_factor) if isinstance(scale_factor, Sequence) else [scale_factor] * len(axes)
        )
        if len(factors) != len(axes):
            raise ValueError(f"scale_factor {scale_factor} does not match axes {axes}")
        sizes = [scaled_size(x.shape[a], f) for a, f in zip(axes, factors)]
    else:
        sizes, factors = list(size), [None] * len(axes)
        if len(sizes) != len(axes):
            raise ValueError(f"size {size} does not match axes {axes}")

    # NumPy arrays are resized on the host (no compilation per image size), others on device.
    on_host = isinstance(x, np.ndarray)
    xp = np if on_host else jnp
    out_dtype = x.dtype
    compute = np.promote_types(out_dtype, np.float32)
    y = x.astype(compute)
    for axis, out_len, factor in zip(axes, sizes, factors):
        in_len = x.shape[axis]
        if out_len == in_len and factor in (None, 1.0):
            continue  # PyTorch's index arithmetic gives the identity here too
        m = interpolation_matrix(in_len, out_len, method, factor, antialias).astype(compute)
        moved = xp.moveaxis(y, axis, 0)
        if on_host:
            y = np.moveaxis(np.tensordot(m, moved, axes=1), 0, axis)
        else:
            y = jnp.moveaxis(jnp.tensordot(jnp.asarray(m), moved, axes=1, precision=jax.lax.Precision.HIGHEST), 0, axis)
    return y.astype(out_dtype)


@functools.lru_cache(maxsize=1024)
def interpolation_taps(
    in_size: int,
    out_size: int,
    padded_size: int,
    taps: int = 2,
    scale_factor: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`interpolation_matrix` (bilinear, no antialiasing) as gather taps, padded with empty rows.

    Returns indices (padded_size, taps) int32 and weights (padded_size, taps) float32 with
    `out[i] = sum_t weights[i, t] * in[indices[i, t]]` for i < out_size and 0 beyond: the resize
    followed by zero padding to `padded_size`, in O(out x taps) work instead of a dense matmul.
    Each sample of PyTorch's bilinear resize reads at most two inputs, so `taps=2` is exact.
    """
    if padded_size < out_size:
        raise ValueError(f"padded size {padded_size} is smaller than the output size {out_size}")
    matrix = interpolation_matrix(in_size, out_size, "bilinear", scale_factor, False)
    nonzero = (matrix != 0).sum(axis=1)
    if nonzero.max(initial=0) > taps:
        raise ValueError(f"resizing {in_size} -> {out_size} needs {nonzero.max()} taps, more than {taps}")
    if in_size < taps:
        matrix = np.pad(matrix, ((0, 0), (0, taps - in_size)))
    cols = np.argsort(matrix == 0, axis=1, kind="stable")[:, :taps]  # the nonzero columns first, in order
    indices = np.zeros((padded_size, taps), np.int32)
    weights = np.zeros((padded_size, taps), np.float32)
    indices[:out_size] = np.minimum(cols, in_size - 1)  # a padding column has weight 0
    weights[:out_size] = np.take_along_axis(matrix, cols, axis=1)
    return indices, weights


def resample_taps(x: jax.Array, indices: jax.Array, weights: jax.Array, axis: int) -> jax.Array:
    """Apply `interpolation_taps` along `axis` of x (float32): (..., N, ...) -> (..., P, ...)."""
    x = jnp.moveaxis(x, axis, 0)
    gathered = x[indices]  # (P, T, ...)
    w = weights.reshape(weights.shape + (1,) * (x.ndim - 1))
    out = gathered[:, 0] * w[:, 0]
    for t in range(1, indices.shape[1]):
        out = out + gathered[:, t] * w[:, t]
    return jnp.moveaxis(out, 0, axis)
