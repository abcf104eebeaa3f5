"""The released SEGIC checkpoint (`segic_dinov2_l_80kx12e.pth`: 148 tensors, the trainable head)
-> `segic_jax.models.segic.SegicHead`, and the whole model (head + DINOv2 + CLIP text) into one
directory that `segic_jax.inference.Predictor.from_checkpoint` loads.

Names follow the reference (`neck.{0,1,2,3}`, SAM's `prompt_encoder` and `mask_decoder`,
`inst_type_embed`, `prompt_proj`, `inst_proj`); the tables below are the only translation.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

from segic_jax import checkpoints
from segic_jax.conversion import clip_text as clip_conversion
from segic_jax.conversion import dinov2 as dinov2_conversion
from segic_jax.conversion.core import ConversionError, Rule, apply_rules, conv, identity, linear, read_state_dict
from segic_jax.models import bundle
from segic_jax.models.clip_text import TOKENIZER_FILES
from segic_jax.models.segic import SegicConfig, SegicHead


def conv_transpose(x: np.ndarray) -> np.ndarray:
    """torch ConvTranspose2d weight (in, out, kh, kw) -> (in, kh, kw, out)."""
    return x.transpose(0, 2, 3, 1)


def prefixed(rules: list[Rule], source: str, target: str) -> list[Rule]:
    """The same rules for a sub-module found under `source` and placed under `target`."""
    return [
        Rule(source.replace(".", r"\.") + r.source, target + r.target, r.transform, r.part) for r in rules
    ]


def _linear_rules(pattern: str, target: str) -> list[Rule]:
    return [Rule(pattern + r"\.weight", target + ".kernel", linear), Rule(pattern + r"\.bias", target + ".bias")]


def _norm_rules(pattern: str, target: str) -> list[Rule]:
    return [Rule(pattern + r"\.weight", target + ".scale"), Rule(pattern + r"\.bias", target + ".bias")]


def _embed_rule(pattern: str, target: str) -> Rule:
    return Rule(pattern + r"\.weight", target + ".embedding", identity)


PROMPT_ENCODER_RULES = [
    Rule(r"pe_layer\.positional_encoding_gaussian_matrix", "pe_layer.positional_encoding_gaussian_matrix"),
    _embed_rule(r"point_embeddings\.([0-3])", r"point_embeddings.\1"),
    _embed_rule(r"not_a_point_embed", "not_a_point_embed"),
    _embed_rule(r"no_mask_embed", "no_mask_embed"),
    Rule(r"mask_downscaling\.0\.weight", "mask_downscaling.conv1.kernel", conv),
    Rule(r"mask_downscaling\.0\.bias", "mask_downscaling.conv1.bias"),
    *_norm_rules(r"mask_downscaling\.1", "mask_downscaling.norm1"),
    Rule(r"mask_downscaling\.3\.weight", "mask_downscaling.conv2.kernel", conv),
    Rule(r"mask_downscaling\.3\.bias", "mask_downscaling.conv2.bias"),
    *_norm_rules(r"mask_downscaling\.4", "mask_downscaling.norm2"),
    Rule(r"mask_downscaling\.6\.weight", "mask_downscaling.conv3.kernel", conv),
    Rule(r"mask_downscaling\.6\.bias", "mask_downscaling.conv3.bias"),
]

_ATTN = r"(self_attn|cross_attn_token_to_image|cross_attn_image_to_token|final_attn_token_to_image)"
_TRANSFORMER = [
    *_linear_rules(r"(.*" + _ATTN + r")\.(q_proj|k_proj|v_proj|out_proj)", r"\1.\3"),
    *_linear_rules(r"(layers\.\d+\.mlp)\.(lin1|lin2)", r"\1.\2"),
    *_norm_rules(r"(layers\.\d+\.norm[1-4]|norm_final_attn)", r"\1"),
]
MASK_DECODER_RULES = [
    *prefixed(_TRANSFORMER, "transformer.", "transformer."),
    _embed_rule(r"iou_token", "iou_token"),
    _embed_rule(r"mask_tokens", "mask_tokens"),
    Rule(r"output_upscaling\.0\.weight", "output_upscaling.conv1.kernel", conv_transpose),
    Rule(r"output_upscaling\.0\.bias", "output_upscaling.conv1.bias"),
    *_norm_rules(r"output_upscaling\.1", "output_upscaling.norm"),
    Rule(r"output_upscaling\.3\.weight", "output_upscaling.conv2.kernel", conv_transpose),
    Rule(r"output_upscaling\.3\.bias", "output_upscaling.conv2.bias"),
    *_linear_rules(r"((?:output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.\d+)", r"\1"),
]
HEAD_RULES = [
    Rule(r"neck\.0\.weight", "neck.conv1.kernel", conv),
    *_norm_rules(r"neck\.1", "neck.norm1"),
    Rule(r"neck\.2\.weight", "neck.conv2.kernel", conv),
    *_norm_rules(r"neck\.3", "neck.norm2"),
    *prefixed(PROMPT_ENCODER_RULES, "prompt_encoder.", "prompt_encoder."),
    *prefixed(MASK_DECODER_RULES, "mask_decoder.", "mask_decoder."),
    _embed_rule(r"inst_type_embed", "inst_type_embed"),
    *_linear_rules(r"prompt_proj", "prompt_proj"),
    *_linear_rules(r"inst_proj", "inst_proj"),
]
# Frozen parts a full state dict may carry besides the head; they convert from their own files.
HEAD_IGNORE = [r"encoder\..*", r"pixel_mean", r"pixel_std"]


def config_from_tensors(state: Mapping[str, np.ndarray], src: str) -> SegicConfig:
    """The head's architecture from its tensors (widths, mask-prompt strides)."""
    try:
        inst_proj = state["inst_proj.weight"]
        prompt_proj = state["prompt_proj.weight"]
        s1 = state["prompt_encoder.mask_downscaling.0.weight"].shape[-1]
        s2 = state["prompt_encoder.mask_downscaling.3.weight"].shape[-1]
    except KeyError as e:
        raise ConversionError(f"{src} has no {e.args[0]!r}; is it a SEGIC checkpoint?") from None
    return SegicConfig(
        vision_dim=inst_proj.shape[1], text_dim=prompt_proj.shape[1], dim=inst_proj.shape[0], mask_strides=(s1, s2)
    )


