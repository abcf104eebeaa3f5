"""Dense correspondence between target and reference features (docs/original.md section 2.4).

The reference mask picks a mean feature; its cosine similarity with every target feature is the
propagated mask, and the similarity peak is the point prompt. Every resize is PyTorch's bilinear
(align_corners False, no antialias), as in the reference implementation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from segic_jax.ops.resize import interpolation_matrix, resize

SIMILARITY_EPS = 1e-8
VOS_SIMILARITY_EPS = 1e-4  # the reference's video path clamps the norms here (docs/original.md 5.2)


def masked_feature_sums(features: jax.Array, masks: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sum of features under each mask and the mask's area, at the feature grid.

    features (B, h, w, C); masks (B, K, H, W) in [0, 1] at image resolution, resized bilinearly
    to (h, w) and thresholded at 0.5. Returns sums (B, K, C) and areas (B, K), float32.
    """
    b, h, w, _ = features.shape
    small = resize(masks.astype(jnp.float32), size=(h, w), method="bilinear", axes=(-2, -1)) > 0.5
    small = small.astype(jnp.float32)
    total = jnp.einsum("bkhw,bhwc->bkc", small, features.astype(jnp.float32), precision="highest")
    return total, small.sum(axis=(-2, -1))


def masked_mean_features(features: jax.Array, masks: jax.Array) -> jax.Array:
    """Mean feature under each mask (see `masked_feature_sums`), dividing by max(area, 1) so an
    empty mask gives a zero vector. (B, h, w, C), (B, K, H, W) -> (B, K, C) float32."""
    total, area = masked_feature_sums(features, masks)
    return total / jnp.maximum(area, 1.0)[..., None]


def _l2_normalize(x: jax.Array, axis: int = -1, eps: float = SIMILARITY_EPS) -> jax.Array:
    norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
    return x / jnp.maximum(norm, eps)


def similarity_maps(
    features: jax.Array,
    vectors: jax.Array,
    mid_size: tuple[int, int],
    out_size: tuple[int, int],
    *,
    eps: float = SIMILARITY_EPS,
) -> jax.Array:
    """Cosine similarity of `vectors` with the target features, as propagated masks.

    As the reference: features (B, h, w, C) upsampled bilinearly to `mid_size` (224 x 224 for 896
    inputs), compared with vectors (B, K, C), and the (B, K, mid) maps upsampled to `out_size`.
    Returns (B, K, H, W) float32 in [-1, 1]. Norms are clamped at `eps` before dividing.

    The upsampled features are never formed (at 896 px they are 205 MB per image): upsampling
    is linear, so their dot products with the vectors are the upsampled low-resolution dot
    products, and their squared norms follow from the inner products of neighbouring
    low-resolution features (`_upsampled_sq_norms`).
    """
    feats = features.astype(jnp.float32)
    unit = _l2_normalize(vectors.astype(jnp.float32), eps=eps)
    dots = jnp.einsum("bhwc,bkc->bkhw", feats, unit, precision="highest")
    dots = resize(dots, size=mid_size, method="bilinear", axes=(-2, -1))
    norms = jnp.sqrt(jnp.maximum(_upsampled_sq_norms(feats, mid_size), 0.0))  # rounding can dip below 0
    sim = dots / jnp.maximum(norms, eps)[:, None]
    return resize(sim, size=out_size, method="bilinear", axes=(-2, -1))


@functools.lru_cache(maxsize=64)
def _neighbour_weights(in_size: int, out_size: int) -> np.ndarray:
    """(3, out, in): P[1 + d][y, i] = M[y, i] * M[y, i + d] for the bilinear resize matrix M and
    d in (-1, 0, 1), zero where i + d is outside. Each row of M (bilinear, no antialiasing) mixes
    at most two adjacent inputs, so these three bands are all its products."""
    m = interpolation_matrix(in_size, out_size, "bilinear")
    out = np.zeros((3, out_size, in_size), np.float64)
    out[1] = m * m
    out[2, :, :-1] = m[:, :-1] * m[:, 1:]
    out[0, :, 1:] = m[:, 1:] * m[:, :-1]
    return out.astype(np.float32)


def _upsampled_sq_norms(features: jax.Array, size: tuple[int, int]) -> jax.Array:
    """|U f|^2 at every pixel of the bilinear upsampling U f of features (B, h, w, C) to `size`,
    -> (B, H', W'), without forming U f: with U = Mh (x) Mw,
    |U f|^2 (y, x) = sum over offsets (di, dj) in {-1, 0, 1}^2 of
                     sum_ij Ph_di[y, i] Pw_dj[x, j] <f[i, j], f[i + di, j + dj]>."""
    b, h, w, _ = features.shape
    ph, pw = _neighbour_weights(h, size[0]), _neighbour_weights(w, size[1])
    padded = jnp.pad(features, ((0, 0), (1, 1), (1, 1), (0, 0)))
    total = 0.0
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            shifted = padded[:, 1 + di : 1 + di + h, 1 + dj : 1 + dj + w]
            gram = jnp.einsum("bijc,bijc->bij", features, shifted, precision="highest")
            total = total + jnp.einsum("yi,bij,xj->byx", ph[1 + di], gram, pw[1 + dj], precision="highest")
    return total


def peak_points(maps: jax.Array) -> jax.Array:
    """(x, y) pixel coordinates of each map's maximum, first in row-major order on ties.

    maps (..., H, W) -> (..., 2) float32.
    """
    w = maps.shape[-1]
    flat = maps.reshape(maps.shape[:-2] + (-1,))
    idx = jnp.argmax(flat, axis=-1)
    return jnp.stack([idx % w, idx // w], axis=-1).astype(jnp.float32)
