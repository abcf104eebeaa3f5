"""DINOv2 weights -> `segic_jax.models.dinov2.Dinov2`.

Two source layouts:
  - the official hub checkpoints `dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth` (our names follow
    them, so the table is nearly the identity; training checkpoints that group blocks into chunks,
    `blocks.{chunk}.{i}`, are read too);
  - Hugging Face `facebook/dinov2-*` and `facebook/dinov2-with-registers-*` folders
    (separate q/k/v are fused; SwiGLU is read in both the `weights_in/out` and the
    `gate/up/down_proj` naming).

The architecture is read from the tensors (hub) or config.json (Hugging Face). The positional-
embedding resampling recorded in the converted config follows the implementation the weights come
from unless overridden: hub without registers uses the 0.1 offset and no antialiasing, hub register
models and Hugging Face resample to the target size, Hugging Face's register model with
antialiasing.
"""

from __future__ import annotations

import math
import os
import re
from typing import Mapping

import numpy as np

from segic_jax import checkpoints
from segic_jax.conversion.core import (
    ConversionError,
    Rule,
    apply_rules,
    conv,
    linear,
    read_hf_config,
    read_state_dict,
)
from segic_jax.models.dinov2 import Dinov2, Dinov2Config

_BLOCK = r"blocks\.(?:\d+\.)?(\d+)"  # hub blocks, optionally inside a block chunk

HUB_RULES = [
    Rule(r"(cls_token|pos_embed|register_tokens)", r"\1"),
    Rule(r"patch_embed\.proj\.weight", "patch_embed.proj.kernel", conv),
    Rule(r"patch_embed\.proj\.bias", "patch_embed.proj.bias"),
    Rule(_BLOCK + r"\.(norm[12])\.weight", r"blocks.\1.\2.scale"),
    Rule(_BLOCK + r"\.(norm[12])\.bias", r"blocks.\1.\2.bias"),
    Rule(_BLOCK + r"\.attn\.(qkv|proj)\.weight", r"blocks.\1.attn.\2.kernel", linear),
    Rule(_BLOCK + r"\.attn\.(qkv|proj)\.bias", r"blocks.\1.attn.\2.bias"),
    Rule(_BLOCK + r"\.(ls[12])\.gamma", r"blocks.\1.\2.gamma"),
    Rule(_BLOCK + r"\.mlp\.(fc1|fc2|w12|w3)\.weight", r"blocks.\1.mlp.\2.kernel", linear),
    Rule(_BLOCK + r"\.mlp\.(fc1|fc2|w12|w3)\.bias", r"blocks.\1.mlp.\2.bias"),
    Rule(r"norm\.weight", "norm.scale"),
    Rule(r"norm\.bias", "norm.bias"),
]
HUB_IGNORE = [r"mask_token"]  # only used for masked-image pretraining

