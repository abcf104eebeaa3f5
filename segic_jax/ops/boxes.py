"""Boxes from masks, as the reference's `masks_to_boxes` gives its box prompts."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mask_boxes(masks: jax.Array) -> jax.Array:
    """(..., H, W) bool -> (..., 4) float32 (x_min, y_min, x_max, y_max), max inclusive (the last
    foreground index); an empty mask gives (0, 0, 0, 0)."""
    h, w = masks.shape[-2:]
    rows, cols = masks.any(axis=-1), masks.any(axis=-2)
    ys, xs = jnp.arange(h), jnp.arange(w)
    x_min = jnp.where(cols, xs, w).min(-1)
    x_max = jnp.where(cols, xs, -1).max(-1)
    y_min = jnp.where(rows, ys, h).min(-1)
    y_max = jnp.where(rows, ys, -1).max(-1)
    box = jnp.stack([x_min, y_min, x_max, y_max], axis=-1).astype(jnp.float32)
    return jnp.where(masks.any(axis=(-2, -1))[..., None], box, 0.0)
