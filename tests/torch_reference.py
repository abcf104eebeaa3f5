"""Random-weight PyTorch reference models for the parity tests (torch CPU, no downloads)."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import importlib.util
import math
import os
import pathlib
import shutil

import torch
import torch.nn.functional as F

from segic_jax.models import clip_text


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


def write_clip_vocab(folder: str) -> str:
    """vocab.json and merges.txt of CLIP's tokenizer, derived from the BPE merges file that the
    open-clip-torch package ships (bpe_simple_vocab_16e6.txt.gz): 256 bytes, the same with the
    end-of-word suffix, one token per merge (the first 48894), then the two special tokens."""
    spec = importlib.util.find_spec("open_clip")
    assert spec is not None, "tests need open-clip-torch (pip install --no-deps open-clip-torch)"
    bpe = os.path.join(spec.submodule_search_locations[0], "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    return clip_text.write_vocab(folder, merges)


def sam_modeling():
    """`segment_anything.modeling` without the package's __init__ (which imports torchvision)."""
    import sys
    import types

    if "segment_anything.modeling" not in sys.modules:
        spec = importlib.util.find_spec("segment_anything")
        assert spec is not None, "tests need segment-anything (pip install --no-deps segment-anything)"
        package = types.ModuleType("segment_anything")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules.setdefault("segment_anything", package)
    return importlib.import_module("segment_anything.modeling")


def sam_prompt_encoder(embedding_size: int, input_size: int, strides=(7, 2), seed=0, randomize=True):
    """SAM's PromptEncoder with the dense branch re-strided as SEGIC's CustomPromptEncoder does."""
    modeling = sam_modeling()
    torch.manual_seed(seed)
    pe = modeling.PromptEncoder(
        embed_dim=256, image_embedding_size=(embedding_size, embedding_size),
        input_image_size=(input_size, input_size), mask_in_chans=16,
    )
    s1, s2 = strides
    pe.mask_downscaling = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, kernel_size=s1, stride=s1), modeling.common.LayerNorm2d(4), torch.nn.GELU(),
        torch.nn.Conv2d(4, 16, kernel_size=s2, stride=s2), modeling.common.LayerNorm2d(16), torch.nn.GELU(),
        torch.nn.Conv2d(16, 256, kernel_size=1),
    )
    return randomize_(pe, seed) if randomize else pe


def sam_mask_decoder(seed=0, randomize=True):
    modeling = sam_modeling()
    torch.manual_seed(seed)
    decoder = modeling.MaskDecoder(
        num_multimask_outputs=3,
        transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
    )
    return randomize_(decoder, seed) if randomize else decoder


