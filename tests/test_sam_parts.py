"""SAM-derived parts against the official `segment-anything` package on random weights."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from segic_jax import checkpoints
from segic_jax.conversion.core import apply_rules
from segic_jax.conversion.segic import MASK_DECODER_RULES, PROMPT_ENCODER_RULES
from segic_jax.models.mask_decoder import MaskDecoder, MaskDecoderConfig
from segic_jax.models.prompt_encoder import PromptEncoder, PromptEncoderConfig
from perturb import perturbed
from torch_reference import sam_mask_decoder, sam_prompt_encoder

TOL = 1e-4


def _convert(torch_module, abstract, rules):
    state = {k: v.numpy() for k, v in torch_module.state_dict().items()}
    params = apply_rules(state, rules, checkpoints.state_shapes(abstract), progress=False)
    return checkpoints.with_params(abstract, params)


def _abstract(cls, cfg):
    from flax import nnx

    return nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module", params=[(16, 224, (7, 2)), (8, 112, (7, 2)), (16, 64, (2, 2))])
def prompt_encoders(request):
    grid, size, strides = request.param
    ref = sam_prompt_encoder(grid, size, strides)
    cfg = PromptEncoderConfig(image_embedding_size=(grid, grid), input_image_size=(size, size), mask_strides=strides)
    return ref, _convert(ref, _abstract(PromptEncoder, cfg), PROMPT_ENCODER_RULES), size


def test_dense_positional_encoding(prompt_encoders):
    ref, ours, _ = prompt_encoders
    with torch.no_grad():
        expected = ref.get_dense_pe()[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(np.asarray(ours.dense_pe()), expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("with_box", [False, True])
def test_prompt_encoder_matches_sam(prompt_encoders, with_box, rng):
    ref, ours, size = prompt_encoders
    k = 3
    coords = rng.uniform(0, size, (k, 2, 2)).astype(np.float32)
    labels = np.array([[1, 0], [0, -1], [1, 1]], np.int64)
    boxes = np.sort(rng.uniform(0, size, (k, 2, 2)), axis=1).reshape(k, 4).astype(np.float32) if with_box else None
    masks = rng.standard_normal((k, size, size)).astype(np.float32)
    with torch.no_grad():
        sparse_ref, dense_ref = ref(
            points=(torch.from_numpy(coords), torch.from_numpy(labels)),
            boxes=None if boxes is None else torch.from_numpy(boxes),
            masks=torch.from_numpy(masks)[:, None],
        )
    sparse, dense = ours((jnp.asarray(coords), jnp.asarray(labels)), None if boxes is None else jnp.asarray(boxes), jnp.asarray(masks))
    assert sparse.shape == tuple(sparse_ref.shape)
    np.testing.assert_allclose(np.asarray(sparse), sparse_ref.numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(np.asarray(dense), dense_ref.permute(0, 2, 3, 1).numpy(), rtol=0, atol=TOL)


def test_text_tokens_follow_points_and_boxes(prompt_encoders, rng):
    _, ours, size = prompt_encoders
    coords = jnp.asarray(rng.uniform(0, size, (2, 1, 2)), jnp.float32)
    texts = jnp.asarray(rng.standard_normal((2, 3, 256)), jnp.float32)
    sparse, _ = ours((coords, jnp.ones((2, 1), jnp.int32)), None, None, texts)
    alone, _ = ours((coords, jnp.ones((2, 1), jnp.int32)), None, None)
    np.testing.assert_array_equal(np.asarray(sparse[:, :2]), np.asarray(alone))
    np.testing.assert_array_equal(np.asarray(sparse[:, 2:]), np.asarray(texts))


@pytest.fixture(scope="module")
def decoders():
    ref = sam_mask_decoder()
    return ref, _convert(ref, _abstract(MaskDecoder, MaskDecoderConfig()), MASK_DECODER_RULES)


def _decoder_inputs(rng, k=3, tokens=4, grid=8):
    image = rng.standard_normal((1, grid, grid, 256)).astype(np.float32)
    pe = rng.standard_normal((grid, grid, 256)).astype(np.float32)
    sparse = rng.standard_normal((k, tokens, 256)).astype(np.float32)
    dense = rng.standard_normal((k, grid, grid, 256)).astype(np.float32)
    return image, pe, sparse, dense


def _run_sam(ref, image, pe, sparse, dense):
    nchw = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2)
    with torch.no_grad():
        masks, iou = ref.predict_masks(nchw(image), nchw(pe[None]), torch.from_numpy(sparse), nchw(dense))
    return masks.numpy(), iou.numpy()


def test_mask_decoder_matches_sam(decoders, rng):
    ref, ours = decoders
    image, pe, sparse, dense = _decoder_inputs(rng)
    masks_ref, iou_ref = _run_sam(ref, image, pe, sparse, dense)
    k = sparse.shape[0]
    masks, iou = ours(jnp.repeat(jnp.asarray(image), k, 0), jnp.asarray(pe), jnp.asarray(sparse), jnp.asarray(dense))
    assert masks.shape == masks_ref.shape == (k, 4, 32, 32)
    np.testing.assert_allclose(np.asarray(masks), masks_ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(np.asarray(iou), iou_ref, rtol=0, atol=TOL)


def test_two_way_transformer_matches_sam(decoders, rng):
    ref, ours = decoders
    image, pe, sparse, _ = _decoder_inputs(rng, k=2, tokens=6)
    src = np.repeat(image, 2, 0)
    with torch.no_grad():
        q_ref, k_ref = ref.transformer(
            torch.from_numpy(src).permute(0, 3, 1, 2), torch.from_numpy(pe[None]).permute(0, 3, 1, 2),
            torch.from_numpy(sparse),
        )
    q, k = ours.transformer(jnp.asarray(src), jnp.broadcast_to(jnp.asarray(pe), src.shape), jnp.asarray(sparse))
    np.testing.assert_allclose(np.asarray(q), q_ref.numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(np.asarray(k), k_ref.numpy(), rtol=0, atol=TOL)


def test_padded_tokens_change_nothing(decoders, rng):
    # Rows padded with garbage tokens and told their true length give what the short rows give.
    ref, ours = decoders
    image, pe, sparse, dense = _decoder_inputs(rng, k=2, tokens=4)
    garbage = rng.standard_normal((2, 3, 256)).astype(np.float32) * 10
    padded = np.concatenate([sparse, garbage], axis=1)
    masks_ref, iou_ref = _run_sam(ref, image, pe, sparse, dense)
    image_rows = jnp.repeat(jnp.asarray(image), 2, 0)
    masks, iou = ours(image_rows, jnp.asarray(pe), jnp.asarray(padded), jnp.asarray(dense), jnp.asarray([4, 4]))
    np.testing.assert_allclose(np.asarray(masks), masks_ref, rtol=0, atol=TOL)
    unmasked, _ = ours(image_rows, jnp.asarray(pe), jnp.asarray(padded), jnp.asarray(dense))
    assert np.abs(np.asarray(unmasked) - masks_ref).max() > 100 * TOL


@pytest.mark.parametrize("param", ["transformer.layers.1.cross_attn_image_to_token.v_proj.bias", "output_upscaling.conv2.kernel", "output_hypernetworks_mlps.0.layers.2.bias"])
def test_parity_check_catches_one_perturbed_weight(decoders, param, rng):
    ref, ours = decoders
    image, pe, sparse, dense = _decoder_inputs(rng)
    masks_ref, _ = _run_sam(ref, image, pe, sparse, dense)
    nudged = perturbed(ours, param)
    masks, _ = nudged(jnp.repeat(jnp.asarray(image), 3, 0), jnp.asarray(pe), jnp.asarray(sparse), jnp.asarray(dense))
    assert np.abs(np.asarray(masks) - masks_ref).max() > TOL
