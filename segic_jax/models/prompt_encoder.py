"""SAM's prompt encoder as SEGIC uses it: random-Fourier positional encoding, point and box
embeddings, a dense branch for the mask prompt with configurable strides (7 then 2 at 896 px),
and extra sparse tokens (text and reference-instance tokens) appended after points and boxes.

Parameter names follow `segment_anything.modeling.PromptEncoder`; the dense branch's
`nn.Sequential` indices 0/1/3/4/6 become `conv1/norm1/conv2/norm2/conv3`.
Shapes: points (K, P, 2) as (x, y) pixels in the model input frame, labels (K, P) with 1 positive,
0 negative, -1 padding; boxes (K, 4) xyxy; masks (K, H, W) at the input size; texts (K, T, D).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from segic_jax.models.layers import Buffer, gelu, layer_norm_2d


@dataclasses.dataclass(frozen=True)
class PromptEncoderConfig:
    embed_dim: int = 256
    image_embedding_size: tuple[int, int] = (64, 64)
    input_image_size: tuple[int, int] = (896, 896)
    mask_in_chans: int = 16
    mask_strides: tuple[int, int] = (7, 2)


class PositionEmbeddingRandom(nnx.Module):
    """Positional encoding with random spatial frequencies: [sin, cos](2 pi (2c - 1) G)."""

    def __init__(self, num_pos_feats: int, rngs: nnx.Rngs):
        self.positional_encoding_gaussian_matrix = Buffer(
            jax.random.normal(rngs.params(), (2, num_pos_feats), jnp.float32)
        )

    def encode(self, coords: jax.Array) -> jax.Array:
        """coords (..., 2) in [0, 1], (x, y) -> (..., 2 * num_pos_feats) float32."""
        u = (2.0 * coords.astype(jnp.float32) - 1.0) @ self.positional_encoding_gaussian_matrix[...]
        u = 2.0 * jnp.pi * u
        return jnp.concatenate([jnp.sin(u), jnp.cos(u)], axis=-1)

    def grid(self, size: tuple[int, int]) -> jax.Array:
        """Encoding of pixel centres of an (h, w) grid -> (h, w, C)."""
        h, w = size
        y = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
        x = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
        xy = jnp.stack(jnp.broadcast_arrays(x[None, :], y[:, None]), axis=-1)
        return self.encode(xy)

    def encode_pixels(self, coords: jax.Array, image_size: tuple[int, int]) -> jax.Array:
        """coords (..., 2) (x, y) in pixels of an (h, w) image."""
        h, w = image_size
        return self.encode(coords / jnp.asarray([w, h], jnp.float32))


class MaskDownscaling(nnx.Module):
    def __init__(self, cfg: PromptEncoderConfig, dtype, rngs: nnx.Rngs):
        c, (s1, s2) = cfg.mask_in_chans, cfg.mask_strides
        self.conv1 = nnx.Conv(1, c // 4, (s1, s1), strides=(s1, s1), padding="VALID", dtype=dtype, rngs=rngs)
        self.norm1 = layer_norm_2d(c // 4, dtype, rngs)
        self.conv2 = nnx.Conv(c // 4, c, (s2, s2), strides=(s2, s2), padding="VALID", dtype=dtype, rngs=rngs)
        self.norm2 = layer_norm_2d(c, dtype, rngs)
        self.conv3 = nnx.Conv(c, cfg.embed_dim, (1, 1), dtype=dtype, rngs=rngs)

    def __call__(self, masks: jax.Array) -> jax.Array:
        x = gelu(self.norm1(self.conv1(masks[..., None])))
        x = gelu(self.norm2(self.conv2(x)))
        return self.conv3(x)


class PromptEncoder(nnx.Module):
    def __init__(self, cfg: PromptEncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.embed_dim
        self.pe_layer = PositionEmbeddingRandom(d // 2, rngs)
        self.point_embeddings = nnx.List([nnx.Embed(1, d, rngs=rngs) for _ in range(4)])
        self.not_a_point_embed = nnx.Embed(1, d, rngs=rngs)
        self.mask_downscaling = MaskDownscaling(cfg, dtype, rngs)
        self.no_mask_embed = nnx.Embed(1, d, rngs=rngs)

    def dense_pe(self) -> jax.Array:
        """(h, w, C) positional encoding of the image-embedding grid."""
        return self.pe_layer.grid(self.cfg.image_embedding_size)

    def _embedding(self, table: nnx.Embed) -> jax.Array:
        return table.embedding[0]

    def embed_points(self, coords: jax.Array, labels: jax.Array, pad: bool) -> jax.Array:
        coords = coords.astype(jnp.float32) + 0.5  # to pixel centres
        if pad:  # SAM appends a padding point when no box is given
            coords = jnp.concatenate([coords, jnp.zeros(coords.shape[:-2] + (1, 2), coords.dtype)], axis=-2)
            labels = jnp.concatenate([labels, -jnp.ones(labels.shape[:-1] + (1,), labels.dtype)], axis=-1)
        pe = self.pe_layer.encode_pixels(coords, self.cfg.input_image_size)
        lab = labels[..., None]
        pe = jnp.where(lab == -1, self._embedding(self.not_a_point_embed), pe)
        pe = pe + jnp.where(lab == 0, self._embedding(self.point_embeddings[0]), 0.0)
        return pe + jnp.where(lab == 1, self._embedding(self.point_embeddings[1]), 0.0)

    def embed_boxes(self, boxes: jax.Array) -> jax.Array:
        corners = (boxes.astype(jnp.float32) + 0.5).reshape(boxes.shape[:-1] + (2, 2))
        pe = self.pe_layer.encode_pixels(corners, self.cfg.input_image_size)
        corner_embed = jnp.stack([self._embedding(self.point_embeddings[2]), self._embedding(self.point_embeddings[3])])
        return pe + corner_embed

    def __call__(
        self,
        points: tuple[jax.Array, jax.Array] | None,
        boxes: jax.Array | None,
        masks: jax.Array | None,
        texts: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """-> sparse (K, S, C) in the order [points (+pad), box corners, texts], dense (K, h, w, C)."""
        parts = []
        if points is not None:
            parts.append(self.embed_points(*points, pad=boxes is None))
        if boxes is not None:
            parts.append(self.embed_boxes(boxes))
        if texts is not None:
            parts.append(texts.astype(jnp.float32))
        if not parts:
            raise ValueError("the prompt encoder needs points, boxes or texts")
        k = parts[0].shape[0]
        sparse = jnp.concatenate(parts, axis=1)
        if masks is not None:
            dense = self.mask_downscaling(masks).astype(jnp.float32)
        else:
            h, w = self.cfg.image_embedding_size
            dense = jnp.broadcast_to(self._embedding(self.no_mask_embed), (k, h, w, self.cfg.embed_dim))
        return sparse, dense