class TorchSegicHead(torch.nn.Module):
    """SEGIC's trainable head with the reference's attribute names (its state_dict is the released
    checkpoint's layout) and a transcription of its inference decode (docs/original.md 2.4), written
    from the spec with SAM's own modules. randomize=False keeps PyTorch's default initialisation."""

    def __init__(self, vision_dim=1024, text_dim=768, grid=64, image_size=896, strides=(7, 2), seed=0, randomize=True):
        super().__init__()
        modeling = sam_modeling()
        torch.manual_seed(seed)
        self.image_size = image_size
        self.neck = torch.nn.Sequential(
            torch.nn.Conv2d(vision_dim, 256, 1, bias=False), modeling.common.LayerNorm2d(256),
            torch.nn.Conv2d(256, 256, 3, padding=1, bias=False), modeling.common.LayerNorm2d(256),
        )
        self.prompt_encoder = sam_prompt_encoder(grid, image_size, strides, seed, randomize)
        self.mask_decoder = sam_mask_decoder(seed, randomize)
        self.inst_type_embed = torch.nn.Embedding(2, 256)
        self.prompt_proj = torch.nn.Linear(text_dim, 256)
        self.inst_proj = torch.nn.Linear(vision_dim, 256)
        if randomize:
            randomize_(self, seed + 1)

    @torch.no_grad()
    def decode_one(self, target_feat, ref_feats, text, boxes=None, cross=True):
        """target_feat (C, h, w); ref_feats (k, C); text (Ct,) -> logits (k, S, S), sim (k, S, S), points (k, 2).
        Training-time variants: boxes (k, 4) xyxy box prompts; cross=False for the own token only."""
        s, k = self.image_size, ref_feats.shape[0]
        up = F.interpolate(target_feat[None], size=(s // 4, s // 4), mode="bilinear", align_corners=False)[0]
        up = up / up.norm(dim=0, keepdim=True).clamp(min=1e-8)
        vec = ref_feats / ref_feats.norm(dim=1, keepdim=True).clamp(min=1e-8)
        sim = torch.einsum("chw,kc->khw", up, vec)[:, None]
        sim = F.interpolate(sim, size=(s, s), mode="bilinear", align_corners=False)
        idx = sim.flatten(1).argmax(dim=1)
        points = torch.stack([idx % s, idx // s], dim=-1).float()[:, None]  # (k, 1, 2) as (x, y)
        inst = self.inst_proj(ref_feats)[:, None]  # (k, 1, 256)
        if cross:
            tokens = inst.flatten(0, 1)[None].expand(k, -1, -1)
            tokens = tokens + self.inst_type_embed(torch.eye(k, dtype=torch.long))
        else:
            tokens = inst
        texts = torch.cat([self.prompt_proj(text)[None, None].expand(k, 1, -1), tokens], dim=1)
        sparse, dense = self.prompt_encoder(points=(points, torch.ones(k, 1)), boxes=boxes, masks=sim)
        sparse = torch.cat([sparse, texts], dim=1)
        low, _ = self.mask_decoder(
            image_embeddings=self.neck(target_feat[None]), image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
        )
        logits = F.interpolate(low, scale_factor=s / low.shape[-1], mode="bilinear", align_corners=False)
        return logits[:, 0], sim[:, 0], points[:, 0]

    @torch.no_grad()
    def propagate_vos(self, feats, first_masks, text, eps=1e-4, negative_label=0, memory="first_latest"):
        """The per-frame loop of the reference's `forward_vos` (docs/original.md 5.2), transcribed.

        feats (T, C, h, w) frame features; first_masks (n, S, S) binary float; text (Ct,) pooled
        instance prompt. -> logits (T - 1, n, S, S) of frames 1..T-1 at the model size.
        The keywords break one rule each (for tests that must see the difference): `eps` of the
        cosine norms, `negative_label` of the other objects' points, `memory` "all" for every entry.
        """
        s, n = self.image_size, first_masks.shape[0]

        def inst_feat(feat, masks):  # extract_inst_feat on the un-upsampled features
            small = F.interpolate(masks[:, None], feat.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            small = (small > 0.5).float()
            return torch.einsum("chw,nhw->nc", feat, small) / small.sum((-1, -2)).clamp(min=1)[:, None]

        def cross_inst(prompt):  # process_cross_inst_prompt: (n, p, c) -> (n, n * p, c), types (n, n * p)
            k, p = prompt.shape[:2]
            flat = prompt.flatten(0, 1)[None].expand(k, -1, -1)
            types = torch.zeros(k, k, p, dtype=torch.long)
            types[range(k), range(k)] = 1
            return flat, types.flatten(1, 2)

        memory_list = [inst_feat(feats[0], first_masks)]
        text_tok = self.prompt_proj(text)[None, None].expand(n, 1, -1)
        out = []
        for t in range(1, len(feats)):
            if memory == "first_latest" and len(memory_list) > 2:
                refs = [memory_list[i] for i in torch.linspace(0, len(memory_list) - 1, 2).int().tolist()]
            else:
                refs = memory_list
            refs = torch.stack(refs, dim=1)  # (n, r, C)
            up = F.interpolate(feats[t][None], size=(s // 4, s // 4), mode="bilinear", align_corners=False)
            x = up / up.norm(dim=1, keepdim=True).clamp(min=eps)
            y = refs / refs.norm(dim=2, keepdim=True).clamp(min=eps)
            sim = torch.einsum("bchw,bxc->bxhw", x, y)  # batch 1 broadcast against n
            sim = F.interpolate(sim, size=(s, s), mode="bilinear", align_corners=False)
            mask_in = sim[:, :1]
            _, idx = mask_in.flatten(-2).topk(1, dim=-1)  # get_max, n_point = 1: (n, 1, 1)
            points = torch.cat([idx % s, idx // s], dim=-1).float()  # (n, 1, 2) as (x, y)
            points, labels = cross_inst(points)
            labels = torch.where(labels == 1, labels, torch.full_like(labels, negative_label))
            tokens, types = cross_inst(self.inst_proj(refs))
            texts = torch.cat([text_tok, tokens + self.inst_type_embed(types)], dim=1)
            sparse, dense = self.prompt_encoder(points=(points, labels), boxes=None, masks=mask_in)
            sparse = torch.cat([sparse, texts], dim=1)
            low = torch.cat([
                self.mask_decoder(
                    image_embeddings=self.neck(feats[t][None]), image_pe=self.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse[i : i + 1], dense_prompt_embeddings=dense[i : i + 1],
                    multimask_output=False,
                )[0]
                for i in range(n)
            ])
            logits = F.interpolate(low, scale_factor=s / low.shape[-1], mode="bilinear", align_corners=False)[:, 0]
            out.append(logits)
            memory_list.append(inst_feat(feats[t], (logits > 0).float()))
        return torch.stack(out)


def write_released(root: str, image_size: int = 112) -> dict[str, str]:
    """Tiny random SEGIC in the released formats, under their released names: the head .pth, the hub
    DINOv2 .pth (a hub state dict) and a Hugging Face CLIP folder with its tokenizer files."""
    os.makedirs(root, exist_ok=True)
    hf_dinov2(seed=5).save_pretrained(os.path.join(root, "dino_hf"))
    dinov2 = os.path.join(root, "dinov2_vitl14_pretrain.pth")
    torch.save(hf_folder_to_hub_state_dict(os.path.join(root, "dino_hf")), dinov2)
    clip = os.path.join(root, "clip-vit-large-patch14")
    hf_clip_text(vocab=49408, width=32, depth=1, heads=2, mlp=64, seed=6).save_pretrained(clip)
    write_clip_vocab(clip)
    head = TorchSegicHead(vision_dim=128, text_dim=32, grid=image_size // 14, image_size=image_size, seed=7)
    segic = os.path.join(root, "segic_dinov2_l_80kx12e.pth")
    torch.save(head.state_dict(), segic)
    return dict(SEGIC_HEAD=segic, DINOV2=dinov2, CLIP_FOLDER=clip)


def stand_in_hub(cache, repo: str, files: dict[str, str], commit: str = "0123456789abcdef0123456789abcdef01234567"):
    """`files` (name -> local path) as huggingface_hub caches a repository: blobs, refs/main, and a
    snapshot of links to the blobs."""
    base = os.path.join(cache, "models--" + repo.replace("/", "--"))
    snapshot = os.path.join(base, "snapshots", commit)
    os.makedirs(os.path.join(base, "refs"), exist_ok=True)
    os.makedirs(os.path.join(base, "blobs"), exist_ok=True)
    os.makedirs(snapshot, exist_ok=True)
    with open(os.path.join(base, "refs", "main"), "w") as f:
        f.write(commit)
    for name, path in files.items():
        with open(path, "rb") as f:
            blob = os.path.join(base, "blobs", hashlib.sha256(f.read()).hexdigest())
        shutil.copyfile(path, blob)
        os.symlink(os.path.relpath(blob, snapshot), os.path.join(snapshot, name))


def stand_in_release(root: str, released: dict[str, str]) -> dict[str, str]:
    """The environment under which `segic_jax.pretrained` finds `released` (write_released) where it
    looks for the real release: a Hugging Face cache in offline mode, and a file:// DINOv2 hub mirror."""
    from segic_jax import pretrained

    rel = pretrained.RELEASES[pretrained.DEFAULT]
    hub, mirror = os.path.join(root, "hf"), os.path.join(root, "mirror")
    stand_in_hub(hub, rel.head_repo, {rel.head_file: released["SEGIC_HEAD"]})
    clip = released["CLIP_FOLDER"]
    stand_in_hub(hub, rel.clip_repo, {f: os.path.join(clip, f) for f in os.listdir(clip)})
    os.makedirs(os.path.dirname(os.path.join(mirror, rel.dinov2_file)), exist_ok=True)
    shutil.copyfile(released["DINOV2"], os.path.join(mirror, rel.dinov2_file))
    return {"HF_HUB_CACHE": hub, "HF_HUB_OFFLINE": "1", "SEGIC_JAX_DINOV2_HUB": pathlib.Path(mirror).as_uri()}
