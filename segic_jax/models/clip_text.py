"""CLIP text transformer and tokenizer (the frozen "meta prompt" encoder of SEGIC).

Parameter names follow Hugging Face's `CLIPTextModel` (`layers.{i}.self_attn.q_proj`,
`layer_norm1`, `final_layer_norm` ...). The pooled output is the final-LayerNorm hidden state at
the first end-of-text token, with no text projection, which is what SEGIC feeds to `prompt_proj`.

The tokenizer reads a Hugging Face CLIP folder (`tokenizer.json`, or `vocab.json` + `merges.txt`)
with the `tokenizers` library and always returns exactly `context_length` ids: truncated to fit,
then padded with end-of-text.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from segic_jax import checkpoints
from segic_jax.models.config import ModelConfig
from segic_jax.ops.attention import multi_head_attention

# the files of a Hugging Face CLIP tokenizer folder that `ClipTokenizer.from_folder` reads
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


@dataclasses.dataclass(frozen=True)
class ClipTextConfig(ModelConfig):
    """Defaults: openai/clip-vit-large-patch14's text tower, the one SEGIC uses."""

    NAME = "CLIP text"

    vocab_size: int = 49408
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    context_length: int = 77
    eos_token_id: int = 49407
    layer_norm_eps: float = 1e-5



class ClipTextOutput(NamedTuple):
    hidden_states: jax.Array  # (B, L, width), after the final LayerNorm
    pooled: jax.Array  # (B, width), at the first end-of-text token


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


def _layer_norm(cfg: ClipTextConfig, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        cfg.width, epsilon=cfg.layer_norm_eps, dtype=dtype, use_fast_variance=False, rngs=rngs
    )


class SelfAttention(nnx.Module):
    def __init__(self, cfg: ClipTextConfig, dtype, rngs: nnx.Rngs):
        self.num_heads = cfg.num_heads
        proj = lambda: nnx.Linear(cfg.width, cfg.width, dtype=dtype, rngs=rngs)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = proj(), proj(), proj(), proj()

    def __call__(self, x: jax.Array) -> jax.Array:
        out = multi_head_attention(
            self.q_proj(x), self.k_proj(x), self.v_proj(x), self.num_heads, is_causal=True
        )
        return self.out_proj(out)


