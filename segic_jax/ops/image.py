"""Image normalisation as the reference feeds its frozen encoder (docs/original.md section 2.1), and
the rounding of sizes and counts up to the multiples that fixed-shape programs are compiled for."""

from __future__ import annotations

import jax
import jax.numpy as jnp

PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


def normalize_images(images: jax.Array, valid_hw: jax.Array | None = None) -> jax.Array:
    """Pixels in [0, 255] (B, H, W, 3) -> ImageNet-normalised float32.

    Pixels outside each image's valid (h, w) extent (B, 2) are set to 0 after normalising, so the
    padding the encoder sees is 0 whatever value the loader padded with.
    """
    x = images.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(PIXEL_MEAN)) / jnp.asarray(PIXEL_STD)
    if valid_hw is None:
        return x
    rows = jnp.arange(x.shape[1])[None, :, None] < valid_hw[:, 0, None, None]
    cols = jnp.arange(x.shape[2])[None, None, :] < valid_hw[:, 1, None, None]
    return jnp.where((rows & cols)[..., None], x, 0.0)


def round_up(n: int, multiple: int) -> int:
    """n rounded up to a multiple of `multiple`, and at least `multiple` (0 too: a padded canvas or
    concept count is never empty)."""
    return max(multiple, -(-n // multiple) * multiple)
