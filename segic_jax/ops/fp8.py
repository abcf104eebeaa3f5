"""FP8 (e4m3) matrix products with per-tensor scaling, for the frozen encoder on Hopper-class GPUs.

Each operand is scaled so that its largest magnitude maps to e4m3's largest finite value (448),
rounded to float8_e4m3fn, and dequantised (`convert(q) * scale`) right before the product. That
quantise-dequantise-dot pattern is what XLA's GPU compiler rewrites into a single FP8 cuBLASLt
matmul on sm_89/sm_90 and later; elsewhere (CPU, TPU, older GPUs) it runs as written, with exactly
the FP8 rounding, which is how its effect on features and masks is measured without a Hopper.

The scales are computed from the tensors themselves at every call ("current scaling"): no
calibration and no state, at the cost of one max-reduction per operand.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

E4M3 = jnp.float8_e4m3fn
E4M3_MAX = float(jnp.finfo(E4M3).max)  # 448


def quantize_dequantize(x: jax.Array) -> jax.Array:
    """x rounded to e4m3 with a per-tensor scale, returned in x's dtype (as `convert(q) * scale`)."""
    x32 = x.astype(jnp.float32)
    amax = jnp.max(jnp.abs(x32))
    scale = jnp.where(amax > 0, amax / E4M3_MAX, 1.0)  # an all-zero tensor stays zero
    q = (x32 / scale).astype(E4M3)
    return q.astype(x.dtype) * scale.astype(x.dtype)


def fp8_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs):
    """`jax.lax.dot_general` on e4m3-rounded operands (a drop-in `dot_general` for nnx.Linear)."""
    return jax.lax.dot_general(
        quantize_dequantize(lhs), quantize_dequantize(rhs), dimension_numbers,
        precision=precision, preferred_element_type=preferred_element_type, **kwargs,
    )
