"""Multi-head attention on projected tokens: the fastest kernel the device has.

- NVIDIA GPUs (compute capability 8.0 and up), bf16/fp16: cuDNN's fused flash attention through
  `jax.nn.dot_product_attention`. JAX's default implementation materialises the (heads, N, N)
  score matrix, which at DINOv2-L/896 (4097 tokens) made the whole forward pass 3.4x slower than
  PyTorch's SDPA on an H200.
- TPUs, bf16/fp16, at least `SPLASH_MIN_TOKENS` queries and keys (DINOv2 at high resolution):
  the Pallas splash-attention kernel, which also never writes the scores to memory (at 896 px they
  are 4097^2 x 16 heads x 2 bytes = 537 MB per image). Tokens are padded to whole 128-wide blocks
  and the padding is kept out of the softmax with segment ids.
- CPUs, any dtype, at least `CHUNK_MIN_TOKENS` queries and keys: `chunked_attention`, pure JAX,
  one block of queries at a time with heads first, rematerialised in the backward pass: it never
  holds the (heads, N, N) scores (XLA's default writes 4097^2 x 16 heads x 4 bytes = 1.07 GB per
  image and block at 896 px) and runs 1.2x to 2.6x faster than XLA's attention on the CPU.
- Everything else (float32 on GPUs and TPUs, short sequences such as the decoder's tokens and
  CLIP's 77): XLA. Float32 on a GPU has no fused kernel; whether the chunked path serves it better is
  measured by benchmarks/gpu_checks.sh (`attention_f32`), not guessed.

`force_implementation` pins one path, e.g. to run the TPU kernel on a CPU in Pallas' interpret
mode (how the tests check it against XLA).
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "cudnn", "splash", "chunked")
SPLASH_MIN_TOKENS = 1024
SPLASH_LANES = 128  # the kernel's block sizes are multiples of the TPU's 128 lanes
# `chunked_attention` on CPUs from this many queries and keys (DINOv2 at 224 px and up: 257 tokens):
# 1.2x to 2.6x XLA's attention there, at a tenth of its memory at 896 px (benchmarks/RESULTS.md)
CHUNK_MIN_TOKENS = 256
CHUNK_QUERIES = 128  # the most queries per chunk: the best or near it at every size measured

_forced: list[str] = []


@contextlib.contextmanager
def force_implementation(name: str):
    """Within the block, every attention call traced uses `name` (see IMPLEMENTATIONS). The choice is
    made while tracing: a function jitted and traced before keeps the kernel it was traced with."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, got {name!r}")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


@functools.cache
def _platform() -> str:
    return jax.devices()[0].platform


@functools.cache
def _gpu_supports_cudnn_attention() -> bool:
    if _platform() != "gpu":
        return False
    return float(getattr(jax.devices()[0], "compute_capability", "0")) >= 8.0


def attention_implementation(dtype, head_dim: int, num_queries: int = 0, num_keys: int = 0) -> str:
    """'cudnn', 'splash' or 'xla' for attention of this dtype and size on the default device."""
    if _forced:
        return _forced[-1]
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if half and head_dim % 8 == 0 and head_dim <= 128 and _gpu_supports_cudnn_attention():
        return "cudnn"
    if half and min(num_queries, num_keys) >= SPLASH_MIN_TOKENS and _platform() == "tpu":
        return "splash"
    if _platform() == "cpu" and min(num_queries, num_keys) >= CHUNK_MIN_TOKENS:
        return "chunked"
    return "xla"


def multi_head_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    num_heads: int,
    is_causal: bool = False,
    key_lengths: jax.Array | None = None,
) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v per head. q (B, Nq, C), k/v (B, Nk, C) -> (B, Nq, C).

    `key_lengths` (B,) int: only the first key_lengths[b] keys of row b are attended to (the rest
    is padding).
    """
    b, nq, c = q.shape
    if c % num_heads:
        raise ValueError(f"width {c} is not divisible by {num_heads} heads")
    split = lambda t: t.reshape(t.shape[0], t.shape[1], num_heads, t.shape[2] // num_heads)
    impl = attention_implementation(q.dtype, c // num_heads, nq, k.shape[1])
    if impl == "splash":
        out = _splash_attention(split(q), split(k), split(v), is_causal, key_lengths)
    elif impl == "chunked":
        out = chunked_attention(split(q), split(k), split(v), is_causal, key_lengths)
    else:
        out = jax.nn.dot_product_attention(
            split(q), split(k), split(v), is_causal=is_causal, implementation=impl,
            key_value_seq_lengths=None if key_lengths is None else key_lengths.astype(jnp.int32),
        )
    return out.reshape(b, nq, v.shape[-1])


@functools.lru_cache(maxsize=32)
def _splash_kernel(heads: int, nq_pad: int, nk_pad: int, is_causal: bool):
    """The splash kernel for these padded shapes, built once: building it processes the mask on the
    host, and a DINOv2 trace asks for the same kernel in every block. Off a TPU it runs in
    interpret mode (slow, for tests)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    block_q, block_kv = (next(s for s in (512, 256, 128) if n % s == 0) for n in (nq_pad, nk_pad))
    shape = (nq_pad, nk_pad)
    mask = splash.MultiHeadMask([splash.CausalMask(shape) if is_causal else splash.FullMask(shape)] * heads)
    sizes = splash.BlockSizes(
        block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
        block_q_dkv=block_q, block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv,
        block_q_dq=block_q, block_kv_dq=block_kv,
    )
    with jax.ensure_compile_time_eval():  # concrete mask arrays, not tracers of the first caller's trace
        return splash.make_splash_mha_single_device(mask, block_sizes=sizes, interpret=_platform() != "tpu")


