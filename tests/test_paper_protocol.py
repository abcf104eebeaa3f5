"""The paper's evaluation protocols as the original code runs them (docs/benchmarks.md): HSNet's
COCO-20i pools, the original's class names, its reference choice on LVIS-92i and COCO 2017, its
FSS-1000 ground truth and size-mismatch rule. Each test fails on the behaviour this port had before."""

import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from fake_datasets import write_coco2014_split, write_hsnet_lists
from segic_jax.data import build as build_cli
from segic_jax.data import eval_episodes
from segic_jax.data.episodes import SemanticSampler
from segic_jax.data.sources import class_names, data_source, episode_pools
from segic_jax.evaluation import benchmarks, evaluate

VAL = {"A.jpg": [0, 4], "B.jpg": [0, 4], "C.jpg": [0], "D.jpg": [0]}  # D holds class 0 but is not listed
TRAIN = {"T1.jpg": [0, 4], "T2.jpg": [0, 4], "T3.jpg": [0, 4]}  # T3 is in no training list


def _coco2014(root, rng):
    write_coco2014_split(str(root), rng, "val2014", VAL)
    write_coco2014_split(str(root), rng, "train2014", TRAIN)


@pytest.fixture(scope="module")
def hsnet_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco14")
    _coco2014(root, np.random.default_rng(0))
    splits = root / "hsnet_splits"
    write_hsnet_lists(str(splits), "val", {0: ["A.jpg", "B.jpg", "C.jpg"], 4: ["A.jpg", "B.jpg"]})
    # the training pool is the union of the four trn folds: T1 only in fold 1's list, T2 only in fold 2's
    write_hsnet_lists(str(splits), "trn", {0: ["T1.jpg", "T2.jpg"], 4: ["T1.jpg", "T2.jpg"]},
                      fold_of={"T1.jpg": 1, "T2.jpg": 2})
    data = str(root / "data")
    assert build_cli.main(["coco20i_semantic", "--manual_dir", str(root), "--splits_dir", str(splits),
                           "--data_dir", data]) == 0
    return root, data


def _ints(values):
    return [int(v) for v in values]


def _by_file(source):
    return {source[i]["file_name"].decode().split("/")[-1]: i for i in range(len(source))}


def test_coco20i_pools_are_hsnets_lists(hsnet_build):
    _, data = hsnet_build
    assert episode_pools("coco20i_semantic", data) == "hsnet"
    val = data_source("coco20i_semantic", "val", data)
    index = _by_file(val)
    pools = {name: _ints(val[i]["pool_classes"]) for name, i in index.items()}
    assert pools == {"A.jpg": [1, 5], "B.jpg": [1, 5], "C.jpg": [1], "D.jpg": []}
    episodes = eval_episodes.coco20i(val, fold=0, episodes=200, seed=0)
    used = {i for e in episodes for i in (e.query, *e.supports)}
    assert used == {index["A.jpg"], index["B.jpg"], index["C.jpg"]}  # D contains class 1, but HSNet left it out
    assert {e.class_id for e in episodes} == {1, 5}


def test_coco_semantic_training_pool_is_the_union_of_the_trn_folds(hsnet_build):
    _, data = hsnet_build
    train = data_source("coco20i_semantic", "train", data)
    index = _by_file(train)
    assert {n: _ints(train[i]["pool_classes"]) for n, i in index.items()} == {"T1.jpg": [1, 5], "T2.jpg": [1, 5], "T3.jpg": []}
    sampler = SemanticSampler(train, class_names("coco20i_semantic"), 28, 1, "class")
    rng = np.random.default_rng(0)
    drawn = [sampler.sample(rng) for _ in range(40)]
    assert {int(e["image_id"]) for e in drawn} == {index["T1.jpg"], index["T2.jpg"]}
    # the text prompt is the original's VOC-style name, not the instances JSON's "airplane"
    assert {e["class_name"] for e in drawn} == {"person", "aeroplane"}