_LAYER = r"encoder\.layer\.(\d+)"
_QKV = {"query": 0, "key": 1, "value": 2}
HF_RULES = [
    Rule(r"embeddings\.cls_token", "cls_token"),
    Rule(r"embeddings\.position_embeddings", "pos_embed"),
    Rule(r"embeddings\.register_tokens", "register_tokens"),
    Rule(r"embeddings\.patch_embeddings\.projection\.weight", "patch_embed.proj.kernel", conv),
    Rule(r"embeddings\.patch_embeddings\.projection\.bias", "patch_embed.proj.bias"),
    Rule(_LAYER + r"\.(norm[12])\.weight", r"blocks.\1.\2.scale"),
    Rule(_LAYER + r"\.(norm[12])\.bias", r"blocks.\1.\2.bias"),
    *[
        Rule(_LAYER + rf"\.attention\.attention\.{name}\.weight", r"blocks.\1.attn.qkv.kernel", linear, (i, 3))
        for name, i in _QKV.items()
    ],
    *[
        Rule(_LAYER + rf"\.attention\.attention\.{name}\.bias", r"blocks.\1.attn.qkv.bias", part=(i, 3))
        for name, i in _QKV.items()
    ],
    Rule(_LAYER + r"\.attention\.output\.dense\.weight", r"blocks.\1.attn.proj.kernel", linear),
    Rule(_LAYER + r"\.attention\.output\.dense\.bias", r"blocks.\1.attn.proj.bias"),
    # transformers >= 5 in-memory names (what `model.state_dict()` gives)
    *[
        Rule(_LAYER + rf"\.attention\.{n}_proj\.weight", r"blocks.\1.attn.qkv.kernel", linear, (i, 3))
        for n, i in (("q", 0), ("k", 1), ("v", 2))
    ],
    *[
        Rule(_LAYER + rf"\.attention\.{n}_proj\.bias", r"blocks.\1.attn.qkv.bias", part=(i, 3))
        for n, i in (("q", 0), ("k", 1), ("v", 2))
    ],
    Rule(_LAYER + r"\.attention\.o_proj\.weight", r"blocks.\1.attn.proj.kernel", linear),
    Rule(_LAYER + r"\.attention\.o_proj\.bias", r"blocks.\1.attn.proj.bias"),
    Rule(_LAYER + r"\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    Rule(_LAYER + r"\.mlp\.(fc1|fc2)\.weight", r"blocks.\1.mlp.\2.kernel", linear),
    Rule(_LAYER + r"\.mlp\.(fc1|fc2)\.bias", r"blocks.\1.mlp.\2.bias"),
    Rule(_LAYER + r"\.mlp\.weights_in\.weight", r"blocks.\1.mlp.w12.kernel", linear),
    Rule(_LAYER + r"\.mlp\.weights_in\.bias", r"blocks.\1.mlp.w12.bias"),
    Rule(_LAYER + r"\.mlp\.weights_out\.weight", r"blocks.\1.mlp.w3.kernel", linear),
    Rule(_LAYER + r"\.mlp\.weights_out\.bias", r"blocks.\1.mlp.w3.bias"),
    Rule(_LAYER + r"\.mlp\.gate_proj\.weight", r"blocks.\1.mlp.w12.kernel", linear, (0, 2)),
    Rule(_LAYER + r"\.mlp\.up_proj\.weight", r"blocks.\1.mlp.w12.kernel", linear, (1, 2)),
    Rule(_LAYER + r"\.mlp\.gate_proj\.bias", r"blocks.\1.mlp.w12.bias", part=(0, 2)),
    Rule(_LAYER + r"\.mlp\.up_proj\.bias", r"blocks.\1.mlp.w12.bias", part=(1, 2)),
    Rule(_LAYER + r"\.mlp\.down_proj\.weight", r"blocks.\1.mlp.w3.kernel", linear),
    Rule(_LAYER + r"\.mlp\.down_proj\.bias", r"blocks.\1.mlp.w3.bias"),
    Rule(r"layernorm\.weight", "norm.scale"),
    Rule(r"layernorm\.bias", "norm.bias"),
]
HF_IGNORE = [r"embeddings\.mask_token"]
_HF_PREFIXES = ("dinov2.", "dinov2_with_registers.", "model.")


def _require(state: Mapping[str, np.ndarray], key: str, src: str) -> np.ndarray:
    if key not in state:
        raise ConversionError(f"{src} has no {key!r}; is it a DINOv2 checkpoint?")
    return state[key]


def hub_config(state: Mapping[str, np.ndarray], src: str = "checkpoint") -> Dinov2Config:
    """Architecture of an official hub state dict, read from its tensor shapes."""
    embed_dim = _require(state, "cls_token", src).shape[-1]
    patch = _require(state, "patch_embed.proj.weight", src).shape[-1]
    positions = _require(state, "pos_embed", src).shape[1] - 1
    blocks = {int(m.group(1)) for k in state if (m := re.match(_BLOCK + r"\.", k))}
    if not blocks:
        raise ConversionError(f"{src} has no transformer blocks (keys 'blocks.N....')")
    swiglu = any(".mlp.w12." in k for k in state)
    registers = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    if not swiglu:
        fc1 = next(v for k, v in state.items() if k.endswith(".mlp.fc1.weight"))
        mlp_ratio = fc1.shape[0] / embed_dim
    else:
        mlp_ratio = 4.0
    return Dinov2Config(
        embed_dim=embed_dim,
        depth=max(blocks) + 1,
        num_heads=embed_dim // 64,
        mlp_ratio=mlp_ratio,
        ffn="swiglu" if swiglu else "mlp",
        num_register_tokens=registers,
        patch_size=patch,
        pos_grid=math.isqrt(positions),
        interpolate_offset=0.0 if registers else 0.1,
        interpolate_antialias=bool(registers),
    )


def hf_config(config: Mapping, src: str = "config.json") -> Dinov2Config:
    """Architecture of a Hugging Face Dinov2Config / Dinov2WithRegistersConfig."""
    model_type = config.get("model_type")
    if model_type not in ("dinov2", "dinov2_with_registers"):
        raise ConversionError(f"{src}: model_type is {model_type!r}, not a DINOv2 model")
    if config.get("hidden_act", "gelu") != "gelu" or config.get("layer_norm_eps", 1e-6) != 1e-6:
        raise ConversionError(f"{src}: only GELU and LayerNorm eps 1e-6 (as released) are supported")
    registers = config.get("num_register_tokens", 0) if model_type == "dinov2_with_registers" else 0
    return Dinov2Config(
        embed_dim=config["hidden_size"],
        depth=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        mlp_ratio=config.get("mlp_ratio", 4),
        ffn="swiglu" if config.get("use_swiglu_ffn") else "mlp",
        num_register_tokens=registers,
        patch_size=config["patch_size"],
        pos_grid=config["image_size"] // config["patch_size"],
        interpolate_offset=0.0,
        interpolate_antialias=bool(registers),
    )


def _strip_prefix(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for prefix in _HF_PREFIXES:
        if any(k.startswith(prefix + "embeddings.") for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def convert(src: str, *, overrides: Mapping | None = None, progress: bool = True):
    """(config, params) for the DINOv2 weights at `src` (hub .pth or HF folder/file)."""
    state = read_state_dict(src)
    if "cls_token" in state:
        config, rules, ignore = hub_config(state, src), HUB_RULES, HUB_IGNORE
    else:
        state = _strip_prefix(state)
        if "embeddings.cls_token" not in state:
            raise ConversionError(
                f"{src} is neither an official DINOv2 checkpoint (no 'cls_token') nor a Hugging Face "
                "DINOv2 model (no 'embeddings.cls_token')"
            )
        folder = src if os.path.isdir(src) else os.path.dirname(src)
        config, rules, ignore = hf_config(read_hf_config(folder)), HF_RULES, HF_IGNORE
    if overrides:
        config = Dinov2Config.from_dict({**config.to_dict(), **overrides})
    params = apply_rules(
        state,
        rules,
        checkpoints.param_shapes(Dinov2, config),
        ignore=ignore,
        source_name=src,
        progress=progress,
    )
    return config, params
