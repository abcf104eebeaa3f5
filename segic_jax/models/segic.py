"""SEGIC's trainable head and its in-context decoding (docs/original.md 2.4 to 2.5, and
one video frame of section 5.6).

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

from segic_jax import checkpoints
from segic_jax.models.config import ModelConfig
from segic_jax.models.layers import layer_norm_2d
from segic_jax.models.mask_decoder import MaskDecoder, MaskDecoderConfig
from segic_jax.models.prompt_encoder import PromptEncoder, PromptEncoderConfig
from segic_jax.ops.correspondence import VOS_SIMILARITY_EPS, peak_points, similarity_maps
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
    low_res: jax.Array  # (B, K, S/3.5, S/3.5) the decoder's own logits, on which the loss is taken
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
    KIND = "segic_head"  # in checkpoint descriptions
    Config = SegicConfig

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
        boxes: jax.Array | None = None,
        use_box: jax.Array | None = None,
        cross: jax.Array | None = None,
        remat_rows: int = 0,
    ) -> Decoded:
        """Segment each target once per reference instance.

        target_features (B, h, w, Cv): DINOv2 patch tokens of the targets.
        reference_features (B, K, Cv): masked-mean reference features, valid ones first.
        valid (B, K) bool: which instances are real.
        text_features (B, K, Ct): CLIP pooled text per row (the target's prompt for instances,
            each class's prompt in semantic mode).
        Training-time prompts, per target (default: inference, no box and cross-instance tokens):
        boxes (B, K, 4) xyxy box prompts used where use_box (B,) is set (then without SAM's padding
        point); cross (B,) bool: all instances' tokens with the type embedding, else only the
        row's own token without it.
        remat_rows > 0 (training): decode the B*K rows in chunks of this many, one after another,
        recomputing each chunk's activations in the backward pass (less memory, more compute).

        Rows differ in how many sparse tokens they have; every row holds the same candidate
        slots, the unused ones are moved to the end and masked out of attention. Token order
        does not change SAM's decoder output (its attention is over the set of tokens).
        """
        cfg = self.cfg
        b, k, _ = reference_features.shape
        s, d, rows = cfg.image_size, cfg.dim, b * k
        use_box = jnp.zeros((b,), bool) if use_box is None else use_box
        cross = jnp.ones((b,), bool) if cross is None else cross
        boxes = jnp.zeros((b, k, 4), jnp.float32) if boxes is None else boxes

        sim = similarity_maps(target_features, reference_features, (s // 4, s // 4), (s, s))
        points = peak_points(sim)  # (B, K, 2)
        inst = self.inst_proj(reference_features.astype(self.dtype)).astype(jnp.float32)  # (B, K, D)
        cross_tokens = cross_instance_tokens(inst, self.inst_type_embed.embedding[...])  # (B, K, K, D)
        text = self.prompt_proj(text_features.astype(self.dtype)).astype(jnp.float32)  # (B, K, D)

        pe = self.prompt_encoder
        point_and_pad = pe.embed_points(points.reshape(rows, 1, 2), jnp.ones((rows, 1), jnp.int32), pad=True)
        candidates = jnp.concatenate(
            [
                point_and_pad,  # point, padding point
                pe.embed_boxes(boxes.reshape(rows, 4)),  # two box corners
                text.reshape(rows, 1, d),
                cross_tokens.reshape(rows, k, d),
                inst.reshape(rows, 1, d),  # own token, without type embedding
            ],
            axis=1,
        )
        per_row = lambda x: jnp.repeat(x, k, axis=0)
        ub, cr = per_row(use_box)[:, None], per_row(cross)[:, None]
        ones = jnp.ones((rows, 1), bool)
        real = jnp.concatenate([ones, ~ub, ub, ub, ones, cr & per_row(valid), ~cr], axis=1)
        return self._decode_rows(target_features, candidates, real, sim, points, remat_rows)

    def decode_video_frame(
        self,
        target_features: jax.Array,
        references: jax.Array,
        reference_valid: jax.Array,
        text_features: jax.Array,
    ) -> Decoded:
        """One frame of SEGIC's video object segmentation (`forward_vos`, docs/original.md 5.2).

        target_features (B, h, w, Cv): the frame's DINOv2 patch tokens.
        references (B, K, R, Cv): each object's memory, masked-mean features of R earlier frames;
            reference_valid (B, K, R) says which slots are filled (an object with none is padding).
        text_features (B, Ct): CLIP pooled text of the instance prompt.

        Unlike `decode`: the propagated mask and the point come from each object's oldest valid
        reference (the first frame in SEGIC) with the cosine norm clamped at 1e-4; every object's
        point is a prompt of every row (its own positive, the others negative, label 0); and the
        instance tokens are all objects' references, cross-instance with the type embedding.
        """
        cfg = self.cfg
        b, k, r, _ = references.shape
        s, d, rows = cfg.image_size, cfg.dim, b * k
        valid = reference_valid.any(axis=-1)  # (B, K)
        oldest = jnp.argmax(reference_valid, axis=-1)  # (B, K)
        first = jnp.take_along_axis(references, oldest[..., None, None], axis=2)[:, :, 0]
        sim = similarity_maps(target_features, first, (s // 4, s // 4), (s, s), eps=VOS_SIMILARITY_EPS)
        points = peak_points(sim)  # (B, K, 2)

        pe = self.prompt_encoder
        all_points = jnp.broadcast_to(points[:, None], (b, k, k, 2)).reshape(rows, k, 2)
        own = jnp.broadcast_to(jnp.eye(k, dtype=jnp.int32), (b, k, k)).reshape(rows, k)
        point_tokens = pe.embed_points(all_points, own, pad=True)  # (B*K, K + 1, D)
        inst = self.inst_proj(references.astype(self.dtype)).astype(jnp.float32)  # (B, K, R, D)
        # row i, token (j, r) = inst[j, r] + type[i == j]: the references act as a batch axis
        cross = cross_instance_tokens(
            inst.transpose(0, 2, 1, 3).reshape(b * r, k, d), self.inst_type_embed.embedding[...]
        )  # (B*R, K, K, D)
        cross = cross.reshape(b, r, k, k, d).transpose(0, 2, 3, 1, 4).reshape(rows, k * r, d)
        text = self.prompt_proj(text_features.astype(self.dtype)).astype(jnp.float32)  # (B, D)
        candidates = jnp.concatenate([point_tokens, jnp.repeat(text, k, axis=0)[:, None], cross], axis=1)
        per_row = lambda x: jnp.broadcast_to(x[:, None], (b, k) + x.shape[1:]).reshape((rows,) + x.shape[1:])
        ones = jnp.ones((rows, 2), bool)  # padding point, text
        real = jnp.concatenate([per_row(valid), ones, per_row(reference_valid.reshape(b, k * r))], axis=1)
        return self._decode_rows(target_features, candidates, real, sim, points)

    def _decode_rows(self, target_features, candidates, real, sim, points, remat_rows: int = 0) -> Decoded:
        """The mask decoder on prompt rows, one per (target, instance).

        candidates (B*K, N, D) sparse tokens, real (B*K, N) which of them are used (the others are
        moved to the end and masked out), sim (B, K, S, S) the propagated masks (dense prompts),
        points (B, K, 2) returned as they are. remat_rows > 0: see `decode`.
        """
        cfg = self.cfg
        b, k, s = sim.shape[0], sim.shape[1], cfg.image_size
        rows = b * k
        order = jnp.argsort(~real, axis=1, stable=True)
        sparse = jnp.take_along_axis(candidates, order[..., None], axis=1)
        image = self.neck(target_features.astype(self.dtype))  # (B, g, g, D): one per target
        per_row = (sparse, sim.reshape(rows, s, s), real.sum(axis=1), jnp.arange(rows) // k)
        if 0 < remat_rows < rows:
            low_res = _rematerialised_rows(self, image, per_row, remat_rows)
        else:
            low_res = self._row_masks(image, *per_row)
        logits = resize(low_res, scale_factor=s / low_res.shape[-1], method="bilinear", axes=(-2, -1))
        return Decoded(
            logits=logits.reshape(b, k, s, s),
            low_res=low_res.reshape((b, k) + low_res.shape[1:]),
            similarity=sim,
            points=points,
        )

    def _row_masks(self, image, sparse, sim, lengths, target) -> jax.Array:
        """Single-mask low-resolution logits (R, 4g, 4g) of R prompt rows: row r decodes
        image[target[r]] with the sparse tokens sparse[r] (the first lengths[r] real) and the
        dense prompt from its propagated mask sim[r] (S, S)."""
        pe = self.prompt_encoder
        dense = pe.mask_downscaling(sim / self.cfg.tau).astype(jnp.float32)
        masks, _ = self.mask_decoder(image[target], pe.dense_pe(), sparse, dense, lengths)
        return masks[:, 0]  # mask token 0: the single-mask output


def _rematerialised_rows(head: SegicHead, image, per_row, chunk: int) -> jax.Array:
    """`head._row_masks` over the rows in chunks of `chunk`, one after another (lax.map), each
    under jax.checkpoint: the backward pass keeps only each chunk's inputs and recomputes its
    activations, so the decoder's activations take the memory of one chunk instead of all rows."""
    rows = per_row[0].shape[0]
    n = -(-rows // chunk)
    index = jnp.minimum(jnp.arange(n * chunk), rows - 1)  # the last chunk repeats the last row
    chunks = tuple(x[index].reshape((n, chunk) + x.shape[1:]) for x in per_row)
    graph, state = nnx.split(head)
    decode = jax.checkpoint(lambda state, image, xs: nnx.merge(graph, state)._row_masks(image, *xs))
    out = jax.lax.map(lambda xs: decode(state, image, xs), chunks)
    return out.reshape((n * chunk,) + out.shape[2:])[:rows]


def load(path: str, *, dtype=jnp.float32) -> SegicHead:
    """A SEGIC head from a checkpoint directory (the head/ of a converted SEGIC, `models.bundle`)."""
    return checkpoints.load_model(path, SegicHead, dtype=dtype)
