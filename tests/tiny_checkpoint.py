"""A tiny random SEGIC written as a converted checkpoint, in a second (no PyTorch involved)."""

import os

import numpy as np

from segic_jax import checkpoints
from segic_jax.models import clip_text, dinov2
from segic_jax.models.segic import SegicConfig


def random_params(kind, config, rng):
    """Random weights from the parameter shapes alone (building the modules eagerly is slower)."""
    out = {}
    for name, shape in checkpoints.param_shapes(kind, config).items():
        if name.endswith("scale"):
            out[name] = np.ones(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            out[name] = (rng.normal(0, 1 / np.sqrt(fan_in), shape) * (0.1 if name.endswith("bias") else 1)).astype(np.float32)
    return out


def save_tiny_checkpoint(path):
    """A converted-checkpoint directory (head/, dinov2/, clip_text/) of a tiny random SEGIC at 112 px."""
    rng = np.random.default_rng(0)
    dino = dinov2.dinov2_config("vits14", depth=1, embed_dim=32, num_heads=2, pos_grid=8)
    vocab = clip_text.write_vocab(os.path.join(path + "_vocab"))
    text = clip_text.ClipTextConfig(vocab_size=len(clip_text.byte_vocab()), width=16, depth=1, num_heads=2, mlp_dim=32,
                                    eos_token_id=len(clip_text.byte_vocab()) - 1)
    head = SegicConfig(vision_dim=32, text_dim=16, image_size=112)
    checkpoints.save_model(os.path.join(path, "dinov2"), "dinov2", dino, random_params("dinov2", dino, rng))
    checkpoints.save_model(os.path.join(path, "clip_text"), "clip_text", text, random_params("clip_text", text, rng),
                           extra_files={n: os.path.join(vocab, n) for n in ("vocab.json", "merges.txt")})
    checkpoints.save_model(os.path.join(path, "head"), "segic_head", head, random_params("segic_head", head, rng))
    return path
