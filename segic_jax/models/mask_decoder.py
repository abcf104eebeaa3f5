"""SAM's two-way-transformer mask decoder (depth 2, 8 heads, MLP 2048, attention downsample 2).

Parameter names follow `segment_anything.modeling.MaskDecoder` / `TwoWayTransformer`;
`output_upscaling`'s `nn.Sequential` indices 0/1/3 become `conv1/norm/conv2`.

Tokens can be padded: `token_lengths` (K,) says how many leading tokens of each row are real,
and padded tokens are masked out wherever they would be attended to, so a padded row computes
exactly what the unpadded one would.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from segic_jax.models.layers import ConvTranspose2x2, Mlp, gelu, layer_norm, layer_norm_2d
from segic_jax.ops.attention import multi_head_attention


@dataclasses.dataclass(frozen=True)
class MaskDecoderConfig:
    dim: int = 256
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256


class Attention(nnx.Module):
    """q/k/v projections to `internal_dim`, multi-head attention, projection back."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int, dtype, rngs: nnx.Rngs):
        internal = dim // downsample_rate
        self.num_heads = num_heads
        self.q_proj = nnx.Linear(dim, internal, dtype=dtype, rngs=rngs)
        self.k_proj = nnx.Linear(dim, internal, dtype=dtype, rngs=rngs)
        self.v_proj = nnx.Linear(dim, internal, dtype=dtype, rngs=rngs)
        self.out_proj = nnx.Linear(internal, dim, dtype=dtype, rngs=rngs)

    def __call__(self, q, k, v, key_lengths: jax.Array | None = None) -> jax.Array:
        out = multi_head_attention(
            self.q_proj(q), self.k_proj(k), self.v_proj(v), self.num_heads, key_lengths=key_lengths
        )
        return self.out_proj(out)


class MLPBlock(nnx.Module):
    def __init__(self, dim: int, mlp_dim: int, dtype, rngs: nnx.Rngs):
        self.lin1 = nnx.Linear(dim, mlp_dim, dtype=dtype, rngs=rngs)
        self.lin2 = nnx.Linear(mlp_dim, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.lin2(jax.nn.relu(self.lin1(x)))


class TwoWayAttentionBlock(nnx.Module):
    def __init__(self, cfg: MaskDecoderConfig, skip_first_layer_pe: bool, dtype, rngs: nnx.Rngs):
        d, h, r = cfg.dim, cfg.num_heads, cfg.attention_downsample_rate
        self.skip_first_layer_pe = skip_first_layer_pe
        self.self_attn = Attention(d, h, 1, dtype, rngs)
        self.norm1 = layer_norm(d, dtype, rngs)
        self.cross_attn_token_to_image = Attention(d, h, r, dtype, rngs)
        self.norm2 = layer_norm(d, dtype, rngs)
        self.mlp = MLPBlock(d, cfg.mlp_dim, dtype, rngs)
        self.norm3 = layer_norm(d, dtype, rngs)
        self.norm4 = layer_norm(d, dtype, rngs)
        self.cross_attn_image_to_token = Attention(d, h, r, dtype, rngs)

    def __call__(self, queries, keys, query_pe, key_pe, token_lengths):
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries, token_lengths)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries, token_lengths)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries, token_lengths))
        return queries, keys


class TwoWayTransformer(nnx.Module):
    def __init__(self, cfg: MaskDecoderConfig, dtype, rngs: nnx.Rngs):
        self.layers = nnx.List(
            [TwoWayAttentionBlock(cfg, i == 0, dtype, rngs) for i in range(cfg.depth)]
        )
        self.final_attn_token_to_image = Attention(
            cfg.dim, cfg.num_heads, cfg.attention_downsample_rate, dtype, rngs
        )
        self.norm_final_attn = layer_norm(cfg.dim, dtype, rngs)

    def __call__(self, image, image_pe, tokens, token_lengths=None):
        """image, image_pe (K, h, w, C); tokens (K, T, C) -> (tokens (K, T, C), image (K, h*w, C))."""
        k, h, w, c = image.shape
        keys = image.reshape(k, h * w, c)
        key_pe = image_pe.reshape(k, h * w, c)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe, token_lengths)
        q, kk = queries + tokens, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, kk, keys))
        return queries, keys


class OutputUpscaling(nnx.Module):
    def __init__(self, dim: int, dtype, rngs: nnx.Rngs):
        self.conv1 = ConvTranspose2x2(dim, dim // 4, dtype, rngs)
        self.norm = layer_norm_2d(dim // 4, dtype, rngs)
        self.conv2 = ConvTranspose2x2(dim // 4, dim // 8, dtype, rngs)

    def __call__(self, x):
        return gelu(self.conv2(gelu(self.norm(self.conv1(x)))))


class MaskDecoder(nnx.Module):
    def __init__(self, cfg: MaskDecoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.dim
        self.num_mask_tokens = cfg.num_multimask_outputs + 1
        self.transformer = TwoWayTransformer(cfg, dtype, rngs)
        self.iou_token = nnx.Embed(1, d, rngs=rngs)
        self.mask_tokens = nnx.Embed(self.num_mask_tokens, d, rngs=rngs)
        self.output_upscaling = OutputUpscaling(d, dtype, rngs)
        self.output_hypernetworks_mlps = nnx.List(
            [Mlp([d, d, d, d // 8], dtype, rngs) for _ in range(self.num_mask_tokens)]
        )
        hidden = cfg.iou_head_hidden_dim
        self.iou_prediction_head = Mlp(
            [d] + [hidden] * (cfg.iou_head_depth - 1) + [self.num_mask_tokens], dtype, rngs
        )

    def __call__(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse: jax.Array,
        dense: jax.Array,
        token_lengths: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """All mask tokens' masks and IoU predictions.

        image_embeddings (K, h, w, C), one per row (repeat the image for several prompts);
        image_pe (h, w, C); sparse (K, S, C); dense (K, h, w, C); token_lengths (K,) valid sparse
        tokens per row (default all). -> masks (K, 4, 4h, 4w), iou (K, 4).
        """
        k = sparse.shape[0]
        out_tokens = jnp.concatenate([self.iou_token.embedding[...], self.mask_tokens.embedding[...]], axis=0)
        tokens = jnp.concatenate([jnp.broadcast_to(out_tokens, (k,) + out_tokens.shape), sparse], axis=1)
        lengths = None if token_lengths is None else token_lengths + out_tokens.shape[0]
        src = image_embeddings + dense
        pos = jnp.broadcast_to(image_pe, src.shape)
        hs, src = self.transformer(src, pos, tokens, lengths)
        iou_out, mask_out = hs[:, 0], hs[:, 1 : 1 + self.num_mask_tokens]
        _, h, w, c = image_embeddings.shape
        upscaled = self.output_upscaling(src.reshape(k, h, w, c))  # (K, 4h, 4w, C/8)
        hyper = jnp.stack(
            [mlp(mask_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], axis=1
        )  # (K, 4, C/8)
        masks = jnp.einsum("knc,khwc->knhw", hyper.astype(jnp.float32), upscaled.astype(jnp.float32))
        return masks, self.iou_prediction_head(iou_out).astype(jnp.float32)