def convert_head(src: str, *, image_size: int = 896, progress: bool = True):
    """(config, params) of the SEGIC head in the checkpoint at `src`."""
    state = read_state_dict(src)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    config = config_from_tensors(state, src)
    config = SegicConfig.from_dict({**config.to_dict(), "image_size": image_size})
    params = apply_rules(
        state, HEAD_RULES, checkpoints.param_shapes(SegicHead, config), ignore=HEAD_IGNORE,
        source_name=src, progress=progress,
    )
    return config, params


class Converted(NamedTuple):
    """The three models of a SEGIC, converted and checked, to write with `save`."""

    head: bundle.Part
    encoder: bundle.Part
    text_model: bundle.Part
    tokenizer_files: dict[str, str]
    inputs: tuple[str, ...]  # the files read, which an --overwrite must never delete


def read_all(segic: str, dinov2: str, clip: str, *, image_size: int = 896, progress: bool = True) -> Converted:
    """Convert the head, the DINOv2 it was trained with and the CLIP text tower, checking that they
    fit together; nothing is written."""
    head_cfg, head = convert_head(segic, image_size=image_size, progress=progress)
    # SEGIC ran the hub DINOv2; keep the hub's resampling even for weights from Hugging Face.
    hub_resampling = {"interpolate_offset": 0.1, "interpolate_antialias": False}
    dino_cfg, dino = dinov2_conversion.convert(dinov2, overrides=hub_resampling, progress=progress)
    clip_cfg, text, tokenizer_files = clip_conversion.convert(clip, progress=progress)
    if not tokenizer_files:
        raise ConversionError(f"{clip} has no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    if dino_cfg.embed_dim != head_cfg.vision_dim or clip_cfg.width != head_cfg.text_dim:
        raise ConversionError(
            f"the SEGIC head expects {head_cfg.vision_dim}-d vision and {head_cfg.text_dim}-d text features; "
            f"{dinov2} gives {dino_cfg.embed_dim}-d and {clip} {clip_cfg.width}-d"
        )
    return Converted(bundle.Part(head_cfg, head, segic), bundle.Part(dino_cfg, dino, dinov2),
                     bundle.Part(clip_cfg, text, clip), tokenizer_files, (segic, dinov2, clip))


def save(converted: Converted, out: str, *, overwrite: bool = False) -> str:
    """Write what `read_all` converted as one converted SEGIC directory (`models.bundle`), whole or not
    at all. Returns its absolute path."""
    return bundle.save(out, converted.head, converted.encoder, converted.text_model,
                       tokenizer_files=converted.tokenizer_files, overwrite=overwrite, inputs=list(converted.inputs))


def convert_all(
    segic: str, dinov2: str, clip: str, out: str, *, image_size: int = 896, overwrite: bool = False,
    progress: bool = True,
) -> str:
    """Convert the head, the DINOv2 it was trained with and the CLIP text tower into one converted
    SEGIC directory (`models.bundle`), written only when all three convert."""
    return save(read_all(segic, dinov2, clip, image_size=image_size, progress=progress), out, overwrite=overwrite)
