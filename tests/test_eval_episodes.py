"""Fixed evaluation episode lists: deterministic, and following their protocols."""

import numpy as np
import pytest

from fake_datasets import write_coco2014, build_args
from segic_jax.data import build as build_cli
from segic_jax.data import eval_episodes
from segic_jax.data.sources import data_source


def test_fss_every_test_image_is_a_query_once(eval_data_dir):
    source = data_source("fss1000", "test", eval_data_dir)
    a = eval_episodes.fss1000(source, shots=2, seed=0)
    assert sorted(e.query for e in a) == list(range(len(source)))
    for e in a:
        assert len(set(e.supports)) == 2 and e.query not in e.supports
        assert {source[i]["class_name"] for i in e.supports} == {source[e.query]["class_name"]}
    assert a == eval_episodes.fss1000(source, shots=2, seed=0)
    assert a != eval_episodes.fss1000(source, shots=2, seed=1)
    (query_image, query_mask), *supports = eval_episodes.query_and_supports("fss1000", source, a[0])
    assert query_image.shape == (20, 20, 3) and query_mask.any() and len(supports) == 2
    with pytest.raises(ValueError, match="fewer than the 3 shots"):
        eval_episodes.fss1000(source, shots=3)


def test_lvis92i_folds_use_categories_seen_in_several_images(eval_data_dir):
    source = data_source("lvis_instances", "val", eval_data_dir)
    episodes = eval_episodes.lvis92i(source, fold=0, episodes=50, seed=0, query_as_support=False)
    assert len(episodes) == 50 and {e.class_id for e in episodes} == {1}  # categories [1, 2, 3][0::10]
    for e in episodes:
        assert e.query != e.supports[0]
    # category 1 is in the two annotated images: the original's sampling references the query itself
    assert all(e.supports == (e.query,) for e in eval_episodes.lvis92i(source, fold=0, episodes=20, seed=0))
    (image, mask), (ref_image, ref_mask) = eval_episodes.query_and_supports("lvis92i", source, episodes[0])
    assert mask.shape == image.shape[:2] and mask.any() and ref_mask.any()
    assert {e.class_id for e in eval_episodes.lvis92i(source, fold=2, episodes=5)} == {3}
    with pytest.raises(ValueError, match="no class of LVIS-92i fold 3"):
        eval_episodes.lvis92i(source, fold=3, episodes=5)  # three categories fill folds 0..2 only


def test_coco20i_folds_take_interleaved_classes(tmp_path):
    rng = np.random.default_rng(0)
    write_coco2014(str(tmp_path / "coco14"), rng)
    assert build_cli.main(build_args("coco20i_semantic", str(tmp_path / "coco14"), str(tmp_path / "data"))) == 0
    source = data_source("coco20i_semantic", "train", str(tmp_path / "data"))
    # class 6 (index 5, fold 1) is in both images; class 1 (fold 0) in one image only
    episodes = eval_episodes.coco20i(source, fold=1, episodes=10, seed=0)
    assert {e.class_id for e in episodes} == {6} and all(e.query != e.supports[0] for e in episodes)
    with pytest.raises(ValueError, match="no class of COCO-20i fold 0 has 2 images"):
        eval_episodes.coco20i(source, fold=0, episodes=10)
    with pytest.raises(ValueError, match="fold must be 0..3"):
        eval_episodes.coco20i(source, fold=4)


def test_fss1000_mismatch_is_replaced_by_the_originals_next_item(tmp_path, rng):
    """The original (`DatasetFSS`) lists classes sorted and each class's paths sorted as strings, and
    replaces an episode whose mask differs in size from its image by item `idx + 1` of that list:
    here the last image of `ant` (3.jpg, after 1, 10, 2) by the first of `zebra`, the next class."""
    from PIL import Image

    from fake_datasets import _jpeg, write_fss

    root = tmp_path / "fss"
    # test.txt lists zebra before ant; the original sorts the class names
    write_fss(str(root), rng, classes=("a_trn", "b_trn", "c_val", "zebra", "ant"))
    _jpeg(str(root / "ant" / "10.jpg"), rng, 20, 20)
    Image.fromarray(np.full((20, 20), 255, np.uint8)).save(root / "ant" / "10.png")
    Image.fromarray(np.zeros((24, 20), np.uint8)).save(root / "ant" / "3.png")  # not its image's 20 x 20
    assert build_cli.main(build_args("fss1000", str(root), str(tmp_path / "data"), split="test")) == 0
    source = data_source("fss1000", "test", str(tmp_path / "data"))
    files = [source[i]["file_name"].decode() for i in range(len(source))]
    order = [files[i] for i in eval_episodes.original_order([source[i] for i in range(len(source))])]
    assert order == ["ant/1.jpg", "ant/10.jpg", "ant/2.jpg", "ant/3.jpg", "zebra/1.jpg", "zebra/2.jpg", "zebra/3.jpg"]
    for seed in range(4):
        episodes = eval_episodes.fss1000(source, seed=seed)
        assert len(episodes) == 7
        assert files[episodes[3].query] == "zebra/1.jpg"  # the slot of ant/3.jpg
        assert all(files[e.query] == name for e, name in zip(episodes[4:], order[4:]))
        assert all(files.index("ant/3.jpg") not in (e.query, *e.supports) for e in episodes)
