"""The point-sampled mask loss against torch (grid_sample, BCE, dice) on the same points."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from segic_jax.training import losses


def _torch_point_sample(values, coords):
    return F.grid_sample(values[:, None], 2 * coords[:, :, None] - 1, mode="bilinear", align_corners=False)[:, 0, :, 0]


def test_point_sample_matches_grid_sample(rng):
    values = rng.standard_normal((3, 9, 13)).astype(np.float32)
    coords = rng.uniform(-0.05, 1.05, (3, 200, 2)).astype(np.float32)  # a few outside: zero padding
    coords[0, :4] = [[0, 0], [1, 1], [0.5, 0.5], [1, 0]]
    ours = np.asarray(losses.point_sample(jnp.asarray(values), jnp.asarray(coords)))
    ref = _torch_point_sample(torch.from_numpy(values), torch.from_numpy(coords)).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_importance_sampling_keeps_the_most_uncertain_candidates(rng):
    logits = rng.standard_normal((2, 16, 16)).astype(np.float32) * 4
    candidates = rng.uniform(0, 1, (2, 300, 2)).astype(np.float32)
    fresh = rng.uniform(0, 1, (2, 25, 2)).astype(np.float32)
    got = np.asarray(losses.select_uncertain(jnp.asarray(logits), jnp.asarray(candidates), jnp.asarray(fresh), 75))
    sampled = _torch_point_sample(torch.from_numpy(logits), torch.from_numpy(candidates))
    idx = torch.topk(-sampled.abs(), k=75, dim=1)[1].numpy()
    expected = np.concatenate([np.take_along_axis(candidates, idx[..., None], 1), fresh], 1)
    assert got.shape == (2, 100, 2)
    for n in range(2):  # same set of points (top_k ties may order differently)
        assert {tuple(p) for p in got[n]} == {tuple(p) for p in expected[n]}


def test_losses_match_torch_on_the_same_points(rng):
    n = 4
    logits = rng.standard_normal((n, 32, 32)).astype(np.float32) * 3
    labels = (rng.uniform(size=(n, 112, 112)) > 0.6).astype(np.float32)
    valid = np.array([True, True, True, False])
    coords = losses.sample_points(jax.random.key(0), jnp.asarray(logits), num_points=500)
    ours = losses.point_losses(
        losses.point_sample(jnp.asarray(logits), coords), losses.point_sample(jnp.asarray(labels), coords), jnp.asarray(valid)
    )
    c = torch.from_numpy(np.array(coords))
    pl = _torch_point_sample(torch.from_numpy(logits), c)[:3]
    lab = _torch_point_sample(torch.from_numpy(labels), c)[:3]
    ce = F.binary_cross_entropy_with_logits(pl, lab, reduction="none").mean(1).sum() / 3
    p = pl.sigmoid()
    dice = (1 - (2 * (p * lab).sum(-1) + 1) / (p.sum(-1) + lab.sum(-1) + 1)).sum() / 3
    np.testing.assert_allclose(float(ours.loss_mask), float(ce), rtol=1e-5)
    np.testing.assert_allclose(float(ours.loss_dice), float(dice), rtol=1e-5)


def test_loss_is_differentiable_and_lower_for_the_right_answer(rng):
    labels = np.zeros((2, 64, 64), np.float32)
    labels[:, 16:48, 16:48] = 1
    valid = jnp.asarray([True, True])
    good = jnp.asarray(np.where(labels[:, ::4, ::4] > 0, 6.0, -6.0))
    bad = -good
    key = jax.random.key(1)
    assert losses.mask_loss(key, good, jnp.asarray(labels), valid).total < losses.mask_loss(key, bad, jnp.asarray(labels), valid).total
    grad = jax.grad(lambda x: losses.mask_loss(key, x, jnp.asarray(labels), valid).total)(jnp.zeros((2, 16, 16)))
    assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).sum() > 0
