"""Small layers shared by the SAM-style prompt encoder, mask decoder and SEGIC head.

Channels-last throughout: images are (B, H, W, C).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class Buffer(nnx.Variable):
    """A fixed array that travels with the checkpoint but is never trained (SAM's random
    positional-encoding matrix)."""


def pytorch_default_init(module: nnx.Module, key: jax.Array) -> nnx.Module:
    """Re-draw every Linear, Conv and Embed parameter of `module` (in place) as PyTorch's default
    initialisers draw them, which is what the original trains its head from (docs/original.md 1):
    Linear and Conv weights and biases ~ U(+-1/sqrt(fan_in)), fan_in = inputs x kernel area (Flax's
    defaults are LeCun-normal weights and zero biases); Embed ~ N(0, 1) (Flax: std 1/sqrt(dim)).
    ConvTranspose2x2 draws PyTorch's init itself; LayerNorms are ones and zeros in both.

    All uniforms come from one draw and all normals from another, cut into the parameters: two
    random programs instead of one per parameter, which XLA compiles in a fraction of the time."""
    uniform, normal = [], []  # (param, bound) in graph order; Embed tables
    for _, node in nnx.iter_graph(module):
        if isinstance(node, (nnx.Linear, nnx.Conv)):
            # kernels: Linear (in, out), Conv (kh, kw, in / groups, out)
            bound = 1.0 / float(np.prod(node.kernel.shape[:-1])) ** 0.5
            uniform += [(node.kernel, bound)] + ([(node.bias, bound)] if node.bias is not None else [])
        elif isinstance(node, nnx.Embed):
            normal.append((node.embedding, 1.0))
    u_key, n_key = jax.random.split(key)
    _fill(uniform, jax.random.uniform(u_key, (sum(p.size for p, _ in uniform),), jnp.float32, -1.0, 1.0))
    _fill(normal, jax.random.normal(n_key, (sum(p.size for p, _ in normal),), jnp.float32))
    return module


def _fill(params: list, flat: jax.Array) -> None:
    """Set each (param, scale) of `params` to its consecutive slice of `flat`, times scale."""
    start = 0
    for param, scale in params:
        param.set_value((flat[start:start + param.size].reshape(param.shape) * scale).astype(param.dtype))
        start += param.size


def layer_norm_2d(channels: int, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """SAM's LayerNorm2d: per pixel over channels, biased variance, eps 1e-6."""
    return nnx.LayerNorm(channels, epsilon=1e-6, dtype=dtype, use_fast_variance=False, rngs=rngs)


def layer_norm(dim: int, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """torch.nn.LayerNorm defaults (eps 1e-5)."""
    return nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, use_fast_variance=False, rngs=rngs)


def gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


class ConvTranspose2x2(nnx.Module):
    """ConvTranspose2d with kernel 2 and stride 2. Its windows do not overlap, so it is one einsum
    and a reshape: out[2i+a, 2j+b, o] = sum_c x[i, j, c] kernel[c, a, b, o] + bias[o].
    Kernel layout (C_in, 2, 2, C_out): torch's (C_in, C_out, 2, 2) transposed (0, 2, 3, 1)."""

    def __init__(self, in_channels: int, out_channels: int, dtype, rngs: nnx.Rngs):
        # torch's default init: U(+-1/sqrt(fan_in)) with fan_in = out * k * k for ConvTranspose
        bound = 1.0 / (out_channels * 4) ** 0.5
        init = lambda shape: jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound)
        self.kernel = nnx.Param(init((in_channels, 2, 2, out_channels)))
        self.bias = nnx.Param(init((out_channels,)))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, _ = x.shape
        k = self.kernel[...].astype(self.dtype)
        y = jnp.einsum("bhwc,cijo->bhiwjo", x.astype(self.dtype), k)
        o = k.shape[-1]
        return y.reshape(b, 2 * h, 2 * w, o) + self.bias[...].astype(self.dtype)


class Mlp(nnx.Module):
    """SAM's MLP head: Linear layers with ReLU between them (`layers.{i}`)."""

    def __init__(self, dims: list[int], dtype, rngs: nnx.Rngs):
        self.layers = nnx.List(
            [nnx.Linear(a, b, dtype=dtype, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x
