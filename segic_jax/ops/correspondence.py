"""Dense correspondence between target and reference features (SEGIC_SPEC.md section 2.5).

The reference mask picks a mean feature; its cosine similarity with every target feature is the
propagated mask, and the similarity peak is the point prompt. Every resize is PyTorch's bilinear
(align_corners False, no antialias), as in the reference implementation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from segic_jax.ops.resize import resize

SIMILARITY_EPS = 1e-8
VOS_SIMILARITY_EPS = 1e-4  # the reference's video path clamps the norms here (SEGIC_SPEC.md 5.6)


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

    features (B, h, w, C) are first upsampled to `mid_size` (224 x 224 for 896 inputs), compared
    with vectors (B, K, C), and the (B, K, mid) maps upsampled to `out_size`. Returns
    (B, K, H, W) float32 in [-1, 1]. Norms are clamped at `eps` before dividing.
    """
    feats = resize(features.astype(jnp.float32), size=mid_size, method="bilinear")
    sim = jnp.einsum(
        "bhwc,bkc->bkhw",
        _l2_normalize(feats, eps=eps),
        _l2_normalize(vectors.astype(jnp.float32), eps=eps),
        precision="highest",
    )
    return resize(sim, size=out_size, method="bilinear", axes=(-2, -1))


def peak_points(maps: jax.Array) -> jax.Array:
    """(x, y) pixel coordinates of each map's maximum, first in row-major order on ties.

    maps (..., H, W) -> (..., 2) float32.
    """
    w = maps.shape[-1]
    flat = maps.reshape(maps.shape[:-2] + (-1,))
    idx = jnp.argmax(flat, axis=-1)
    return jnp.stack([idx % w, idx // w], axis=-1).astype(jnp.float32)
