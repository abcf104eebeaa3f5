"""The frozen encoders as SEGIC uses them: compute dtypes, building DINOv2 and the CLIP text model
from a config (converted weights or random ones of a named size), and encoding prompts (which
prompt an episode uses: `data.prompts`).

Shared by inference, evaluation and training, so none of them has to reach into another for it.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from segic_jax.models import clip_text, dinov2

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str, field: str = "dtype"):
    """The jnp dtype called `name` (see DTYPES); an unknown name is a ValueError naming `field`."""
    if name not in DTYPES:
        raise ValueError(f"{field} must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def matmul_precision(dtype) -> str:
    """float32 means PyTorch's float32: full-precision matmuls (XLA uses TF32 on GPUs by default)."""
    return "highest" if dtype == jnp.float32 else "default"


def build_encoder(config, checkpoint: str = "") -> tuple[dinov2.Dinov2, str]:
    """Frozen DINOv2 from `checkpoint` or config.dinov2: converted weights (`checkpoint`) or a random
    `arch` (optionally cut to `depth` blocks); returns the model and a note saying which."""
    dtype = compute_dtype(config.dtype, "config.dtype")
    checkpoint = checkpoint or config.dinov2.checkpoint
    if checkpoint:
        return dinov2.load(checkpoint, dtype=dtype), f"converted weights from {checkpoint}"
    overrides = {"depth": config.dinov2.depth} if config.dinov2.get("depth", 0) else {}
    cfg = dinov2.dinov2_config(config.dinov2.arch, **overrides)
    return dinov2.Dinov2(cfg, dtype=dtype, rngs=nnx.Rngs(config.seed)), f"random {config.dinov2.arch} weights"


def build_text_encoder(config, checkpoint: str = "") -> tuple[clip_text.ClipTextModel, clip_text.ClipTokenizer, str]:
    """Frozen CLIP text model and tokenizer: converted (`checkpoint`, or config.clip.checkpoint) or a
    random model of config.clip.width / depth with the byte-level tokenizer (no download)."""
    dtype = compute_dtype(config.dtype, "config.dtype")
    checkpoint = checkpoint or config.clip.checkpoint
    if checkpoint:
        model = clip_text.load(checkpoint, dtype=dtype)
        return model, clip_text.ClipTokenizer.from_folder(checkpoint), f"converted weights from {checkpoint}"
    vocab = clip_text.byte_vocab()
    cfg = clip_text.ClipTextConfig(
        vocab_size=len(vocab), width=config.clip.width, depth=config.clip.depth, num_heads=max(1, config.clip.width // 64),
        mlp_dim=4 * config.clip.width, eos_token_id=vocab[clip_text.EOS_TOKEN],
    )
    model = clip_text.ClipTextModel(cfg, dtype=dtype, rngs=nnx.Rngs(config.seed + 1))
    return model, clip_text.ClipTokenizer.bytes_only(), f"random {config.clip.depth}-layer CLIP text, byte tokenizer"


def encode_prompts(text_model: clip_text.ClipTextModel, tokenizer: clip_text.ClipTokenizer, prompts: Sequence[str]) -> np.ndarray:
    """(N, Ct) float32 pooled CLIP features of the prompts."""
    graphdef, state = nnx.split(text_model)
    ids = jnp.asarray(tokenizer(list(prompts)))
    return np.asarray(_encode_text(graphdef, matmul_precision(text_model.dtype), state, ids), np.float32)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _encode_text(graphdef, precision, state, ids: jax.Array) -> jax.Array:
    with jax.default_matmul_precision(precision):
        return nnx.merge(graphdef, state)(ids).pooled
