"""CLIP text-encoder weights (Hugging Face `openai/clip-vit-*` folder) -> `ClipTextModel`.

Accepts a full `CLIPModel` folder (the vision tower and projections are skipped) or a
`CLIPTextModel` folder. Shapes come from the tensors; the head count, activation and LayerNorm eps
from config.json. The tokenizer files found in the folder are copied into the converted
checkpoint so that the text encoder and its tokenizer travel together.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

import numpy as np

from segic_jax import checkpoints
from segic_jax.conversion.core import ConversionError, Rule, apply_rules, linear, read_hf_config, read_state_dict
from segic_jax.models.clip_text import ClipTextConfig, ClipTextModel, ClipTokenizer, tokenizer_files

_LAYER = r"text_model\.encoder\.layers\.(\d+)"
RULES = [
    Rule(r"text_model\.embeddings\.token_embedding\.weight", "token_embedding.embedding"),
    Rule(r"text_model\.embeddings\.position_embedding\.weight", "position_embedding.embedding"),
    Rule(_LAYER + r"\.self_attn\.(q|k|v|out)_proj\.weight", r"layers.\1.self_attn.\2_proj.kernel", linear),
    Rule(_LAYER + r"\.self_attn\.(q|k|v|out)_proj\.bias", r"layers.\1.self_attn.\2_proj.bias"),
    Rule(_LAYER + r"\.(layer_norm[12])\.weight", r"layers.\1.\2.scale"),
    Rule(_LAYER + r"\.(layer_norm[12])\.bias", r"layers.\1.\2.bias"),
    Rule(_LAYER + r"\.mlp\.(fc[12])\.weight", r"layers.\1.mlp.\2.kernel", linear),
    Rule(_LAYER + r"\.mlp\.(fc[12])\.bias", r"layers.\1.mlp.\2.bias"),
    Rule(r"text_model\.final_layer_norm\.weight", "final_layer_norm.scale"),
    Rule(r"text_model\.final_layer_norm\.bias", "final_layer_norm.bias"),
]
# SEGIC uses the pooled hidden state without the text projection; the rest is the image tower.
IGNORE = [
    r"text_model\.embeddings\.position_ids",
    r"vision_model\..*",
    r"(text|visual)_projection\.weight",
    r"logit_scale",
]


def text_config(hf: Mapping, state: Mapping[str, np.ndarray], src: str, eos_token_id: int | None) -> ClipTextConfig:
    cfg = hf.get("text_config") or hf
    if cfg.get("hidden_act", "quick_gelu") != "quick_gelu":
        raise ConversionError(f"{src}: hidden_act {cfg['hidden_act']!r} is not CLIP's quick_gelu")
    try:
        tokens = state["text_model.embeddings.token_embedding.weight"]
        positions = state["text_model.embeddings.position_embedding.weight"]
        fc1 = state["text_model.encoder.layers.0.mlp.fc1.weight"]
    except KeyError as e:
        raise ConversionError(f"{src} has no {e.args[0]!r}; is it a CLIP model?") from None
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(_LAYER + r"\.", k)))
    if eos_token_id is None:
        # Configs written before transformers 4.31 say 2 and pool at argmax(ids), i.e. at the
        # largest id, which in CLIP's vocabulary is the end-of-text token, the last one.
        eos_token_id = cfg.get("eos_token_id", 2)
        if eos_token_id == 2:
            eos_token_id = tokens.shape[0] - 1
    return ClipTextConfig(
        vocab_size=tokens.shape[0],
        width=tokens.shape[1],
        depth=depth,
        num_heads=cfg.get("num_attention_heads", 8),
        mlp_dim=fc1.shape[0],
        context_length=positions.shape[0],
        eos_token_id=eos_token_id,
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-5),
    )


def convert(src: str, *, progress: bool = True):
    """(config, params, tokenizer files) for the Hugging Face CLIP folder `src`."""
    if not os.path.isdir(src):
        raise ConversionError(f"{src} is not a folder: CLIP text weights are read from a Hugging Face model folder")
    state = read_state_dict(src)
    if not any(k.startswith("text_model.") for k in state):
        # transformers >= 5 saves a bare CLIPTextModel without the `text_model.` prefix
        state = {f"text_model.{k}": v for k, v in state.items()}
    tokenizer = tokenizer_files(src)
    eos = ClipTokenizer.from_folder(src).eos_token_id if tokenizer else None
    config = text_config(read_hf_config(src), state, src, eos)
    params = apply_rules(
        state, RULES, checkpoints.param_shapes(ClipTextModel, config), ignore=IGNORE, source_name=src, progress=progress
    )
    return config, params, tokenizer
