"""SEGIC's mask loss (docs/original.md 3): sigmoid cross-entropy plus dice on points sampled
PointRend-style, 75% of them where the prediction is most uncertain.

Logits (N, h, w) are the decoder's low-resolution masks, labels (N, H, W) the binary targets in
the same padded frame: normalised point coordinates make the two resolutions agree. Padded
instances are excluded with `valid` (N,), and the losses are normalised by the number of valid
masks, as the reference normalises by its (unpadded) mask count. The reference counts the masks of
each GPU's 4 episodes and averages the GPUs' gradients: `groups` splits the N rows into that many
equal, consecutive groups, normalises each by its own count and averages the groups.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

NUM_POINTS = 112 * 112
OVERSAMPLE = 3.0
IMPORTANCE = 0.75


def point_sample(values: jax.Array, coords: jax.Array) -> jax.Array:
    """`F.grid_sample(values, 2 * coords - 1, bilinear, align_corners=False, zeros padding)`.

    values (N, H, W); coords (N, P, 2) as (x, y) in [0, 1] -> (N, P)."""
    n, h, w = values.shape
    x = coords[..., 0] * w - 0.5
    y = coords[..., 1] * h - 0.5
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = x - x0, y - y0
    rows = jnp.arange(n)[:, None]

    def tap(yi, xi):
        inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
        v = values[rows, jnp.clip(yi, 0, h - 1).astype(jnp.int32), jnp.clip(xi, 0, w - 1).astype(jnp.int32)]
        return jnp.where(inside, v, 0.0)

    return (
        tap(y0, x0) * (1 - fx) * (1 - fy)
        + tap(y0, x0 + 1) * fx * (1 - fy)
        + tap(y0 + 1, x0) * (1 - fx) * fy
        + tap(y0 + 1, x0 + 1) * fx * fy
    )


def select_uncertain(logits: jax.Array, candidates: jax.Array, fresh: jax.Array, num_uncertain: int) -> jax.Array:
    """The `num_uncertain` candidates whose sampled logit is nearest 0, then the fresh points.
    logits (N, h, w); candidates (N, C, 2); fresh (N, R, 2) -> (N, num_uncertain + R, 2)."""
    uncertainty = -jnp.abs(point_sample(logits, candidates))
    _, idx = jax.lax.top_k(uncertainty, num_uncertain)
    chosen = jnp.take_along_axis(candidates, idx[..., None], axis=1)
    return jnp.concatenate([chosen, fresh], axis=1)


def sample_points(key: jax.Array, logits: jax.Array, num_points: int = NUM_POINTS,
                  oversample: float = OVERSAMPLE, importance: float = IMPORTANCE) -> jax.Array:
    """PointRend's importance sampling (no gradient): (N, num_points, 2) coordinates in [0, 1]."""
    n = logits.shape[0]
    num_uncertain = int(importance * num_points)
    k1, k2 = jax.random.split(key)
    candidates = jax.random.uniform(k1, (n, int(num_points * oversample), 2))
    fresh = jax.random.uniform(k2, (n, num_points - num_uncertain, 2))
    return jax.lax.stop_gradient(select_uncertain(jax.lax.stop_gradient(logits), candidates, fresh, num_uncertain))


class MaskLoss(NamedTuple):
    loss_mask: jax.Array
    loss_dice: jax.Array

    @property
    def total(self) -> jax.Array:
        return self.loss_mask + self.loss_dice


def point_losses(point_logits: jax.Array, point_labels: jax.Array, valid: jax.Array, groups: int = 1) -> MaskLoss:
    """Cross-entropy (mean over points) and dice (smoothing 1) per mask, summed over the valid masks
    of each of `groups` consecutive groups of rows, divided by that group's count, and averaged over
    the groups. (N, P), (N, P), (N,) bool; N a multiple of `groups`."""
    if valid.shape[0] % groups:
        raise ValueError(f"{valid.shape[0]} masks do not split into {groups} equal groups")
    weight = valid.astype(jnp.float32).reshape(groups, -1)
    count = jnp.maximum(weight.sum(1), 1.0)
    ce = jnp.mean(
        jnp.maximum(point_logits, 0) - point_logits * point_labels + jnp.log1p(jnp.exp(-jnp.abs(point_logits))), axis=1
    )
    probs = jax.nn.sigmoid(point_logits)
    dice = 1 - (2 * (probs * point_labels).sum(1) + 1) / (probs.sum(1) + point_labels.sum(1) + 1)

    def normalised(per_mask):
        return jnp.mean((per_mask.reshape(groups, -1) * weight).sum(1) / count)

    return MaskLoss(loss_mask=normalised(ce), loss_dice=normalised(dice))


def mask_loss(key: jax.Array, logits: jax.Array, labels: jax.Array, valid: jax.Array, groups: int = 1,
              **sampling) -> MaskLoss:
    """The full loss: sample points on `logits` (N, h, w), read logits and (soft, bilinear) labels
    (N, H, W) there, and combine (`point_losses`). valid (N,) bool."""
    coords = sample_points(key, logits, **sampling)
    point_labels = point_sample(labels.astype(jnp.float32), coords)
    return point_losses(point_sample(logits.astype(jnp.float32), coords), point_labels, valid, groups)
