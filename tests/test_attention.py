"""Attention kernels: the TPU splash path (run here in Pallas' interpret mode) and the chunked path
against XLA's attention, alone, in gradients and inside DINOv2; the chunked path's memory at 896 px;
and which kernel each device and dtype gets."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from segic_jax.models import dinov2
from segic_jax.ops import attention
from segic_jax.ops.attention import force_implementation, multi_head_attention


def _qkv(rng, b, nq, nk, width, dtype=jnp.float32):
    return tuple(jnp.asarray(rng.standard_normal((b, n, width)), dtype) for n in (nq, nk, nk))


def _attend(impl, q, k, v, heads, **kw):
    with force_implementation(impl), jax.default_matmul_precision("highest"):
        return jax.jit(functools.partial(multi_head_attention, num_heads=heads, **kw))(q, k, v)


def _check_against_xla(impl, rng, nq, nk, is_causal, lengths, width, atol):
    q, k, v = _qkv(rng, 2, nq, nk, width)
    kw = dict(is_causal=is_causal, key_lengths=None if lengths is None else jnp.asarray(lengths))
    ref = _attend("xla", q, k, v, 2, **kw)
    out = _attend(impl, q, k, v, 2, **kw)
    assert out.shape == ref.shape == (2, nq, width)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=atol, rtol=0)


def _gradients(impl, q, k, v, heads, **kw):
    """d/d(q, k, v) of a loss on the attention's output."""
    def loss(q, k, v):
        with force_implementation(impl), jax.default_matmul_precision("highest"):
            out = multi_head_attention(q, k, v, heads, **kw)
        return jnp.sum(out * jnp.cos(out))

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


def _dinov2_patch_tokens(impl):
    cfg = dinov2.Dinov2Config(embed_dim=128, depth=2, num_heads=2, pos_grid=5, num_register_tokens=4)
    graphdef, state = nnx.split(dinov2.Dinov2(cfg, rngs=nnx.Rngs(0)))
    images = jnp.asarray(np.random.default_rng(1).standard_normal((2, 98, 126, 3)), jnp.float32)  # 63 patches + 5 tokens
    with force_implementation(impl), jax.default_matmul_precision("highest"):
        return np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x).patch_tokens)(state, images))


@pytest.mark.parametrize(
    "nq,nk,is_causal,lengths",
    [
        (70, 70, False, None),  # padded to one 128 block
        (130, 300, False, None),  # queries and keys of different lengths, several blocks
        (70, 200, False, (200, 37)),  # padded keys per row, as the decoder's token padding
        (150, 150, True, None),  # causal, as CLIP's text tower
    ],
)
def test_splash_matches_xla(rng, nq, nk, is_causal, lengths):
    _check_against_xla("splash", rng, nq, nk, is_causal, lengths, 128, atol=2e-5)


def test_splash_bf16_error_is_that_of_bf16(rng):
    q, k, v = _qkv(rng, 1, 260, 260, 128)
    exact = _attend("xla", q, k, v, 2)
    err = {}
    for impl in ("xla", "splash"):
        out = _attend(impl, *(t.astype(jnp.bfloat16) for t in (q, k, v)), 2)
        err[impl] = float(jnp.linalg.norm(out.astype(jnp.float32) - exact) / jnp.linalg.norm(exact))
    assert err["splash"] < 1.5 * err["xla"] + 1e-3, err


def test_splash_gradients_match_xla(rng):
    q, k, v = _qkv(rng, 1, 70, 140, 64)
    ref, got = (_gradients(impl, q, k, v, 1, key_lengths=jnp.asarray([101])) for impl in ("xla", "splash"))
    for a, b in zip(got, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-5, rtol=0)
    assert float(jnp.abs(ref[1][:, 101:]).max()) == 0.0  # padded keys get no gradient


def test_dinov2_through_splash_matches_xla():
    np.testing.assert_allclose(_dinov2_patch_tokens("splash"), _dinov2_patch_tokens("xla"), atol=5e-5, rtol=0)


@pytest.mark.parametrize(
    "nq,nk,is_causal,lengths,chunk",
    [
        (70, 70, False, None, 0),  # one chunk smaller than CHUNK_QUERIES
        (1300, 700, False, None, 256),  # queries not a multiple of the chunk, keys of another length
        (300, 500, False, (500, 37), 128),  # padded keys per row
        (450, 450, True, None, 128),  # causal across chunk boundaries
    ],
)
def test_chunked_matches_xla(rng, nq, nk, is_causal, lengths, chunk, monkeypatch):
    if chunk:
        monkeypatch.setattr(attention, "CHUNK_QUERIES", chunk)
    _check_against_xla("chunked", rng, nq, nk, is_causal, lengths, 64, atol=2e-6)


