"""Benchmark evaluation (segic_jax/evaluation/evaluate.py): metric plumbing on constructed
predictions, resuming and sharding without changing a number, seeded episode lists, the configs
end to end on a tiny random SEGIC, and errors that name what is wrong."""

import hashlib
import importlib.util
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from segic_jax.data import build as build_cli
from segic_jax.data import eval_episodes
from segic_jax.data.sources import class_names, data_source, decode_image, decode_instances, decode_semantic
from segic_jax.evaluation.evaluate import evaluate, run
from segic_jax.inference.predictor import Context, Prediction, Predictor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = "synthetic_incontext/tiny"


def _eval_config(variant):
    spec = importlib.util.spec_from_file_location("eval_config", os.path.join(ROOT, "configs", "eval.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def _key(image):
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


# --- metric plumbing with constructed predictions ---------------------------------------------


def _truth(data_dir):
    """{image key: {class name: (mask, void)}} for every evaluated image, derived here from the
    decoded examples with each protocol's own definition."""
    table = {}
    for ex in (data_source("fss1000", "test", data_dir)[i] for i in range(len(data_source("fss1000", "test", data_dir)))):
        name = ex["class_name"].decode() if isinstance(ex["class_name"], bytes) else ex["class_name"]
        table[_key(decode_image(ex["image"]))] = {name: (decode_image(ex["mask"])[..., 0] > 128, None)}
    lvis = data_source("lvis_instances", "val", data_dir)
    for i in range(len(lvis)):
        d = decode_instances(lvis[i])
        table[_key(d["image"])] = {n: (d["masks"][[m == n for m in d["category_names"]]].any(0), None) for n in set(d["category_names"])}
    names = class_names("ade20k_semantic")
    ade = data_source("ade20k_semantic", "val", data_dir)
    for i in range(len(ade)):
        d = decode_semantic(ade[i])
        table[_key(d["image"])] = {names[c - 1]: (d["label"] == c, d["label"] == 255) for c in range(1, 151)}
    return table


class FakePredictor:
    """Predicts from a ground-truth table instead of a model. mode: "truth" (masks = GT, and the
    propagated mask 0.7 on the GT, 0 elsewhere), "truth+void" (also foreground on every void
    pixel), "empty", or "only:<class>" (GT for that class, empty for the others)."""

    image_size = 112

    def __init__(self, truth, mode="truth"):
        self.truth, self.mode = truth, mode
        self.references, self.decoded = [], []

    def encode_context(self, images, masks, class_names=None, instance_prompt=False, binarize=True):
        self.references += [_key(im) for im in images]
        k = len(class_names)
        return Context(features=jnp.zeros((k, 1)), text=jnp.zeros((k, 1)), prompts=tuple(class_names))

    def segment(self, targets, context):
        out = []
        for image in targets:
            table = self.truth[_key(image)]
            self.decoded.append((_key(image), context.prompts))
            masks = []
            for name in context.prompts:
                gt, void = table[name]
                if self.mode == "empty" or self.mode.startswith("only:") and name != self.mode[5:]:
                    gt = np.zeros_like(gt)
                if self.mode == "truth+void":
                    gt = gt | void
                masks.append(gt)
            masks = np.stack(masks)
            out.append(Prediction(logits=np.where(masks, 1.0, -1.0), masks=masks, similarity=0.7 * masks,
                                  points=np.zeros((len(masks), 2))))
        return out

    def segment_episodes(self, episodes, binarize=True):  # what Predictor.segment_episodes equals
        for e in episodes:
            context = self.encode_context([e.reference], [e.masks], class_names=e.class_names, binarize=binarize)
            yield from self.segment([e.target], context)


def test_ground_truth_scores_100_and_empty_scores_0(eval_data_dir):
    truth = _truth(eval_data_dir)
    perfect = evaluate(FakePredictor(truth), "fss1000", eval_data_dir, progress=False)
    assert perfect["episodes"] == 6 and perfect["complete"]
    assert perfect["miou"] == perfect["fb_iou"] == perfect["baseline_miou"] == 100.0
    assert sorted(v["name"] for v in perfect["classes"].values()) == ["d_cls", "e_cls"]
    empty = evaluate(FakePredictor(truth, "empty"), "fss1000", eval_data_dir, progress=False)
    assert empty["miou"] == empty["baseline_miou"] == 0.0
    # each 20x20 mask has 8x12 foreground pixels: background IoU 304/400, foreground 0
    assert empty["fb_iou"] == pytest.approx(100 * (0 + 304 / 400) / 2)
    # the baseline thresholds the propagated mask (0.7 on the object), not the prediction
    strict = evaluate(FakePredictor(truth), "fss1000", eval_data_dir, baseline_threshold=0.8, progress=False)
    assert strict["miou"] == 100.0 and strict["baseline_miou"] == 0.0


def test_folds_are_scored_separately_and_averaged(eval_data_dir):
    truth = _truth(eval_data_dir)
    # fake LVIS: three categories seen in two images, one per fold 0..2 (folds 3..9 are empty)
    scores = evaluate(FakePredictor(truth, "only:person"), "lvis92i", eval_data_dir, fold=(0, 1, 2), episodes=5, progress=False)
    assert [scores["folds"][f]["miou"] for f in "012"] == [100.0, 0.0, 0.0]
    assert scores["miou"] == pytest.approx(100 / 3) and scores["episodes"] == 15
    assert scores["folds"]["0"]["classes"] == {"1": {"name": "person", "iou": 100.0, "baseline_iou": 100.0}}
    single = evaluate(FakePredictor(truth), "lvis92i", eval_data_dir, fold=2, episodes=5, progress=False)
    assert list(single["folds"]) == ["2"] and single["miou"] == 100.0
    with pytest.raises(ValueError, match="no class of LVIS-92i fold 3"):
        evaluate(FakePredictor(truth), "lvis92i", eval_data_dir, episodes=5, progress=False)


def test_void_pixels_are_not_scored_and_only_present_classes_are_decoded(eval_data_dir):
    truth = _truth(eval_data_dir)
    fake = FakePredictor(truth, "truth+void")  # foreground on all void pixels, for every class
    scores = evaluate(fake, "ade20k", eval_data_dir, progress=False)
    assert scores["miou"] == scores["fb_iou"] == 100.0 and scores["episodes"] == 3
    names = class_names("ade20k_semantic")
    val = data_source("ade20k_semantic", "val", eval_data_dir)
    present = {_key(d["image"]): {names[c - 1] for c in d["classes"]} for d in (decode_semantic(val[i]) for i in range(len(val)))}
    assert {k: set(p) for k, p in fake.decoded} == present  # jointly, only the GT's classes
    assert sorted(int(c) for c in scores["classes"]) == [1, 2, 3, 5]
    train = data_source("ade20k_semantic", "train", eval_data_dir)
    train_keys = {_key(decode_semantic(train[i])["image"]) for i in range(len(train))}
    assert set(fake.references) <= train_keys and len(fake.references) == 4  # one reference per class, encoded once
    assert evaluate(FakePredictor(truth, "empty"), "ade20k", eval_data_dir, progress=False)["miou"] == 0.0


# --- resuming, sharding, episode lists ------------------------------------------------------


class Counting:
    """Wraps a predictor, counting segment calls and episodes, optionally failing at call `fail_at`."""

    def __init__(self, inner, fail_at=None):
        self.inner, self.fail_at, self.calls = inner, fail_at, 0
        self.image_size = inner.image_size

    def encode_context(self, *args, **kwargs):
        return self.inner.encode_context(*args, **kwargs)

    def segment(self, targets, context):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt("stopped")
        return self.inner.segment(targets, context)

    def segment_episodes(self, episodes, binarize=True):
        for pred in self.inner.segment_episodes(episodes, binarize=binarize):
            self.calls += 1
            if self.calls == self.fail_at:
                raise KeyboardInterrupt("stopped")
            yield pred


def test_sharded_and_resumed_runs_give_exactly_the_unsharded_numbers(eval_data_dir, predictor, tmp_path):
    kw = dict(dataset=SYNTHETIC, episodes=9, chunk_size=2, progress=False)
    whole = evaluate(predictor, "synthetic", eval_data_dir, **kw)
    assert whole["complete"] and whole["episodes"] == 9 and 0 < whole["miou"] < 100

    shared = str(tmp_path / "sharded")
    first = evaluate(predictor, "synthetic", eval_data_dir, workdir=shared, shard_index=1, shard_count=2, **kw)
    assert first == {"benchmark": "synthetic", "shots": 1, "complete": False, "episodes_done": 4, "episodes_total": 9}
    second = Counting(predictor)
    assert evaluate(second, "synthetic", eval_data_dir, workdir=shared, shard_index=0, shard_count=2, **kw) == whole
    assert second.calls == 5
    merge = Counting(predictor, fail_at=1)  # everything is recorded: nothing is evaluated again
    assert evaluate(merge, "synthetic", eval_data_dir, workdir=shared, **kw) == whole

    resumed = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        evaluate(Counting(predictor, fail_at=6), "synthetic", eval_data_dir, workdir=resumed, **kw)
    records = os.path.join(resumed, "records", "synthetic", "1shot")
    assert len([f for f in os.listdir(records) if f.startswith("chunk-")]) == 2  # two whole chunks of 2
    assert not [f for f in os.listdir(records) if f.startswith(".")]  # no partial file
    rest = Counting(predictor)
    assert evaluate(rest, "synthetic", eval_data_dir, workdir=resumed, **kw) == whole
    assert rest.calls == 5

    with pytest.raises(ValueError, match="holds records of a different evaluation.*seed: 0 there, 1 now"):
        evaluate(predictor, "synthetic", eval_data_dir, workdir=resumed, **{**kw, "seed": 1})


def test_episode_lists_are_seeded(eval_data_dir):
    source = data_source(SYNTHETIC, "test", eval_data_dir)
    a = eval_episodes.synthetic(source, episodes=20, seed=0)
    assert a == eval_episodes.synthetic(source, episodes=20, seed=0) != eval_episodes.synthetic(source, episodes=20, seed=1)
    for e in a:
        ids = [list(source[i]["objects"]["category_id"]) for i in (e.query, *e.supports)]
        assert all(e.class_id in x for x in ids) and e.query not in e.supports
    assert eval_episodes.subset(10, 4, 0) == eval_episodes.subset(10, 4, 0) and len(eval_episodes.subset(10, 4, 0)) == 4
    assert eval_episodes.subset(10, 0, 0) == eval_episodes.subset(10, 99, 0) == list(range(10))

    train = data_source("ade20k_semantic", "train", eval_data_dir)
    labels = [decode_semantic(train[i])["label"] for i in range(len(train))]
    picks = eval_episodes.ade20k_references(train, seed=0)
    assert picks == eval_episodes.ade20k_references(train, seed=0) and sorted(picks) == [1, 2, 3, 5]
    assert all((labels[i] == c).mean() >= 0.05 for c, i in picks.items())
    # no image has class 5 on 99% of it: the one where it covers the most is taken
    fallback = eval_episodes.ade20k_references(train, seed=0, min_area=0.99)
    assert fallback[5] == int(np.argmax([(label == 5).mean() for label in labels]))


# --- configs end to end -----------------------------------------------------------------------


def test_synthetic_and_ade20k_config_end_to_end(eval_data_dir, checkpoint, tmp_path):
    config = _eval_config("synthetic")
    config.checkpoint, config.data_dir = checkpoint, eval_data_dir
    config.benchmarks = ("synthetic", "ade20k")
    workdir = str(tmp_path / "run")
    results = run(config, workdir)
    assert results["complete"]
    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    synthetic = saved["benchmarks"]["synthetic"]["1-shot"]
    assert synthetic["episodes"] == 16 and 0 <= synthetic["miou"] <= 100 and 0 <= synthetic["baseline_miou"] <= 100
    assert saved["benchmarks"]["ade20k"]["1-shot"]["episodes"] == 3
    assert sorted(saved["benchmarks"]["ade20k"]["1-shot"]["classes"]) == ["1", "2", "3", "5"]
    assert saved["config"]["benchmarks"] == ["synthetic", "ade20k"] and saved["model"]["image_size"] == 112
    assert {"synthetic", "ade20k", "baseline"} <= set(saved["protocols"])
    markdown = open(os.path.join(workdir, "results.md")).read()
    assert f"| synthetic | 1-shot | {synthetic['miou']:.2f} |" in markdown
    for name in ("synthetic_1shot.png", "ade20k_1shot.png"):
        assert Image.open(os.path.join(workdir, "plots", name)).size[0] > 100
    # a rerun finds every episode recorded and writes the same numbers
    again = run(config, workdir)
    assert again["benchmarks"] == saved["benchmarks"]


def test_classes_encoded_apart_and_concatenated_equal_a_joint_context(predictor, rng):
    images = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(2)]
    masks = [np.zeros((60, 80), bool) for _ in range(2)]
    masks[0][10:40, 5:30] = True
    masks[1][20:50, 40:70] = True
    apart = Context.concatenate([predictor.encode_context([im], [m], class_names=[n], binarize=False)
                                 for im, m, n in zip(images, masks, ("cat", "dog"))])
    stacks = [np.stack([masks[0], np.zeros_like(masks[0])]), np.stack([np.zeros_like(masks[1]), masks[1]])]
    joint = predictor.encode_context(images, stacks, class_names=["cat", "dog"], binarize=False)
    assert apart.prompts == joint.prompts == ("a photo of a cat", "a photo of a dog")
    np.testing.assert_allclose(np.asarray(apart.features), np.asarray(joint.features), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(apart.text), np.asarray(joint.text), rtol=1e-6)


@pytest.mark.parametrize(
    "change,error,message",
    [
        (dict(benchmarks=("synthetic", "pascal5i")), ValueError, "unknown benchmark 'pascal5i'"),
        (dict(checkpoint=""), ValueError, "set --config.checkpoint"),
        (dict(checkpoint="/nonexistent/ckpt"), FileNotFoundError, "/nonexistent/ckpt is not a converted SEGIC checkpoint"),
        (dict(data_dir="/nonexistent/data"), FileNotFoundError, "synthetic_incontext/tiny is not built under /nonexistent/data"),
        (dict(benchmarks=("fss1000", "ade20k", "coco20i")), FileNotFoundError, "coco20i_semantic is not built under"),
        (dict(benchmarks=("lvis92i",), folds=(10,)), ValueError, "lvis92i has folds 0..9, not \\[10\\]"),
        (dict(shard_index=2, shard_count=2), ValueError, "shard_index must be in 0..shard_count-1"),
        (dict(image_size=896), ValueError, "converted for 112 px"),
        (dict(dtype="float16"), ValueError, "config.dtype must be one of"),
    ],
)
def test_bad_input_is_named_and_writes_nothing(eval_data_dir, checkpoint, tmp_path, change, error, message):
    config = _eval_config("synthetic")
    config.checkpoint, config.data_dir = checkpoint, eval_data_dir
    config.update(change)
    workdir = str(tmp_path / "run")
    with pytest.raises(error, match=message):
        run(config, workdir)
    assert not os.path.exists(workdir)


def test_evaluate_checks_its_arguments(eval_data_dir):
    fake = FakePredictor({})
    with pytest.raises(ValueError, match="unknown benchmark 'coco'"):
        evaluate(fake, "coco", eval_data_dir)
    with pytest.raises(ValueError, match="ade20k uses one reference per class"):
        evaluate(fake, "ade20k", eval_data_dir, shots=5)
    with pytest.raises(ValueError, match="sharding needs a workdir"):
        evaluate(fake, "fss1000", eval_data_dir, shard_count=2)
    with pytest.raises(ValueError, match="fewer than the 3 shots"):
        evaluate(fake, "fss1000", eval_data_dir, shots=3)


def test_coco20i_runs_end_to_end_on_its_real_layout(predictor, tmp_path):
    import shutil

    from fake_datasets import write_coco2014

    coco = tmp_path / "coco14"
    write_coco2014(str(coco), np.random.default_rng(0))
    shutil.copytree(coco / "train2014", coco / "val2014")  # the same two images as the val split
    shutil.copy(coco / "annotations" / "instances_train2014.json", coco / "annotations" / "instances_val2014.json")
    data = str(tmp_path / "data")
    build_cli.build("coco20i_semantic", str(coco), data)  # both splits
    # fold 1 holds class 6, the only class in both images
    scores = evaluate(predictor, "coco20i", data, fold=1, episodes=4, progress=False)
    assert set(scores["folds"]) == {"1"} and scores["episodes"] == 4
    assert scores["folds"]["1"]["classes"].keys() == {"6"}
    assert 0 <= scores["miou"] <= 100 and 0 <= scores["fb_iou"] <= 100 and 0 <= scores["baseline_miou"] <= 100
    with pytest.raises(ValueError, match="no class of COCO-20i fold 0 has 2 images"):
        evaluate(predictor, "coco20i", data, fold=0, episodes=4, progress=False)