def test_coco20i_prompts_with_the_original_names(hsnet_build):
    _, data = hsnet_build
    (unit,) = evaluate.open_units("coco20i", data, 1, [0], None)
    evaluate.prepare(unit, evaluate.Options(episodes=20), None)
    scorer = evaluate._Scorer(unit, None, 0.5)
    names = {scorer._decode(*e)[:2] for e in unit.episodes}
    assert names == {(1, "person"), (5, "aeroplane")}


def test_hsnet_list_errors_name_the_file(tmp_path, rng):
    _coco2014(tmp_path, rng)
    splits = tmp_path / "splits"
    write_hsnet_lists(str(splits), "val", {0: ["A.jpg", "E.jpg"]})
    write_hsnet_lists(str(splits), "trn", {})
    args = ["coco20i_semantic", "--manual_dir", str(tmp_path), "--splits_dir", str(splits), "--data_dir", str(tmp_path / "d")]
    with pytest.raises(ValueError, match="E.jpg"):
        build_cli.build(*args[:1], str(tmp_path), str(tmp_path / "d"), splits_dir=str(splits), progress=False)
    os.remove(splits / "coco" / "trn" / "fold2.pkl")
    with pytest.raises(ValueError, match=r"trn[/\\]fold2\.pkl"):
        build_cli.build("coco20i_semantic", str(tmp_path), str(tmp_path / "d"), splits_dir=str(splits), progress=False)
    write_hsnet_lists(str(splits), "trn", {})
    shutil.copy(splits / "coco" / "trn" / "fold1.pkl", splits / "coco" / "val" / "fold0.pkl")  # a trn list as val
    with pytest.raises(ValueError, match=r"val[/\\]fold0\.pkl lists classes .* not fold 0's val classes"):
        build_cli.build("coco20i_semantic", str(tmp_path), str(tmp_path / "d"), splits_dir=str(splits), progress=False)
    assert not os.path.isdir(tmp_path / "d" / "coco20i_semantic" / "1.1.0")


def test_without_hsnet_lists_the_results_say_it_is_not_the_papers_protocol(tmp_path, rng, capsys):
    _coco2014(tmp_path, rng)
    data = str(tmp_path / "data")
    assert build_cli.main(["coco20i_semantic", "--manual_dir", str(tmp_path), "--data_dir", data]) == 0
    assert "built without HSNet's split lists" in capsys.readouterr().out
    assert episode_pools("coco20i_semantic", data) == "present"
    val = data_source("coco20i_semantic", "val", data)
    assert {_ints(val[i]["pool_classes"]) == _ints(val[i]["classes"]) for i in range(len(val))} == {True}
    text = benchmarks.protocol("coco20i", query_as_support=True, pools="present")
    assert "NOT the paper's protocol" in text
    assert "the paper's protocol" in benchmarks.protocol("coco20i", query_as_support=True, pools="hsnet")


def _instances(categories_per_image):
    return [{"objects": {"category_id": np.asarray(c, np.int64)}} for c in categories_per_image]


def test_lvis92i_query_is_its_own_support_for_classes_in_two_images():
    # category 10 is in two images, 20 in three; sorted, fold 0 = [10], fold 1 = [20]
    source = _instances([[10, 20], [10, 20], [20], [30]])
    original = eval_episodes.lvis92i(source, fold=0, episodes=30, seed=0)
    assert all(e.supports == (e.query,) for e in original)  # the original's `_get_ref_cid`
    assert {e.query for e in original} == {0, 1}
    corrected = eval_episodes.lvis92i(source, fold=0, episodes=30, seed=0, query_as_support=False)
    assert all(e.supports == (1 - e.query,) for e in corrected)
    three = eval_episodes.lvis92i(source, fold=1, episodes=30, seed=0)  # more than one other image: never the query
    assert all(e.query not in e.supports for e in three)
    # which one a run used is part of its records' spec and of results.md's protocol text
    unit = evaluate.Unit("lvis92i", 1, 0, "lvis_instances", source)
    assert unit.spec(evaluate.Options())["query_as_support"] is True
    assert unit.spec(evaluate.Options(query_as_support=False))["query_as_support"] is False
    assert "query_as_support=True, the original's" in benchmarks.protocol("lvis92i", query_as_support=True)
    assert "query_as_support=False" in benchmarks.protocol("lvis92i", query_as_support=False)