@pytest.mark.parametrize("is_causal,lengths", [(False, None), (False, (333, 37)), (True, None)])
def test_chunked_gradients_match_xla(rng, is_causal, lengths, monkeypatch):
    monkeypatch.setattr(attention, "CHUNK_QUERIES", 128)
    q, k, v = _qkv(rng, 2, 333, 333, 64)
    kw = dict(is_causal=is_causal, key_lengths=None if lengths is None else jnp.asarray(lengths))
    ref, got = (_gradients(impl, q, k, v, 2, **kw) for impl in ("xla", "chunked"))
    for a, b in zip(got, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5 * float(jnp.abs(b).max()), rtol=0)
    if lengths is not None:
        assert float(jnp.abs(got[1][1, 37:]).max()) == 0.0  # padded keys get no gradient


def test_dinov2_through_chunked_matches_xla(monkeypatch):
    monkeypatch.setattr(attention, "CHUNK_QUERIES", 32)  # 68 tokens: three chunks
    np.testing.assert_allclose(_dinov2_patch_tokens("chunked"), _dinov2_patch_tokens("xla"), atol=5e-5, rtol=0)


@pytest.mark.parametrize("impl,fits", [("chunked", True), ("xla", False)])
@pytest.mark.parametrize("program", ["forward", "gradient"])
def test_no_score_buffer_at_896_px(impl, fits, program):
    """XLA's buffer assignment for DINOv2 at the paper's 896 px (4097 tokens), its forward pass and
    its gradient: with the chunked path no buffer the size of one block's scores (heads x 4097^2
    float32) is allocated, in either pass; XLA's own attention needs one (which is what makes the
    test able to fail)."""
    cfg = dinov2.Dinov2Config(embed_dim=64, depth=2, num_heads=2, pos_grid=4)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: dinov2.Dinov2(cfg, rngs=nnx.Rngs(0))))
    images = jax.ShapeDtypeStruct((1, 896, 896, 3), jnp.float32)
    forward = lambda s, x: nnx.merge(graphdef, s)(x).patch_tokens  # noqa: E731
    fn = forward if program == "forward" else jax.grad(lambda s, x: jnp.sum(forward(s, x) ** 2), argnums=1)
    with force_implementation(impl):
        compiled = jax.jit(fn).lower(state, images).compile()
    scores = cfg.num_heads * 4097**2 * 4
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert (temp < scores) == fits, (temp, scores)


@pytest.mark.parametrize(
    "platform,dtype,nq,nk,expected",
    [
        ("tpu", jnp.bfloat16, 4097, 4097, "splash"),  # DINOv2-L at 896 px
        ("tpu", jnp.float32, 4097, 4097, "xla"),  # float32 stays exact
        ("tpu", jnp.bfloat16, 257, 257, "xla"),  # short: XLA's fused attention
        ("tpu", jnp.bfloat16, 7, 4096, "xla"),  # the decoder's token-to-image attention
        ("cpu", jnp.bfloat16, 4097, 4097, "chunked"),  # no score matrix on a CPU, in any dtype
        ("cpu", jnp.float32, 257, 257, "chunked"),  # DINOv2 at 224 px
        ("cpu", jnp.float32, 77, 77, "xla"),  # CLIP's text tower
        ("cpu", jnp.float32, 7, 4096, "xla"),  # the decoder's token-to-image attention
        ("gpu", jnp.float32, 4097, 4097, "xla"),  # float32 on a GPU: until gpu_checks.sh has measured it
    ],
)
def test_kernel_choice(monkeypatch, platform, dtype, nq, nk, expected):
    monkeypatch.setattr(attention, "_platform", lambda: platform)
    monkeypatch.setattr(attention, "_gpu_supports_cudnn_attention", lambda: False)
    assert attention.attention_implementation(dtype, 64, nq, nk) == expected


def test_cudnn_on_recent_gpus_in_half_precision(monkeypatch):
    monkeypatch.setattr(attention, "_platform", lambda: "gpu")
    monkeypatch.setattr(attention, "_gpu_supports_cudnn_attention", lambda: True)
    assert attention.attention_implementation(jnp.bfloat16, 64, 4097, 4097) == "cudnn"
    assert attention.attention_implementation(jnp.float32, 64, 4097, 4097) == "xla"
    assert attention.attention_implementation(jnp.bfloat16, 160, 4097, 4097) == "xla"  # head too wide for cuDNN


def test_unknown_implementation_is_refused():
    with pytest.raises(ValueError, match="splash"):
        with force_implementation("flash"):
            pass
