"""Random-weight PyTorch reference models for the parity tests (torch CPU, no downloads)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import os

import torch
import torch.nn.functional as F


def randomize_(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Perturb every parameter so that no weight keeps a symmetric init (ones, zeros, 1.0 gammas)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return module.eval()


def hf_dinov2(hidden=128, depth=2, heads=2, image_size=70, swiglu=False, registers=0, seed=0):
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    common = dict(
        hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=heads,
        image_size=image_size, patch_size=14, layerscale_value=0.5,
    )
    torch.manual_seed(seed)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **common))
    else:
        model = Dinov2Model(Dinov2Config(use_swiglu_ffn=swiglu, **common))
    return randomize_(model, seed)


def hub_interpolation(model, offset: float, antialias: bool):
    """Make an HF DINOv2 resample its positional embedding as the official hub code does:
    scale factors (n + offset) / M when offset > 0, else the target size; the trained grid as is."""
    emb = model.embeddings

    def interpolate(embeddings, height, width):
        pos = emb.position_embeddings
        n = pos.shape[1] - 1
        m = int(math.sqrt(n))
        h0, w0 = height // 14, width // 14
        if (h0, w0) == (m, m):
            return pos
        grid = pos[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
        if offset:
            kw = dict(scale_factor=((h0 + offset) / m, (w0 + offset) / m))
        else:
            kw = dict(size=(h0, w0))
        grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **kw)
        assert grid.shape[-2:] == (h0, w0)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)
        return torch.cat([pos[:, :1], grid], dim=1)

    emb.interpolate_pos_encoding = interpolate
    return model


def hf_folder_to_hub_state_dict(folder: str) -> dict[str, torch.Tensor]:
    """The weights of an HF DINOv2 folder (as `save_pretrained` writes it) under the official hub
    key names. Written here by hand, independently of the converter's tables, so that the
    hub-layout tests check those tables."""
    from safetensors.torch import load_file

    sd = load_file(os.path.join(folder, "model.safetensors"))
    out = {
        "cls_token": sd.pop("embeddings.cls_token"),
        "pos_embed": sd.pop("embeddings.position_embeddings"),
        "mask_token": sd.pop("embeddings.mask_token").reshape(1, -1),
        "patch_embed.proj.weight": sd.pop("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": sd.pop("embeddings.patch_embeddings.projection.bias"),
        "norm.weight": sd.pop("layernorm.weight"),
        "norm.bias": sd.pop("layernorm.bias"),
    }
    if "embeddings.register_tokens" in sd:
        out["register_tokens"] = sd.pop("embeddings.register_tokens")
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layer."))
    for i in range(depth):
        p, q = f"encoder.layer.{i}.", f"blocks.{i}."
        for t in ("weight", "bias"):
            out[q + f"norm1.{t}"] = sd.pop(p + f"norm1.{t}")
            out[q + f"norm2.{t}"] = sd.pop(p + f"norm2.{t}")
            out[q + f"attn.qkv.{t}"] = torch.cat(
                [sd.pop(p + f"attention.attention.{n}.{t}") for n in ("query", "key", "value")]
            )
            out[q + f"attn.proj.{t}"] = sd.pop(p + f"attention.output.dense.{t}")
            if p + f"mlp.fc1.{t}" in sd:
                out[q + f"mlp.fc1.{t}"] = sd.pop(p + f"mlp.fc1.{t}")
                out[q + f"mlp.fc2.{t}"] = sd.pop(p + f"mlp.fc2.{t}")
            else:
                out[q + f"mlp.w12.{t}"] = sd.pop(p + f"mlp.weights_in.{t}")
                out[q + f"mlp.w3.{t}"] = sd.pop(p + f"mlp.weights_out.{t}")
        out[q + "ls1.gamma"] = sd.pop(p + "layer_scale1.lambda1")
        out[q + "ls2.gamma"] = sd.pop(p + "layer_scale2.lambda1")
    assert not sd, f"unmapped HF keys: {sorted(sd)}"
    return out


def hf_clip_text(vocab=1000, width=64, depth=2, heads=4, mlp=128, context=77, seed=0, full_model=False):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

    text = dict(
        vocab_size=vocab, hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
        intermediate_size=mlp, max_position_embeddings=context, eos_token_id=vocab - 1,
        bos_token_id=vocab - 2, pad_token_id=vocab - 1,
    )
    torch.manual_seed(seed)
    if full_model:
        vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                      image_size=28, patch_size=14)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    else:
        model = CLIPTextModel(CLIPTextConfig(**text))
    return randomize_(model, seed)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table, in its canonical order: the printable bytes
    first, then the others mapped past 255 (the order sets the first 512 token ids)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def write_clip_vocab(folder: str) -> str:
    """vocab.json and merges.txt of CLIP's tokenizer, derived from the BPE merges file that the
    open-clip-torch package ships (bpe_simple_vocab_16e6.txt.gz): 256 bytes, the same with the
    end-of-word suffix, one token per merge (the first 48894), then the two special tokens."""
    spec = importlib.util.find_spec("open_clip")
    assert spec is not None, "tests need open-clip-torch (pip install --no-deps open-clip-torch)"
    bpe = os.path.join(spec.submodule_search_locations[0], "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    base = list(_bytes_to_unicode().values())
    tokens = base + [t + "</w>" for t in base] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return folder
