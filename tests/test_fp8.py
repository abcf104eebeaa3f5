"""FP8 e4m3 matmuls for the frozen encoder: the rounding is e4m3's, and DINOv2 stays close to bf16."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from segic_jax.models import dinov2
from segic_jax.ops.fp8 import E4M3_MAX, fp8_dot_general, quantize_dequantize


def test_quantize_dequantize_is_per_tensor_scaled_e4m3_rounding():
    x = np.random.default_rng(0).normal(size=(64, 48)).astype(np.float32) * 3.0
    got = np.asarray(quantize_dequantize(jnp.asarray(x)))
    scale = np.float32(np.abs(x).max() / E4M3_MAX)
    expected = (x / scale).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * scale
    np.testing.assert_array_equal(got, expected)
    assert np.abs(got).max() == pytest.approx(np.abs(x).max(), rel=1e-6)  # the largest value maps to 448 exactly
    normal = np.abs(x) > 2.0**-6 * 448 * scale  # e4m3's normal range: 3 mantissa bits, error <= 2^-4
    assert np.all(np.abs(got - x)[normal] <= 2.0**-4 * np.abs(x)[normal] + 1e-7)
    assert np.abs(got - x).max() > 0  # it really rounds
    np.testing.assert_array_equal(np.asarray(quantize_dequantize(jnp.zeros((3, 3)))), 0)  # no 0/0


def test_fp8_dot_general_matches_the_product_of_rounded_operands():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 7, 32)).astype(np.float32), rng.normal(size=(32, 16)).astype(np.float32)
    dims = (((2,), (0,)), ((), ()))
    got = fp8_dot_general(jnp.asarray(a), jnp.asarray(b), dims, precision="highest")
    qa, qb = (np.asarray(quantize_dequantize(jnp.asarray(x))) for x in (a, b))
    np.testing.assert_allclose(np.asarray(got), np.einsum("bnk,ko->bno", qa, qb), rtol=1e-5, atol=1e-5)


def test_dinov2_with_fp8_matmuls_stays_close_to_bf16():
    cfg = dinov2.dinov2_config("vits14", depth=2, embed_dim=96, num_heads=2, pos_grid=8)
    model = dinov2.Dinov2(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    images = jax.random.uniform(jax.random.key(1), (2, 112, 112, 3), minval=0, maxval=255)
    bf16 = np.asarray(dinov2.patch_features(model, images))
    fast = dinov2.use_fp8_matmuls(nnx.clone(model))
    assert "f8_e4m3fn" in str(jax.make_jaxpr(lambda x: dinov2.patch_features(fast, x))(images))
    fp8 = np.asarray(dinov2.patch_features(fast, images))
    cos = (bf16 * fp8).sum(-1) / np.linalg.norm(bf16, axis=-1) / np.linalg.norm(fp8, axis=-1)
    assert cos.min() > 0.98 and not np.array_equal(bf16, fp8)
    assert "f8_e4m3fn" not in str(jax.make_jaxpr(lambda x: dinov2.patch_features(model, x))(images))  # a copy was changed