def _splash_attention(q, k, v, is_causal: bool, key_lengths: jax.Array | None) -> jax.Array:
    """Pallas splash attention; q (B, Nq, H, D), k/v (B, Nk, H, D) -> (B, Nq, H, D)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

    b, nq, heads, d = q.shape
    nk = k.shape[1]
    nq_pad, nk_pad = (-(-n // SPLASH_LANES) * SPLASH_LANES for n in (nq, nk))
    kernel = _splash_kernel(heads, nq_pad, nk_pad, is_causal)

    lengths = jnp.full((b,), nk, jnp.int32) if key_lengths is None else key_lengths.astype(jnp.int32)
    # Keys past a row's length get segment 1, every query segment 0: padding is never attended to.
    kv_segments = (jnp.arange(nk_pad)[None, :] >= lengths[:, None]).astype(jnp.int32)
    q_segments = jnp.zeros((nq_pad,), jnp.int32)

    def heads_first(t, n_pad):  # (B, N, H, D) -> (B, H, N_pad, D)
        return jnp.pad(t, ((0, 0), (0, n_pad - t.shape[1]), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

    def one(q1, k1, v1, kv1):
        return kernel(q1, k1, v1, segment_ids=SegmentIds(q=q_segments, kv=kv1))

    scale = jnp.asarray(d**-0.5, q.dtype)  # the kernel does not scale the logits itself
    out = jax.vmap(one)(heads_first(q * scale, nq_pad), heads_first(k, nk_pad), heads_first(v, nk_pad), kv_segments)
    return out.transpose(0, 2, 1, 3)[:, :nq]


def chunked_attention(q, k, v, is_causal: bool = False, key_lengths: jax.Array | None = None,
                      chunk: int = 0) -> jax.Array:
    """Attention that never holds more than one chunk of scores: q (B, Nq, H, D), k/v (B, Nk, H, D)
    -> (B, Nq, H, D), the arithmetic of XLA's `jax.nn.dot_product_attention` (float32 logits and
    softmax, probabilities in the values' dtype) one block of `chunk` queries at a time.

    Heads go first once (so each product is a plain batched matmul), the queries are padded to whole
    chunks (the padding rows are dropped), the chunks run one after the other (`lax.map`) and each is
    rematerialised in the backward pass: neither pass keeps the (B, H, Nq, Nk) scores, the largest
    live array is one chunk's (B, H, chunk, Nk). `chunk` is the most queries per chunk (0:
    CHUNK_QUERIES); the chunks are made even (4097 queries in chunks of at most 256: 17 of 242)."""
    b, nq, heads, d = q.shape
    nk = k.shape[1]
    n_chunks = -(-nq // (chunk or CHUNK_QUERIES))
    chunk = -(-nq // n_chunks)  # as many chunks as `chunk` asks for, as even as can be: little padding
    q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))  # (B, H, N, D)
    q = jnp.pad(q, ((0, 0), (0, 0), (0, n_chunks * chunk - nq), (0, 0)))
    chunks = q.reshape(b, heads, n_chunks, chunk, d).transpose(2, 0, 1, 3, 4)  # (n, B, H, chunk, D)
    keys = jnp.arange(nk)
    visible = None if key_lengths is None else (keys[None] < key_lengths.astype(jnp.int32)[:, None])[:, None, None]

    @jax.checkpoint
    def one(q_chunk, start):
        logits = jnp.einsum("bhqd,bhkd->bhqk", q_chunk, k, preferred_element_type=jnp.float32) * d**-0.5
        mask = visible
        if is_causal:
            causal = keys[None, :] <= (start + jnp.arange(chunk))[:, None]  # (chunk, Nk)
            mask = causal if mask is None else mask & causal
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        return jnp.einsum("bhqk,bhkd->bhqd", probs, v)

    out = jax.lax.map(lambda xs: one(*xs), (chunks, jnp.arange(n_chunks) * chunk))  # (n, B, H, chunk, D)
    return out.transpose(1, 0, 3, 2, 4).reshape(b, n_chunks * chunk, heads, d)[:, :nq]
