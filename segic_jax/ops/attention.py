"""Multi-head attention on projected tokens, through `jax.nn.dot_product_attention`.

Going through the library call lets XLA pick a fused kernel (cuDNN flash attention on GPUs for
bf16/fp16 inputs) without the models knowing which backend they run on.
"""

from __future__ import annotations

import jax


def multi_head_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, num_heads: int, is_causal: bool = False
) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v per head. q (B, Nq, C), k/v (B, Nk, C) -> (B, Nq, C)."""
    b, nq, c = q.shape
    if c % num_heads:
        raise ValueError(f"width {c} is not divisible by {num_heads} heads")
    split = lambda t: t.reshape(t.shape[0], t.shape[1], num_heads, t.shape[2] // num_heads)
    out = jax.nn.dot_product_attention(split(q), split(k), split(v), is_causal=is_causal)
    return out.reshape(b, nq, v.shape[-1])
