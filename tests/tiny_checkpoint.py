"""A tiny random SEGIC written as a converted checkpoint, in a second (no PyTorch involved)."""

import numpy as np

from segic_jax import checkpoints
from segic_jax.models import bundle, clip_text, dinov2
from segic_jax.models.segic import SegicConfig, SegicHead


def random_params(model_cls, config, rng):
    """Random weights from the parameter shapes alone (building the modules eagerly is slower)."""
    out = {}
    for name, shape in checkpoints.param_shapes(model_cls, config).items():
        if name.endswith("scale"):
            out[name] = np.ones(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            out[name] = (rng.normal(0, 1 / np.sqrt(fan_in), shape) * (0.1 if name.endswith("bias") else 1)).astype(np.float32)
    return out


def save_tiny_checkpoint(path):
    """A converted-checkpoint directory (`models.bundle`) of a tiny random SEGIC at 112 px, with the
    byte-level tokenizer."""
    rng = np.random.default_rng(0)
    dino = dinov2.dinov2_config("vits14", depth=1, embed_dim=32, num_heads=2, pos_grid=8)
    text = clip_text.ClipTextConfig(vocab_size=len(clip_text.byte_vocab()), width=16, depth=1, num_heads=2, mlp_dim=32,
                                    eos_token_id=len(clip_text.byte_vocab()) - 1)
    head = SegicConfig(vision_dim=32, text_dim=16, image_size=112)
    # drawn in this order so that the weights stay those of the tests' earlier figures
    dino_params = random_params(dinov2.Dinov2, dino, rng)
    text_params = random_params(clip_text.ClipTextModel, text, rng)
    head_params = random_params(SegicHead, head, rng)
    return bundle.save(path, bundle.Part(head, head_params), bundle.Part(dino, dino_params), bundle.Part(text, text_params))
