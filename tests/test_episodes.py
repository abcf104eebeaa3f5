"""Synthetic dataset, augmentations and the grain episode pipelines."""

import numpy as np
import pytest

from fake_datasets import write_ade, build_args, fake_splits
from segic_jax.data import augment, episodes, mixture
from segic_jax.data import build as build_cli
from segic_jax.data.sources import class_names, data_source, decode_instances, decode_semantic

SIZE, K = 48, 5


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    assert build_cli.main(["synthetic_incontext/tiny", "--data_dir", str(root)]) == 0
    write_ade(str(root / "ade_files"), np.random.default_rng(0), per_split=4)
    assert build_cli.main(build_args("ade20k_semantic", str(root / "ade_files"), str(root))) == 0
    return str(root)


@pytest.fixture(scope="module")
def source(data_dir):
    return data_source("synthetic_incontext/tiny", "train", data_dir), data_source("synthetic_incontext/tiny", "test", data_dir)


@pytest.fixture(scope="module")
def ade(data_dir):
    return data_source("ade20k_semantic", "train", data_dir), class_names("ade20k_semantic")


def _stream(samplers, seed=0, batch=2, **kw):
    return episodes.episode_stream(samplers, batch_size=batch, seed=seed, samples_per_epoch=kw.pop("n", 64), **kw)


def _take(ds, n):
    it = episodes.iterator(ds)
    return [next(it) for _ in range(n)]


def _equal(a, b):
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        if x.dtype.kind in "OUS":
            assert x.tolist() == y.tolist()
        else:
            np.testing.assert_array_equal(x, y)


def test_synthetic_splits_hold_disjoint_classes(source):
    train, test = source
    names = lambda src: {n for i in range(len(src)) for n in decode_instances(src[i])["category_names"]}
    assert len(train) == 16 and len(test) == 8
    assert names(train) and names(test) and not names(train) & names(test)
    ex = decode_instances(train[0])
    assert ex["image"].shape == (64, 64, 3) and ex["masks"].shape[1:] == (64, 64) and ex["masks"].any((1, 2)).all()


def test_instance_batches_have_fixed_shapes_and_valid_prefixes(source):
    ds = _stream([episodes.InstanceSampler(source[0], SIZE, K)], batch=3)
    for batch in _take(ds, 4):
        assert batch["target_image"].shape == batch["reference_image"].shape == (3, SIZE, SIZE, 3)
        assert batch["target_masks"].shape == batch["reference_masks"].shape == (3, K, SIZE, SIZE)
        assert batch["is_instance"].all() and list(batch["class_name"]) == ["", "", ""]
        for valid, t, r in zip(batch["valid"], batch["target_masks"], batch["reference_masks"]):
            k = int(valid.sum())
            assert k >= 1 and valid[:k].all() and not valid[k:].any()
            assert not t[k:].any() and not r[k:].any()
            if k > 1:  # a real selection (not the fallback) keeps instances visible in both views
                assert t[:k].any((1, 2)).all() and r[:k].any((1, 2)).all()


def test_same_seed_same_stream_other_seed_other_stream(source):
    make = lambda seed: _stream([episodes.InstanceSampler(source[0], SIZE, K)], seed=seed)
    a, b, c = _take(make(0), 3), _take(make(0), 3), _take(make(1), 3)
    for x, y in zip(a, b):
        _equal(x, y)
    assert any(not np.array_equal(x["target_image"], z["target_image"]) for x, z in zip(a, c))


def test_restored_iterator_continues_exactly(source, ade):
    samplers = [episodes.InstanceSampler(source[0], SIZE, K), episodes.SemanticSampler(*ade, SIZE, K, rule="image")]
    ds = _stream(samplers, seed=3)
    it = episodes.iterator(ds)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    resumed = episodes.iterator(ds)
    resumed.set_state(state)
    for want in expected:
        _equal(next(resumed), want)


def test_without_augmentation_both_views_are_the_same_instances(source):
    identity = episodes.InstanceAugment(scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0.0, flip_p=0.0)
    for batch in _take(_stream([episodes.InstanceSampler(source[0], SIZE, K, identity)]), 3):
        np.testing.assert_array_equal(batch["target_masks"], batch["reference_masks"])
        np.testing.assert_array_equal(batch["target_image"], batch["reference_image"])


def test_each_process_reads_its_rows_of_the_single_process_batches(source):
    sampler = episodes.InstanceSampler(source[0], SIZE, K)
    whole = _take(_stream([sampler], batch=4, n=12, num_epochs=1), 3)
    # process 0 and 1 of a job whose devices hold rows 0-1 and 2-3; an uneven split reads rows 3 and 0
    for rows in ([0, 1], [2, 3], [3, 0]):
        part = _take(_stream([sampler], batch=4, n=12, num_epochs=1, rows=rows), 3)
        for batch, mine in zip(whole, part):
            for key in batch:
                np.testing.assert_array_equal(mine[key], batch[key][rows], err_msg=key)
    assert not np.array_equal(whole[0]["target_image"][0], whole[0]["target_image"][1])
    with pytest.raises(ValueError, match=r"rows must be distinct positions in a batch of 4, got \[1, 4\]"):
        _stream([sampler], batch=4, rows=[1, 4])


