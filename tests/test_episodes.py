"""Synthetic dataset, augmentations and the grain instance-episode pipeline."""

import numpy as np
import pytest

from segic_jax.data import augment, episodes
from segic_jax.data import build as build_cli
from segic_jax.data.sources import data_source, decode_instances

SIZE, K = 48, 5


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("data"))
    assert build_cli.main(["synthetic_incontext/tiny", "--data_dir", data_dir]) == 0
    return data_source("synthetic_incontext/tiny", "train", data_dir), data_source("synthetic_incontext/tiny", "test", data_dir)


def _batches(ds, n):
    it = episodes.iterator(ds)
    return [next(it) for _ in range(n)]


def test_synthetic_splits_hold_disjoint_classes(source):
    train, test = source
    names = lambda src: {n for i in range(len(src)) for n in decode_instances(src[i])["category_names"]}
    assert len(train) == 16 and len(test) == 8
    assert names(train) and names(test) and not names(train) & names(test)
    ex = decode_instances(train[0])
    assert ex["image"].shape == (64, 64, 3) and ex["masks"].shape[1:] == (64, 64) and ex["masks"].any((1, 2)).all()


def test_batches_have_fixed_shapes_and_valid_prefixes(source):
    ds = episodes.instance_episodes(source[0], size=SIZE, max_instances=K, batch_size=3, seed=0)
    for batch in _batches(ds, 4):
        assert batch["target_image"].shape == batch["reference_image"].shape == (3, SIZE, SIZE, 3)
        assert batch["target_masks"].shape == batch["reference_masks"].shape == (3, K, SIZE, SIZE)
        for valid, t, r in zip(batch["valid"], batch["target_masks"], batch["reference_masks"]):
            k = int(valid.sum())
            assert k >= 1 and valid[:k].all() and not valid[k:].any()
            assert not t[k:].any() and not r[k:].any()
            if k > 1:  # a real selection (not the fallback) keeps instances visible in both views
                assert t[:k].any((1, 2)).all() and r[:k].any((1, 2)).all()


def test_same_seed_same_stream_other_seed_other_stream(source):
    make = lambda seed: episodes.instance_episodes(source[0], size=SIZE, max_instances=K, batch_size=2, seed=seed)
    a, b, c = _batches(make(0), 3), _batches(make(0), 3), _batches(make(1), 3)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert any(not np.array_equal(x["target_image"], z["target_image"]) for x, z in zip(a, c))


def test_restored_iterator_continues_exactly(source):
    ds = episodes.instance_episodes(source[0], size=SIZE, max_instances=K, batch_size=2, seed=3)
    it = episodes.iterator(ds)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    resumed = episodes.iterator(ds)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_without_augmentation_both_views_are_the_same_instances(source):
    identity = episodes.InstanceAugment(scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0.0, flip_p=0.0)
    ds = episodes.instance_episodes(source[0], size=SIZE, max_instances=K, batch_size=2, seed=0, aug=identity)
    for batch in _batches(ds, 3):
        np.testing.assert_array_equal(batch["target_masks"], batch["reference_masks"])
        np.testing.assert_array_equal(batch["target_image"], batch["reference_image"])


def test_process_shards_are_disjoint_and_cover_the_data(source):
    seen = []
    for index in range(2):
        ds = episodes.instance_episodes(source[0], size=SIZE, max_instances=K, batch_size=1, seed=0,
                                        shard_index=index, shard_count=2, num_epochs=1)
        seen.append({int(b["image_id"][0]) for b in episodes.iterator(ds)})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 16


def test_crop_boxes_and_colour_ops(rng):
    for _ in range(50):
        top, left, ch, cw = augment.random_resized_crop_box(rng, 40, 70)
        assert 0 <= top and top + ch <= 40 and 0 <= left and left + cw <= 70
    assert augment.random_resized_crop_box(rng, 10, 100, scale=(0.99, 1.0)) == (0, 43, 10, 13)  # centre fallback
    x = rng.uniform(0, 1, (8, 8, 3))
    np.testing.assert_allclose(augment._hsv_to_rgb(augment._rgb_to_hsv(x)), x, atol=1e-9)
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 1, 2] = True
    assert augment.resize_nearest(masks, (8, 8))[0].sum() == 4
