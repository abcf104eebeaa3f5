"""SEGIC's trainable head and its in-context decoding (SEGIC_SPEC.md sections 2.5 to 2.11).

The frozen encoders (DINOv2, CLIP text) live in their own modules; this head takes their outputs:
target patch features, reference-instance features (masked means) and projected text tokens.

Decoding is batched with static shapes: B targets, each with up to K reference instances padded
at the end (`valid` (B, K)). Every instance is one row of the mask decoder; the cross-instance
tokens of a row hold all valid instances of its target, and padded ones are masked out of the
attention, so a padded batch gives exactly what the reference gives target by target.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from segic_jax.models.config import ModelConfig
from segic_jax.models.layers import layer_norm_2d
from segic_jax.models.mask_decoder import MaskDecoder, MaskDecoderConfig
from segic_jax.models.prompt_encoder import PromptEncoder, PromptEncoderConfig
from segic_jax.ops.correspondence import peak_points, similarity_maps
from segic_jax.ops.resize import resize


@dataclasses.dataclass(frozen=True)
class SegicConfig(ModelConfig):
    NAME = "SEGIC"

    vision_dim: int = 1024  # DINOv2 width (ViT-L)
    text_dim: int = 768  # CLIP text width (ViT-L/14)
    image_size: int = 896  # square model input
    patch_size: int = 14
    dim: int = 256  # prompt and decoder width
    mask_strides: tuple[int, int] = (7, 2)  # dense-prompt downscaling, image_size -> feature grid
    tau: float = 1.0  # the similarity map is divided by this before the prompt encoder

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


class Neck(nnx.Module):
    """1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d; no biases, no activation."""

    def __init__(self, cfg: SegicConfig, dtype, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(cfg.vision_dim, cfg.dim, (1, 1), use_bias=False, dtype=dtype, rngs=rngs)
        self.norm1 = layer_norm_2d(cfg.dim, dtype, rngs)
        self.conv2 = nnx.Conv(cfg.dim, cfg.dim, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=dtype, rngs=rngs)
        self.norm2 = layer_norm_2d(cfg.dim, dtype, rngs)

    def __call__(self, x):
        return self.norm2(self.conv2(self.norm1(self.conv1(x))))


class Decoded(NamedTuple):
    logits: jax.Array  # (B, K, S, S) mask logits at the model input size; > 0 is foreground
    similarity: jax.Array  # (B, K, S, S) propagated masks (cosine similarity)
    points: jax.Array  # (B, K, 2) point prompts, (x, y) pixels


def cross_instance_tokens(tokens: jax.Array, type_embed: jax.Array) -> jax.Array:
    """Every row sees all instances' tokens, its own marked with type 1 and the others with 0.

    tokens (B, K, D), type_embed (2, D) -> (B, K, K, D): out[b, i, j] = tokens[b, j] + type[i == j].
    """
    k = tokens.shape[1]
    own = jnp.eye(k, dtype=bool)[None, :, :, None]
    return tokens[:, None] + jnp.where(own, type_embed[1], type_embed[0])


class SegicHead(nnx.Module):
    def __init__(self, cfg: SegicConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        self.dtype = dtype
        self.neck = Neck(cfg, dtype, rngs)
        self.prompt_encoder = PromptEncoder(
            PromptEncoderConfig(
                embed_dim=cfg.dim,
                image_embedding_size=(cfg.grid, cfg.grid),
                input_image_size=(cfg.image_size, cfg.image_size),
                mask_strides=cfg.mask_strides,
            ),
            dtype=dtype,
            rngs=rngs,
        )
        self.mask_decoder = MaskDecoder(MaskDecoderConfig(dim=cfg.dim), dtype=dtype, rngs=rngs)
        self.inst_type_embed = nnx.Embed(2, cfg.dim, rngs=rngs)
        self.prompt_proj = nnx.Linear(cfg.text_dim, cfg.dim, dtype=dtype, rngs=rngs)
        self.inst_proj = nnx.Linear(cfg.vision_dim, cfg.dim, dtype=dtype, rngs=rngs)

    def decode(
        self,
        target_features: jax.Array,
        reference_features: jax.Array,
        valid: jax.Array,
        text_features: jax.Array,
    ) -> Decoded:
        """Segment each target once per reference instance (inference path: no box, cross-instance on).

        target_features (B, h, w, Cv): DINOv2 patch tokens of the targets.
        reference_features (B, K, Cv): masked-mean reference features, valid ones first.
        valid (B, K) bool: which instances are real.
        text_features (B, K, Ct): CLIP pooled text per row (the target's prompt for instances,
            each class's prompt in semantic mode).
        """
        cfg = self.cfg
        b, k, _ = reference_features.shape
        s = cfg.image_size
        sim = similarity_maps(target_features, reference_features, (s // 4, s // 4), (s, s))
        points = peak_points(sim)  # (B, K, 2)

        inst = self.inst_proj(reference_features.astype(self.dtype))  # (B, K, D)
        inst = cross_instance_tokens(inst, self.inst_type_embed.embedding[...])  # (B, K, K, D)
        text = self.prompt_proj(text_features.astype(self.dtype))[:, :, None]  # (B, K, 1, D)
        texts = jnp.concatenate([text, inst.astype(text.dtype)], axis=2).reshape(b * k, 1 + k, cfg.dim)

        rows = b * k
        sparse, dense = self.prompt_encoder(
            (points.reshape(rows, 1, 2), jnp.ones((rows, 1), jnp.int32)),
            None,
            (sim / cfg.tau).reshape(rows, s, s),
            texts,
        )
        # point + padding point + text + the valid instance tokens
        lengths = jnp.repeat(3 + valid.sum(axis=1), k)
        image = self.neck(target_features.astype(self.dtype))  # (B, g, g, D)
        image = jnp.repeat(image, k, axis=0)
        masks, _ = self.mask_decoder(image, self.prompt_encoder.dense_pe(), sparse, dense, lengths)
        low_res = masks[:, 0]  # mask token 0: single-mask output
        logits = resize(low_res, scale_factor=s / low_res.shape[-1], method="bilinear", axes=(-2, -1))
        return Decoded(
            logits=logits.reshape(b, k, s, s),
            similarity=sim,
            points=points,
        )