class Mlp(nnx.Module):
    def __init__(self, cfg: ClipTextConfig, dtype, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(cfg.width, cfg.mlp_dim, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(cfg.mlp_dim, cfg.width, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(quick_gelu(self.fc1(x)))


class EncoderLayer(nnx.Module):
    def __init__(self, cfg: ClipTextConfig, dtype, rngs: nnx.Rngs):
        self.layer_norm1 = _layer_norm(cfg, dtype, rngs)
        self.self_attn = SelfAttention(cfg, dtype, rngs)
        self.layer_norm2 = _layer_norm(cfg, dtype, rngs)
        self.mlp = Mlp(cfg, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipTextModel(nnx.Module):
    """token ids (B, L) int -> `ClipTextOutput`. Padding needs no mask: attention is causal and
    the pooled token is the first end-of-text, which sees no padding after it."""

    KIND = "clip_text"  # in checkpoint descriptions
    Config = ClipTextConfig

    def __init__(self, cfg: ClipTextConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        self.token_embedding = nnx.Embed(cfg.vocab_size, cfg.width, rngs=rngs)
        self.position_embedding = nnx.Embed(cfg.context_length, cfg.width, rngs=rngs)
        self.layers = nnx.List([EncoderLayer(cfg, dtype, rngs) for _ in range(cfg.depth)])
        self.final_layer_norm = _layer_norm(cfg, jnp.float32, rngs)

    def __call__(self, input_ids: jax.Array) -> ClipTextOutput:
        if input_ids.ndim != 2 or input_ids.shape[1] > self.cfg.context_length:
            raise ValueError(
                f"CLIP text expects token ids (B, L) with L <= {self.cfg.context_length}, "
                f"got shape {input_ids.shape}"
            )
        positions = jnp.arange(input_ids.shape[1])
        x = self.token_embedding(input_ids) + self.position_embedding(positions)[None]
        x = x.astype(self.dtype)
        for layer in self.layers:
            x = layer(x)
        x = self.final_layer_norm(x.astype(jnp.float32))
        first_eos = jnp.argmax(input_ids == self.cfg.eos_token_id, axis=1)
        pooled = jnp.take_along_axis(x, first_eos[:, None, None], axis=1)[:, 0]
        return ClipTextOutput(hidden_states=x, pooled=pooled)


class ClipTokenizer:
    """CLIP's byte-level BPE, reading a Hugging Face tokenizer folder."""

    def __init__(self, tokenizer, context_length: int = 77):
        self._tok = tokenizer
        self.context_length = context_length
        self.eos_token_id = tokenizer.token_to_id(EOS_TOKEN)
        if self.eos_token_id is None:
            raise ValueError(f"the tokenizer has no {EOS_TOKEN} token; is it a CLIP tokenizer?")
        tokenizer.enable_truncation(max_length=context_length)
        tokenizer.enable_padding(length=context_length, pad_id=self.eos_token_id, pad_token=EOS_TOKEN)

    @classmethod
    def bytes_only(cls, context_length: int = 77) -> "ClipTokenizer":
        """CLIP's tokenizer with no merges: one token per byte (ids 0-511 as in CLIP's vocabulary,
        specials at 512 and 513). For randomly initialised text encoders, which need no download."""
        return cls(_bpe_tokenizer(byte_vocab(), []), context_length)

    @classmethod
    def from_folder(cls, folder: str, context_length: int = 77) -> "ClipTokenizer":
        from tokenizers import Tokenizer

        tokenizer_json = os.path.join(folder, "tokenizer.json")
        if os.path.isfile(tokenizer_json):
            return cls(Tokenizer.from_file(tokenizer_json), context_length)
        vocab_path, merges_path = (os.path.join(folder, n) for n in ("vocab.json", "merges.txt"))
        missing = [p for p in (vocab_path, merges_path) if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(
                f"{folder} is not a CLIP tokenizer folder: it has no tokenizer.json and lacks "
                f"{', '.join(os.path.basename(p) for p in missing)}"
            )
        with open(vocab_path, encoding="utf-8") as f:
            vocab = json.load(f)
        with open(merges_path, encoding="utf-8") as f:
            merges = [
                tuple(line.split())
                for line in f.read().split("\n")
                if line and not line.startswith("#version")
            ]
        return cls(_bpe_tokenizer(vocab, merges), context_length)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids (N, context_length) int32: start, tokens, end, then end-of-text padding."""
        if isinstance(texts, str):
            texts = [texts]
        return np.array([e.ids for e in self._tok.encode_batch(list(texts))], dtype=np.int32)


def tokenizer_files(folder: str) -> dict[str, str]:
    """The tokenizer files (TOKENIZER_FILES) that `folder` holds, name -> path."""
    return {n: os.path.join(folder, n) for n in TOKENIZER_FILES if os.path.isfile(os.path.join(folder, n))}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table, in its canonical order: the printable bytes
    first, then the others mapped past 255 (the order sets the first 512 token ids)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def byte_vocab(merges: Sequence[tuple[str, str]] = ()) -> dict[str, int]:
    """CLIP's vocabulary layout: 256 bytes, the same with the end-of-word suffix, one token per
    merge, then the start and end tokens."""
    base = list(bytes_to_unicode().values())
    tokens = base + [t + "</w>" for t in base] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    return {t: i for i, t in enumerate(tokens)}


def write_vocab(folder: str, merges: Sequence[tuple[str, str]] = ()) -> str:
    """vocab.json and merges.txt in a Hugging Face CLIP folder (readable by `from_folder`)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(byte_vocab(merges), f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(" ".join(m) + "\n" for m in merges))
    return folder


def _bpe_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]):
    """CLIP's text pipeline in `tokenizers` terms: NFC, collapse whitespace, lowercase, split into
    words, letters runs and single digits, byte-level BPE with an end-of-word suffix, and
    start/end tokens around the result."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    for special in (BOS_TOKEN, EOS_TOKEN):
        if special not in vocab:
            raise ValueError(f"vocab.json lacks the special token {special}")
    tok = Tokenizer(
        BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", unk_token=EOS_TOKEN, fuse_unk=False)
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    words = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(words), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([BOS_TOKEN, EOS_TOKEN])
    tok.post_processor = processors.RobertaProcessing(
        (EOS_TOKEN, vocab[EOS_TOKEN]), (BOS_TOKEN, vocab[BOS_TOKEN]), trim_offsets=False,
        add_prefix_space=False,
    )
    return tok


def load(path: str, *, dtype=jnp.float32) -> ClipTextModel:
    """A CLIP text model from a checkpoint directory written by `python -m segic_jax.convert clip_text`."""
    return checkpoints.load_model(path, ClipTextModel, dtype=dtype)