def test_coco2017_is_image_first_with_the_originals_reference_choice():
    # category 1 in images 0, 1, 3; category 2 in images 0 and 2 only; image 4 has no annotation
    source = _instances([[1, 2, 2], [1], [2], [1], []])
    episodes = eval_episodes.coco2017(source, seed=0)
    assert [e.query for e in episodes] == [0, 1, 2, 3]  # every annotated image once, in order
    for e in episodes:
        assert e.class_id in {int(c) for c in source[e.query]["objects"]["category_id"]}
        if e.class_id == 2:  # one other image only: the original references the query itself
            assert e.supports == (e.query,)
        else:
            assert e.query not in e.supports
    drawn = {e.class_id for s in range(20) for e in eval_episodes.coco2017(source, seed=s)[:1]}
    assert drawn == {1, 2}  # the class is drawn among the image's categories
    corrected = eval_episodes.coco2017(source, seed=0, query_as_support=False)
    assert all(e.query not in e.supports for e in corrected)
    assert benchmarks.BENCHMARKS["coco2017"].dataset == "coco_instances" and "coco2017" in benchmarks.QUERY_AS_SUPPORT


def _png(array, mode=None):
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_fss1000_ground_truth_is_grayscale_at_least_128():
    mask = np.zeros((2, 3, 3), np.uint8)
    mask[0, 0] = (128, 128, 128)  # exactly 128: foreground for the original (>= 128)
    mask[0, 1] = (200, 0, 0)  # red but dark: luminance 59.8, background for the original
    mask[0, 2] = (0, 255, 0)  # luminance 149.7: foreground
    mask[1, 0] = (127, 127, 127)
    example = {"image": _png(np.zeros((2, 3, 3), np.uint8)), "mask": _png(mask), "class_name": b"cat"}
    item = eval_episodes.decode_item("fss1000", example, 0)
    np.testing.assert_array_equal(item.mask, [[True, False, True], [False, False, False]])


def test_fss1000_replaces_a_mismatched_episode_by_the_next_as_the_original_does():
    def example(cls, h, mask_h):
        return {"image": _png(np.zeros((h, 4, 3), np.uint8)), "mask": _png(np.zeros((mask_h, 4), np.uint8)),
                "class_name": cls}

    # class a: images 0-2, image 1's mask is the wrong size; class b: images 3-5, image 5's too
    source = [example(b"a", 5, 5), example(b"a", 5, 6), example(b"a", 5, 5),
              example(b"b", 5, 5), example(b"b", 5, 5), example(b"b", 7, 5)]
    bad = {1, 5}
    for seed in range(5):
        episodes = eval_episodes.fss1000(source, seed=seed)
        assert len(episodes) == 6  # every slot is kept, none crashes
        assert all(e.query not in bad and not set(e.supports) & bad for e in episodes)
        # a slot whose query (or drawn support) does not fit goes on to the next query, the last
        # slot wrapping around to the first
        assert episodes[1].query != 1 and episodes[5].query != 5
    fitting = [example(b"a", 5, 5)] * 3 + [example(b"b", 5, 5)] * 3
    assert [e.query for e in eval_episodes.fss1000(fitting, seed=0)] == list(range(6))


def test_fss1000_without_a_fitting_episode_is_an_error_not_a_hang():
    def example(h, mask_h):
        return {"image": _png(np.zeros((h, 4, 3), np.uint8)), "mask": _png(np.zeros((mask_h, 4), np.uint8)),
                "class_name": b"a"}

    # the one fitting image's only possible support does not fit: no slot can ever be filled
    with pytest.raises(ValueError, match=r"no FSS-1000 image whose mask is its size has 1 other such image"):
        eval_episodes.fss1000([example(5, 5), example(5, 6)], seed=0)
