"""DINOv2 vision transformer (ViT-S/B/L/G, patch 14, optional register tokens) in Flax NNX.

Parameter names follow the official `facebookresearch/dinov2` hub model (`blocks.{i}.attn.qkv`,
`ls1.gamma`, `mlp.w12` ...), so its checkpoints convert with a one-line-per-tensor table
(`segic_jax.conversion.dinov2`).

Input: normalised images, channels-last (B, H, W, 3), H and W multiples of 14.
Output: `Dinov2Output` with the final-LayerNorm patch tokens as a (B, H/14, W/14, C) map plus the
cls token (B, C) and register tokens (B, R, C), all float32.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from segic_jax import checkpoints
from segic_jax.models.config import ModelConfig
from segic_jax.ops.attention import multi_head_attention
from segic_jax.ops.fp8 import fp8_dot_general
from segic_jax.ops.image import normalize_images
from segic_jax.ops.resize import resize, scaled_size


@dataclasses.dataclass(frozen=True)
class Dinov2Config(ModelConfig):
    NAME = "DINOv2"

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    ffn: str = "mlp"  # "mlp" (exact-erf GELU) or "swiglu" (ViT-G)
    num_register_tokens: int = 0
    patch_size: int = 14
    pos_grid: int = 37  # side of the pretrained positional-embedding grid (518 / 14)
    # How the positional embedding is resampled to another grid; see `interpolate_pos_embed`.
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False

    @property
    def mlp_hidden(self) -> int:
        hidden = int(self.embed_dim * self.mlp_ratio)
        if self.ffn == "swiglu":  # two thirds of the MLP width, rounded up to a multiple of 8
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        return hidden


_SIZES = {
    "vits14": dict(embed_dim=384, depth=12, num_heads=6),
    "vitb14": dict(embed_dim=768, depth=12, num_heads=12),
    "vitl14": dict(embed_dim=1024, depth=24, num_heads=16),
    "vitg14": dict(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu"),
}
# The hub builds the register variants with size-based, antialiased resampling and the
# original ones with the 0.1-offset scale factor.
ARCHS = {
    **{name: Dinov2Config(**kw) for name, kw in _SIZES.items()},
    **{
        f"{name}_reg": Dinov2Config(
            **kw, num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True
        )
        for name, kw in _SIZES.items()
    },
}


def dinov2_config(arch: str, **overrides) -> Dinov2Config:
    """A named architecture (`vitl14`, `vits14_reg`, ...), optionally with fields replaced."""
    if arch not in ARCHS:
        raise ValueError(f"unknown DINOv2 architecture {arch!r}; choose one of {sorted(ARCHS)}")
    return dataclasses.replace(ARCHS[arch], **overrides)


def interpolate_pos_embed(
    pos: jax.Array, grid: tuple[int, int], offset: float, antialias: bool
) -> jax.Array:
    """Resample the (M, M, C) patch positional embedding to `grid` (h, w) as the reference does.

    With `offset > 0` (hub DINOv2 without registers) PyTorch is given scale factors (n + offset) / M,
    and the sampling positions follow from those factors, not from n / M. With `offset == 0` the
    target size is given directly (hub register models, Hugging Face). Bicubic, float32; the grid
    the embedding was trained at is returned untouched, as the reference does.
    """
    m = pos.shape[0]
    if tuple(grid) == (m, m):
        return pos
    pos = pos.astype(jnp.float32)
    if offset:
        factors = [(n + offset) / m for n in grid]
        got = tuple(scaled_size(m, f) for f in factors)
        if got != tuple(grid):
            raise ValueError(f"offset {offset} resamples a {m}x{m} grid to {got}, not {grid}")
        return resize(pos, scale_factor=factors, method="bicubic", antialias=antialias, axes=(0, 1))
    return resize(pos, size=grid, method="bicubic", antialias=antialias, axes=(0, 1))


class Dinov2Output(NamedTuple):
    patch_tokens: jax.Array  # (B, H/14, W/14, C)
    cls_token: jax.Array  # (B, C)
    register_tokens: jax.Array  # (B, R, C)


def _layer_norm(dim: int, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, use_fast_variance=False, rngs=rngs)


class PatchEmbed(nnx.Module):
    def __init__(self, cfg: Dinov2Config, dtype, rngs: nnx.Rngs):
        p = cfg.patch_size
        self.proj = nnx.Conv(
            3, cfg.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)  # (B, H/p, W/p, C)


class Attention(nnx.Module):
    def __init__(self, cfg: Dinov2Config, dtype, rngs: nnx.Rngs):
        c = cfg.embed_dim
        self.num_heads = cfg.num_heads
        self.qkv = nnx.Linear(c, 3 * c, dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(c, c, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
        return self.proj(multi_head_attention(q, k, v, self.num_heads))


class Mlp(nnx.Module):
    def __init__(self, cfg: Dinov2Config, dtype, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(cfg.embed_dim, cfg.mlp_hidden, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(cfg.mlp_hidden, cfg.embed_dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class SwiGLU(nnx.Module):
    def __init__(self, cfg: Dinov2Config, dtype, rngs: nnx.Rngs):
        self.w12 = nnx.Linear(cfg.embed_dim, 2 * cfg.mlp_hidden, dtype=dtype, rngs=rngs)
        self.w3 = nnx.Linear(cfg.mlp_hidden, cfg.embed_dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate, up = jnp.split(self.w12(x), 2, axis=-1)
        return self.w3(jax.nn.silu(gate) * up)


class LayerScale(nnx.Module):
    def __init__(self, dim: int):
        self.gamma = nnx.Param(jnp.ones((dim,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.gamma[...].astype(x.dtype)


class Block(nnx.Module):
    def __init__(self, cfg: Dinov2Config, dtype, rngs: nnx.Rngs):
        self.norm1 = _layer_norm(cfg.embed_dim, dtype, rngs)
        self.attn = Attention(cfg, dtype, rngs)
        self.ls1 = LayerScale(cfg.embed_dim)
        self.norm2 = _layer_norm(cfg.embed_dim, dtype, rngs)
        self.mlp = (SwiGLU if cfg.ffn == "swiglu" else Mlp)(cfg, dtype, rngs)
        self.ls2 = LayerScale(cfg.embed_dim)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class Dinov2(nnx.Module):
    """DINOv2 backbone. `dtype` is the compute dtype; parameters stay float32."""

    KIND = "dinov2"  # in checkpoint descriptions
    Config = Dinov2Config

    def __init__(self, cfg: Dinov2Config, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if cfg.ffn not in ("mlp", "swiglu"):
            raise ValueError(f"ffn must be 'mlp' or 'swiglu', got {cfg.ffn!r}")
        self.cfg = cfg
        self.dtype = dtype
        c = cfg.embed_dim
        init = nnx.initializers.truncated_normal(0.02)
        self.cls_token = nnx.Param(init(rngs.params(), (1, 1, c)))
        self.pos_embed = nnx.Param(init(rngs.params(), (1, 1 + cfg.pos_grid**2, c)))
        if cfg.num_register_tokens:
            self.register_tokens = nnx.Param(
                init(rngs.params(), (1, cfg.num_register_tokens, c))
            )
        self.patch_embed = PatchEmbed(cfg, dtype, rngs)
        self.blocks = nnx.List([Block(cfg, dtype, rngs) for _ in range(cfg.depth)])
        self.norm = _layer_norm(c, jnp.float32, rngs)

    def __call__(self, images: jax.Array) -> Dinov2Output:
        """images (B, H, W, 3), normalised, with H and W multiples of the patch size."""
        cfg = self.cfg
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"DINOv2 expects images of shape (B, H, W, 3), got {images.shape}")
        b, h, w, _ = images.shape
        if h % cfg.patch_size or w % cfg.patch_size:
            raise ValueError(
                f"DINOv2 input {h}x{w} is not a multiple of the patch size {cfg.patch_size}; "
                "resize or pad the images first"
            )
        grid = (h // cfg.patch_size, w // cfg.patch_size)
        patches = self.patch_embed(images.astype(self.dtype))  # (B, h, w, C)

        pos = self.pos_embed[...]
        cls_pos = pos[:, :1]
        patch_pos = interpolate_pos_embed(
            pos[0, 1:].reshape(cfg.pos_grid, cfg.pos_grid, -1),
            grid,
            cfg.interpolate_offset,
            cfg.interpolate_antialias,
        )
        cls = self.cls_token[...] + cls_pos
        tokens = patches.reshape(b, grid[0] * grid[1], -1) + patch_pos.reshape(1, -1, cls.shape[-1])
        parts = [jnp.broadcast_to(cls, (b, 1, cls.shape[-1]))]
        if cfg.num_register_tokens:
            regs = self.register_tokens[...]
            parts.append(jnp.broadcast_to(regs, (b,) + regs.shape[1:]))
        x = jnp.concatenate([p.astype(self.dtype) for p in parts + [tokens]], axis=1)

        for block in self.blocks:
            x = block(x)
        x = self.norm(x.astype(jnp.float32))
        r = cfg.num_register_tokens
        return Dinov2Output(
            patch_tokens=x[:, 1 + r :].reshape(b, grid[0], grid[1], -1),
            cls_token=x[:, 0],
            register_tokens=x[:, 1 : 1 + r],
        )


def patch_features(encoder: Dinov2, pixels: jax.Array, valid_hw: jax.Array | None = None) -> jax.Array:
    """SEGIC's encoder input and output: pixels in [0, 255] (B, H, W, 3), normalised with the
    padding beyond `valid_hw` (B, 2) zeroed, -> float32 patch features (B, H/14, W/14, C)."""
    return encoder(normalize_images(pixels, valid_hw)).patch_tokens.astype(jnp.float32)


def use_fp8_matmuls(encoder: Dinov2) -> Dinov2:
    """Switch the transformer blocks' linear layers (qkv, proj, MLP: ~98 % of DINOv2's FLOPs at
    896 px besides attention) to FP8 e4m3 products with per-tensor scaling (`ops.fp8`). An opt-in for
    Hopper-class GPUs, where XLA turns them into FP8 matmuls; the patch embedding, attention and
    LayerNorms keep the model's dtype. Changes the module in place and returns it."""
    for block in encoder.blocks:
        mlp = block.mlp
        layers = (mlp.w12, mlp.w3) if isinstance(mlp, SwiGLU) else (mlp.fc1, mlp.fc2)
        for layer in (block.attn.qkv, block.attn.proj, *layers):
            layer.dot_general = fp8_dot_general
    return encoder


def load(path: str, *, dtype=jnp.float32) -> Dinov2:
    """A DINOv2 model from a checkpoint directory written by `python -m segic_jax.convert dinov2`."""
    return checkpoints.load_model(path, Dinov2, dtype=dtype)
