"""SEGIC head: released-checkpoint conversion and batched, padded decoding against a torch
transcription of the reference's decode."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from segic_jax import checkpoints
from segic_jax.conversion import segic as segic_conversion
from segic_jax.conversion.core import ConversionError
from segic_jax.models import segic
from segic_jax.models.segic import SegicHead
from torch_reference import TorchSegicHead

TOL = 1e-4


def test_released_layout_has_the_documented_keys_and_converts_round_trip(tmp_path):
    ref = TorchSegicHead()  # full size: DINOv2-L features, CLIP-L text, 896 px
    state = ref.state_dict()
    assert len(state) == 148 and sum(v.numel() for v in state.values()) == 5_377_764
    path = str(tmp_path / "segic_dinov2_l_80kx12e.pth")
    torch.save(state, path)
    config, params = segic_conversion.convert_head(path, progress=False)
    assert config == segic.SegicConfig()
    assert sum(v.size for v in params.values()) == 5_377_764
    np.testing.assert_array_equal(params["neck.conv1.kernel"], state["neck.0.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        params["mask_decoder.output_upscaling.conv1.kernel"],
        state["mask_decoder.output_upscaling.0.weight"].numpy().transpose(0, 2, 3, 1),
    )
    np.testing.assert_array_equal(
        params["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"],
        state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].numpy(),
    )
    out = checkpoints.save_model(str(tmp_path / "head"), SegicHead, config, params)
    loaded = segic.load(out)
    flat = checkpoints.module_params(loaded)
    assert all(np.array_equal(np.asarray(flat[k]), params[k]) for k in params)


def test_released_layout_errors_are_named(tmp_path):
    state = TorchSegicHead(vision_dim=32, text_dim=16, grid=8, image_size=112).state_dict()
    del state["mask_decoder.iou_token.weight"]
    state["neck.0.weight"] = torch.zeros(256, 32, 3, 3)
    torch.save(state, str(tmp_path / "x.pth"))
    with pytest.raises(ConversionError) as e:
        segic_conversion.convert_head(str(tmp_path / "x.pth"), image_size=112, progress=False)
    assert "mask_decoder.iou_token.embedding" in str(e.value) and "neck.conv1.kernel" in str(e.value)


@pytest.fixture(scope="module")
def small_heads():
    ref = TorchSegicHead(vision_dim=32, text_dim=16, grid=8, image_size=112)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    config = segic_conversion.config_from_tensors(state, "test")
    config = segic.SegicConfig.from_dict({**config.to_dict(), "image_size": 112})
    from segic_jax.conversion.core import apply_rules

    params = apply_rules(state, segic_conversion.HEAD_RULES, checkpoints.param_shapes(SegicHead, config), progress=False)
    return ref, checkpoints.build_model(SegicHead, config, params)


def test_batched_padded_decode_matches_the_reference_target_by_target(small_heads, rng):
    ref, ours = small_heads
    b, k, c = 2, 3, 32
    feats = rng.standard_normal((b, 8, 8, c)).astype(np.float32)
    refs = rng.standard_normal((b, k, c)).astype(np.float32)
    valid = np.array([[True, True, True], [True, True, False]])
    text = rng.standard_normal((b, 16)).astype(np.float32)
    out = ours.decode(jnp.asarray(feats), jnp.asarray(refs), jnp.asarray(valid), jnp.asarray(np.repeat(text[:, None], k, 1)))
    assert out.logits.shape == (b, k, 112, 112) and out.points.shape == (b, k, 2)
    for i in range(b):
        n = int(valid[i].sum())
        logits, sim, points = ref.decode_one(
            torch.from_numpy(feats[i]).permute(2, 0, 1), torch.from_numpy(refs[i, :n]), torch.from_numpy(text[i])
        )
        np.testing.assert_allclose(np.asarray(out.similarity[i, :n]), sim.numpy(), rtol=0, atol=TOL)
        np.testing.assert_array_equal(np.asarray(out.points[i, :n]), points.numpy())
        np.testing.assert_allclose(np.asarray(out.logits[i, :n]), logits.numpy(), rtol=0, atol=TOL)
        # binary masks agree wherever the logit is not within float noise of the threshold
        decided = np.abs(logits.numpy()) > TOL
        assert decided.mean() > 0.99
        assert np.array_equal((np.asarray(out.logits[i, :n]) > 0)[decided], (logits.numpy() > 0)[decided])


def test_cross_instance_tokens_by_hand():
    tokens = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    type_embed = jnp.asarray([[0.0, 0.0], [100.0, 100.0]])
    out = np.asarray(segic.cross_instance_tokens(tokens, type_embed))
    assert out.shape == (2, 3, 3, 2)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                np.testing.assert_array_equal(out[b, i, j], np.asarray(tokens[b, j]) + (100 if i == j else 0))


def test_decode_is_deterministic_and_jits_once(small_heads, rng):
    from flax import nnx

    _, ours = small_heads
    calls = []

    @nnx.jit
    def run(model, *args):
        calls.append(1)
        return model.decode(*args).logits

    args = [
        jnp.asarray(rng.standard_normal((2, 8, 8, 32)), jnp.float32),
        jnp.asarray(rng.standard_normal((2, 3, 32)), jnp.float32),
        jnp.asarray([[True, False, False], [True, True, True]]),
        jnp.asarray(rng.standard_normal((2, 3, 16)), jnp.float32),
    ]
    first = np.asarray(run(ours, *args))
    args[2] = jnp.asarray([[True, True, False], [True, False, False]])  # other padding, same shapes
    run(ours, *args)
    args[2] = jnp.asarray([[True, False, False], [True, True, True]])
    again = np.asarray(run(ours, *args))
    assert len(calls) == 1
    np.testing.assert_array_equal(first, again)


def test_training_prompts_match_the_reference_row_by_row(small_heads, rng):
    # One padded batch mixing every training variant: with/without the GT box prompt and with
    # cross-instance tokens or only the own token, against the reference's decode of each target.
    from segic_jax.ops.boxes import mask_boxes

    ref, ours = small_heads
    b, k, c = 4, 3, 32
    feats = rng.standard_normal((b, 8, 8, c)).astype(np.float32)
    refs = rng.standard_normal((b, k, c)).astype(np.float32)
    valid = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], bool)
    text = rng.standard_normal((b, 16)).astype(np.float32)
    masks = np.zeros((b, k, 112, 112), bool)
    for i in range(b):
        for j in range(k):
            y, x = rng.integers(0, 80, 2)
            masks[i, j, y : y + 20, x : x + 25] = True
    boxes = np.array(mask_boxes(jnp.asarray(masks)))  # writable, for torch.from_numpy
    use_box = np.array([True, False, True, False])
    cross = np.array([True, True, False, False])
    out = ours.decode(jnp.asarray(feats), jnp.asarray(refs), jnp.asarray(valid), jnp.asarray(np.repeat(text[:, None], k, 1)),
                      jnp.asarray(boxes), jnp.asarray(use_box), jnp.asarray(cross))
    assert out.low_res.shape == (b, k, 32, 32)
    ties = []
    for i in range(b):
        n = int(valid[i].sum())
        logits, sim, points = ref.decode_one(
            torch.from_numpy(feats[i]).permute(2, 0, 1), torch.from_numpy(refs[i, :n]), torch.from_numpy(text[i]),
            boxes=torch.from_numpy(boxes[i, :n]) if use_box[i] else None, cross=bool(cross[i]),
        )
        for j in range(n):
            if not np.array_equal(np.asarray(out.points[i, j]), points[j].numpy()):
                # the argmax of a near-flat similarity peak (docs/original.md 6): only a near-tie may move it
                x0, y0 = np.asarray(out.points[i, j]).astype(int)
                x1, y1 = points[j].numpy().astype(int)
                assert abs(float(sim[j, y0, x0]) - float(sim[j, y1, x1])) < 1e-5
                ties.append((i, j))
                continue
            np.testing.assert_allclose(np.asarray(out.logits[i, j]), logits[j].numpy(), rtol=0, atol=TOL)
    assert len(ties) <= 2  # of the 9 valid rows


def test_mask_boxes_by_hand():
    from segic_jax.ops.boxes import mask_boxes

    m = np.zeros((2, 6, 8), bool)
    m[0, 1:4, 2:7] = True
    np.testing.assert_array_equal(np.asarray(mask_boxes(jnp.asarray(m))), [[2, 1, 6, 3], [0, 0, 0, 0]])