def test_semantic_episodes_pair_two_images_of_one_class(ade):
    source, names = ade
    sampler = episodes.SemanticSampler(source, names, SIZE, K, rule="image")
    rng = np.random.default_rng(0)
    for _ in range(20):
        t, r, cls = sampler._pick(rng)
        assert cls in decode_semantic(source[t])["classes"] and cls in decode_semantic(source[r])["classes"]
        assert t != r or len(sampler.images_of[cls]) == 1
    # class 5 is in every image, classes 1..4 in one image each: a lone class pairs its image with itself
    assert len(sampler.images_of[5]) == 4 and all(len(sampler.images_of[c]) == 1 for c in (1, 2, 3, 4))
    for batch in _take(_stream([sampler], batch=4), 3):
        assert not batch["is_instance"].any() and set(batch["class_name"]) <= set(names)
        assert (batch["valid"].sum(1) == 1).all()
        for hw, image in zip(batch["target_hw"], batch["target_image"]):
            assert 1 <= hw[0] <= SIZE and 1 <= hw[1] <= SIZE
            assert not image[hw[0]:].any() and not image[:, hw[1]:].any()  # padding outside the valid extent


def test_mixture_follows_its_weights(source, ade):
    samplers = [episodes.InstanceSampler(source[0], SIZE, K), episodes.SemanticSampler(*ade, SIZE, K, rule="class")]
    ds = episodes.episode_stream(samplers, batch_size=None, seed=0, samples_per_epoch=200, weights=[3, 1], num_epochs=1)
    share = np.mean([bool(e["is_instance"]) for e in episodes.iterator(ds)])
    assert 0.65 < share < 0.85
    with pytest.raises(ValueError, match="one non-negative weight per sampler"):
        episodes.episode_stream(samplers, batch_size=2, seed=0, samples_per_epoch=10, weights=[1])


def test_large_scale_jitter_keeps_aspect_unless_asked(rng):
    image = np.ones((40, 80, 3), np.float32)
    mask = np.full((40, 80), 255.0, np.float32)
    for _ in range(10):
        out, m, hw = episodes.large_scale_jitter(rng, image, mask, 64, (0.5, 1.0))
        assert hw[1] >= hw[0] and (m[: hw[0], : hw[1]] > 127.5).all() and not m[hw[0]:].any()
    _, _, hw = episodes.large_scale_jitter(rng, image, mask, 64, (0.5, 0.5), square=True)
    assert tuple(hw) == (32, 32)


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


def test_worker_processes_give_the_same_stream(source):
    ds = _stream([episodes.InstanceSampler(source[0], SIZE, K)], seed=5)
    in_process = _take(ds, 3)
    it = episodes.iterator(ds, workers=1)
    for want in in_process:
        _equal(next(it), want)


def test_paper_mixture_from_the_four_built_datasets(tmp_path):
    from fake_datasets import write_coco, write_coco2014, write_lvis

    rng = np.random.default_rng(1)
    data = str(tmp_path / "data")
    write_coco2014(str(tmp_path / "coco14"), rng)
    write_ade(str(tmp_path / "ade"), rng)
    write_coco(str(tmp_path / "coco"), rng)
    write_lvis(str(tmp_path / "lvis"), rng)
    import os

    os.rename(tmp_path / "lvis" / "lvis_v1_val.json", tmp_path / "lvis" / "lvis_v1_train.json")
    for name, files in (("coco20i_semantic", "coco14"), ("ade20k_semantic", "ade"), ("coco_instances", "coco"), ("lvis_instances", "lvis")):
        split = "train" if name == "lvis_instances" else None  # its annotations were renamed to the train file
        assert build_cli.main(build_args(name, str(tmp_path / files), data, split)) == 0
    samplers = mixture.samplers(data, SIZE, K, mixture.parts(mixture.PAPER))
    ds = episodes.episode_stream(samplers, batch_size=4, seed=0, samples_per_epoch=40, num_epochs=1)
    batches = list(episodes.iterator(ds))
    assert len(batches) == 10
    kinds = np.concatenate([b["is_instance"] for b in batches])
    assert 0 < kinds.mean() < 1  # semantic and instance episodes mixed
    names = {n for b in batches for n in b["class_name"]}
    assert "" in names and names - {""}  # instance episodes carry no class name, semantic ones do
