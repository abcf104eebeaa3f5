"""Propagated mask, masked-mean reference feature and point prompt on hand-built features."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segic_jax.ops.correspondence import masked_mean_features, peak_points, similarity_maps
from segic_jax.ops.image import normalize_images


def _hand_features():
    feats = np.zeros((1, 4, 4, 3), np.float32)
    feats[..., 1] = 1.0  # background: [0, 1, 0]
    feats[0, 0:2, 0] = [1, 1, 0]
    feats[0, 0:2, 1] = [1, -1, 0]
    feats[0, 3, 2] = [3, 0, 0]  # same direction as the reference mean, elsewhere
    mask = np.zeros((1, 1, 8, 8), np.float32)
    mask[0, 0, :4, :4] = 1.0  # covers feature cells (0..1, 0..1) after the 8 -> 4 resize
    return feats, mask


def test_masked_mean_and_similarity_by_hand():
    feats, mask = _hand_features()
    mean = np.asarray(masked_mean_features(jnp.asarray(feats), jnp.asarray(mask)))
    np.testing.assert_allclose(mean, [[[1.0, 0.0, 0.0]]], atol=1e-7)
    sim = np.asarray(similarity_maps(jnp.asarray(feats), jnp.asarray(mean), (4, 4), (4, 4)))[0, 0]
    expected = np.zeros((4, 4), np.float32)
    expected[0:2, 0:2] = 1 / np.sqrt(2)
    expected[3, 2] = 1.0
    np.testing.assert_allclose(sim, expected, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(peak_points(jnp.asarray(sim))), [2.0, 3.0])  # (x, y)


def test_empty_mask_gives_zero_vector_and_zero_map():
    feats, mask = _hand_features()
    mean = masked_mean_features(jnp.asarray(feats), jnp.zeros_like(jnp.asarray(mask)))
    assert np.all(np.asarray(mean) == 0)
    sim = np.asarray(similarity_maps(jnp.asarray(feats), mean, (8, 8), (16, 16)))
    assert np.all(sim == 0)
    np.testing.assert_array_equal(np.asarray(peak_points(jnp.asarray(sim))), [[[0.0, 0.0]]])


def test_real_sizes_match_a_torch_transcription_of_the_reference(rng):
    # 64x64 features, 896 masks, maps 224 then 896, as in SEGIC at 896 px.
    feats = rng.standard_normal((1, 64, 64, 16)).astype(np.float32)
    mask = np.zeros((2, 896, 896), np.float32)
    mask[0, 100:500, 200:700] = 1
    mask[1, 611:613, 40:45] = 1  # thinner than a feature cell: may vanish at 64x64
    t_feat = torch.from_numpy(feats).permute(0, 3, 1, 2)
    small = F.interpolate(torch.from_numpy(mask)[:, None], size=(64, 64), mode="bilinear", align_corners=False) > 0.5
    small = small[:, 0].float()
    ref_vec = torch.einsum("chw,khw->kc", t_feat[0], small) / small.sum((1, 2)).clamp(min=1)[:, None]
    up = F.interpolate(t_feat, size=(224, 224), mode="bilinear", align_corners=False)
    up = up / up.norm(dim=1, keepdim=True).clamp(min=1e-8)
    vec = ref_vec / ref_vec.norm(dim=1, keepdim=True).clamp(min=1e-8)
    ref_sim = torch.einsum("chw,kc->khw", up[0], vec)[None]
    ref_sim = F.interpolate(ref_sim, size=(896, 896), mode="bilinear", align_corners=False)[0].numpy()

    ours_vec = masked_mean_features(jnp.asarray(feats), jnp.asarray(mask[None]))
    np.testing.assert_allclose(np.asarray(ours_vec)[0], ref_vec.numpy(), atol=1e-5)
    ours = np.asarray(similarity_maps(jnp.asarray(feats), ours_vec, (224, 224), (896, 896)))[0]
    np.testing.assert_allclose(ours, ref_sim, atol=1e-5)


def test_normalisation_zeroes_the_padding():
    images = np.full((2, 4, 5, 3), 128, np.uint8)
    out = np.asarray(normalize_images(jnp.asarray(images), jnp.asarray([[4, 5], [2, 3]])))
    np.testing.assert_allclose(out[0, 0, 0], (128 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), rtol=0, atol=1e-6)
    assert np.all(out[1, 2:] == 0) and np.all(out[1, :, 3:] == 0) and np.all(out[1, :2, :3] != 0)


@pytest.mark.parametrize(
    "grid,mid,out,eps",
    [((7, 9), (24, 31), (98, 126), 1e-8), ((5, 6), (3, 4), (10, 10), 1e-8), ((6, 6), (21, 21), (84, 84), 1e-4)],
)
def test_non_square_and_shrinking_maps_match_torch(rng, grid, mid, out, eps):
    # Features with a shared component, as real ones (neighbours far from orthogonal), and one
    # all-zero cell, where the norm clamp decides.
    feats = (rng.standard_normal((2, *grid, 32)) + 2.0 * rng.standard_normal(32)).astype(np.float32)
    feats[1, 2, 3] = 0.0
    vecs = rng.standard_normal((2, 3, 32)).astype(np.float32)
    t_feat = torch.from_numpy(feats).permute(0, 3, 1, 2)
    up = F.interpolate(t_feat, size=mid, mode="bilinear", align_corners=False)
    up = up / up.norm(dim=1, keepdim=True).clamp(min=eps)
    vec = torch.from_numpy(vecs)
    vec = vec / vec.norm(dim=2, keepdim=True).clamp(min=eps)
    ref = F.interpolate(torch.einsum("bchw,bkc->bkhw", up, vec), size=out, mode="bilinear", align_corners=False).numpy()
    ours = np.asarray(similarity_maps(jnp.asarray(feats), jnp.asarray(vecs), mid, out, eps=eps))
    np.testing.assert_allclose(ours, ref, atol=2e-6, rtol=0)
    # These maps are flat near their peaks, where rounding alone can move the argmax (torch's own
    # order of operations against ours): the point must be a peak of the reference map.
    x, y = np.asarray(peak_points(jnp.asarray(ours))).astype(int).transpose(2, 0, 1)
    at_point = np.take_along_axis(ref.reshape(2, 3, -1), (y * out[1] + x)[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(at_point, ref.max(axis=(-2, -1)), atol=2e-6, rtol=0)
