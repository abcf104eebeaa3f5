"""Zero-shot video object segmentation: the per-frame step against a torch transcription of the
reference's forward_vos, known answers, the DAVIS and YouTube-VOS output layouts, scoring, resume."""

import os
import shutil
import zipfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image

from fake_datasets import write_davis, write_youtube_vos, build_args, fake_splits
from segic_jax import checkpoints
from segic_jax.conversion import segic as segic_conversion
from segic_jax.conversion.core import apply_rules
from segic_jax.data import build as build_cli
from segic_jax.evaluation import vos
from segic_jax.evaluation.metrics import davis_summary, davis_video
from segic_jax.inference import video
from segic_jax.inference.predictor import Predictor
from segic_jax.models import clip_text, dinov2, segic
from segic_jax.models.segic import SegicHead
from torch_reference import TorchSegicHead

SIZE = 112  # model input; feature grid 8
TOL = 1e-4


@pytest.fixture(scope="module")
def torch_head():
    return TorchSegicHead(vision_dim=32, text_dim=16, grid=8, image_size=SIZE, seed=3)


@pytest.fixture(scope="module")
def predictor(torch_head):
    """A tiny random SEGIC: the torch head converted, random DINOv2 and CLIP text encoders."""
    state = {k: v.numpy() for k, v in torch_head.state_dict().items()}
    config = segic.SegicConfig.from_dict({**segic_conversion.config_from_tensors(state, "test").to_dict(), "image_size": SIZE})
    params = apply_rules(state, segic_conversion.HEAD_RULES, checkpoints.param_shapes(SegicHead, config), progress=False)
    head = checkpoints.build_model(SegicHead, config, params)
    encoder = dinov2.Dinov2(dinov2.dinov2_config("vits14", embed_dim=32, depth=1, num_heads=2, pos_grid=8), rngs=nnx.Rngs(1))
    text = clip_text.ClipTextModel(
        clip_text.ClipTextConfig(vocab_size=514, width=16, depth=1, num_heads=2, mlp_dim=32, eos_token_id=513), rngs=nnx.Rngs(2)
    )
    return Predictor(head, encoder, text, clip_text.ClipTokenizer.bytes_only())


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    write_davis(str(root / "raw"), np.random.default_rng(1))
    assert build_cli.main(build_args("davis2017", str(root / "raw"), str(root / "data"))) == 0
    return root


@pytest.fixture(scope="module")
def davis_run(predictor, davis):
    out = davis / "out"
    return out, vos.evaluate_davis2017(predictor, str(davis / "data"), str(out))


def _video_features(rng, n, frames, c):
    """Frames that resemble the first one (feature grid 8 x 8 for SIZE) and n object masks in it.

    The objects stay clear of the borders: there bilinear upsampling repeats the edge values, the
    similarity peak is a tie of several pixels, and which one wins is float noise (docs/original.md
    6). A corner block has norms under the 1e-4 clamp of the video path, so its eps matters."""
    first = rng.standard_normal((8, 8, c)).astype(np.float32)
    feats = first + 0.3 * rng.standard_normal((frames, 8, 8, c)).astype(np.float32)
    feats[0] = first
    feats[1:, 5:, :3] *= 1e-6
    masks = np.zeros((n, SIZE, SIZE), bool)
    for j in range(n):
        y, x = rng.integers(14, 40), rng.integers(45, 60)
        masks[j, y : y + 30, x : x + 35] = True
    return feats, masks


def test_frame_steps_match_the_reference_forward_vos(predictor, torch_head, rng):
    n, frames, c = 3, 4, 32  # frame 3 is the first decoded from [first, latest] of three entries
    feats, masks = _video_features(rng, n, frames, c)
    text = rng.standard_normal(16).astype(np.float32)
    args = (torch.from_numpy(feats).permute(0, 3, 1, 2), torch.from_numpy(masks.astype(np.float32)), torch.from_numpy(text))
    expected = torch_head.propagate_vos(*args).numpy()

    propagator = video.VideoPropagator(predictor)  # first_latest
    memory = propagator.start(n, c)
    assert memory.features.shape == (4, 2, c)  # objects padded to the bucket; [first, latest]
    _, memory = propagator.step(memory, jnp.asarray(feats[0]), jnp.asarray(text), np.ones(n, bool), masks)
    got = []
    for t in range(1, frames):
        logits, memory = propagator.step(memory, jnp.asarray(feats[t]), jnp.asarray(text))
        got.append(np.asarray(logits[:n]))
    got = np.stack(got)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)
    assert ((expected > 0).mean() > 0.01) and ((expected < 0).mean() > 0.01)  # masks are neither empty nor full
    # The comparison sees each rule: breaking one in the transcription moves the logits far more.
    for broken, upto in ((dict(eps=1e-8), 2), (dict(negative_label=1), 2), (dict(memory="all"), frames)):
        other = torch_head.propagate_vos(args[0][:upto], *args[1:], **broken).numpy()
        assert np.abs(other - got[: upto - 1]).max() > 100 * TOL, broken


def test_memory_policies_keep_the_right_entries():
    def run(spec, entries=5):
        policy = video.MemoryPolicy.parse(spec)
        memory = video.VideoMemory(jnp.zeros((2, policy.slots, 1)), jnp.zeros((2, policy.slots), bool))
        for e in range(1, entries + 1):  # object 1 joins at entry 3
            memory = video.remember(memory, jnp.full((2, 1), float(e)), jnp.asarray([True, e >= 3]), policy)
        return [[float(f) for f, v in zip(memory.features[o, :, 0], memory.valid[o]) if v] for o in range(2)]

    assert run("first_latest") == [[1, 5], [3, 5]]
    assert run("first_latest", entries=1) == [[1], []]
    assert run("first") == [[1], [3]]
    assert run("first_last3") == [[1, 3, 4, 5], [3, 4, 5]]
    assert run("last2") == [[4, 5], [4, 5]]
    assert run("last4") == [[2, 3, 4, 5], [3, 4, 5]]
    with pytest.raises(ValueError, match="unknown memory policy 'latest'"):
        video.MemoryPolicy.parse("latest")


def test_still_video_of_one_object_is_the_image_predictor_on_every_frame(predictor, rng):
    # One object, one reference: the video prompts (cross-instance points and tokens, eps 1e-4)
    # reduce to the image predictor's with the instance prompt.
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    labels = np.zeros((40, 56), np.uint8)
    labels[8:30, 10:35] = 3
    context = predictor.encode_context([image], [labels == 3], instance_prompt=True)
    (expected,) = predictor.segment([image], context)
    out = list(video.VideoPropagator(predictor, "first").segment([image] * 4, {0: labels}, [3]))
    np.testing.assert_array_equal(out[0].labels, labels)
    assert out[0].annotated == (3,) and out[0].propagated == ()
    decided = np.abs(expected.logits[0]) > TOL
    assert decided.mean() > 0.99 and 0.01 < expected.masks[0].mean() < 0.99
    for frame in out[1:]:
        assert frame.propagated == (3,) and frame.annotated == ()
        np.testing.assert_array_equal(frame.labels, out[1].labels)  # memory "first": every frame alike
        np.testing.assert_array_equal((frame.labels == 3)[decided], expected.masks[0][decided])
        assert set(np.unique(frame.labels)) <= {0, 3}


def test_late_objects_enter_the_memory_where_first_annotated(predictor, rng):
    frames = [rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) for _ in range(5)]
    first = np.zeros((30, 40), np.uint8)
    first[2:12, 3:15] = 7
    later = np.zeros((30, 40), np.uint8)
    later[15:28, 20:38] = 4
    later[0:2, 0:2] = 7  # a given mask overrides the prediction of an object already tracked
    out = list(video.VideoPropagator(predictor).segment(frames, {0: first, 2: later}, [7, 4]))
    assert [f.annotated for f in out] == [(7,), (), (4, 7), (), ()]
    assert [f.propagated for f in out] == [(), (7,), (), (4, 7), (4, 7)]
    np.testing.assert_array_equal(out[0].labels, first)
    np.testing.assert_array_equal(out[2].labels, later)
    assert all(set(np.unique(f.labels)) <= {0, 4, 7} for f in out)
    assert not any((f.labels == 4).any() for f in out[:2])


def test_davis_pngs_are_written_in_the_official_layout_and_scored(davis, davis_run):
    out, scores = davis_run
    raw = davis / "raw"
    per_video = {}
    for name, ids in (("bear", {1}), ("dogs", {1, 2})):
        gt_paths = sorted((raw / "Annotations" / "480p" / name).iterdir())
        pred_paths = sorted((out / name).iterdir())
        assert [p.name for p in pred_paths] == [p.name for p in gt_paths] == [f"{t:05d}.png" for t in range(4)]
        palette = Image.open(gt_paths[0]).getpalette()
        for p in pred_paths:
            img = Image.open(p)
            assert img.mode == "P" and img.getpalette() == palette and img.size == (32, 24)
            assert set(np.unique(np.asarray(img))) <= {0} | ids
        np.testing.assert_array_equal(np.asarray(Image.open(pred_paths[0])), np.asarray(Image.open(gt_paths[0])))
        gt = np.stack([np.asarray(Image.open(p)) for p in gt_paths])
        pred = np.stack([np.asarray(Image.open(p)) for p in pred_paths])
        per_video[name] = davis_video(gt, pred)
    expected = davis_summary(per_video)
    for key in ("J&F", "J", "F", "J-recall", "F-recall"):
        assert scores[key] == pytest.approx(expected[key], abs=1e-9)
    assert scores["complete"] and scores["written"] == 2 and scores["skipped"] == 0
    assert set(scores["videos"]["dogs"]) == {1, 2}
    assert scores["videos"]["dogs"][2]["J"] == pytest.approx(100 * per_video["dogs"][2][0].mean)
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporary folders left


def test_ground_truth_as_predictions_scores_100(davis, tmp_path):
    out = tmp_path / "gt"
    for name in ("bear", "dogs"):
        shutil.copytree(davis / "raw" / "Annotations" / "480p" / name, out / name)
    scores = vos.summarize_davis2017(str(davis / "data"), str(out))
    assert scores["J&F"] == scores["J"] == scores["F"] == 100.0
    # a wrong object id is seen
    labels = np.asarray(Image.open(out / "dogs" / "00001.png")).copy()
    labels[labels == 2] = 1
    Image.fromarray(labels, "P").save(out / "dogs" / "00001.png")
    assert vos.summarize_davis2017(str(davis / "data"), str(out))["J&F"] < 100.0


def test_reruns_skip_finished_videos_and_shards_add_up(predictor, davis, davis_run, tmp_path):
    out, scores = davis_run
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = vos.evaluate_davis2017(predictor, str(davis / "data"), str(out))
    assert again["written"] == 0 and again["skipped"] == 2 and again["J&F"] == scores["J&F"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps

    sharded = tmp_path / "sharded"
    os.makedirs(sharded / ".dogs.partial-x")  # left by a killed run
    first = vos.evaluate_davis2017(predictor, str(davis / "data"), str(sharded), shard_index=1, shard_count=2)
    assert first == {"complete": False, "written": 1, "skipped": 0, "missing": ["bear"]}
    assert not (sharded / ".dogs.partial-x").exists()
    last = vos.evaluate_davis2017(predictor, str(davis / "data"), str(sharded), shard_index=0, shard_count=2)
    assert last["complete"] and last["written"] == 1 and last["J&F"] == pytest.approx(scores["J&F"], abs=1e-9)
    for p in out.rglob("*.png"):
        np.testing.assert_array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(sharded / p.relative_to(out))))

    subset = vos.evaluate_davis2017(predictor, str(davis / "data"), str(sharded), videos=["dogs"])
    assert list(subset["videos"]) == ["dogs"] and subset["skipped"] == 1


def test_bad_inputs_are_clear_errors(predictor, davis, tmp_path):
    missing = str(tmp_path / "no_such_dir")
    with pytest.raises(FileNotFoundError, match=f"data_dir {missing} does not exist"):
        vos.evaluate_davis2017(predictor, missing, str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match=f"is not built under {tmp_path}"):
        vos.write_youtube_vos(predictor, str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="unknown videos \\['cat'\\]"):
        vos.evaluate_davis2017(predictor, str(davis / "data"), str(tmp_path / "out"), videos=["cat"])
    with pytest.raises(ValueError, match="shard_index"):
        vos.evaluate_davis2017(predictor, str(davis / "data"), str(tmp_path / "out"), shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="unknown memory policy"):
        vos.evaluate_davis2017(predictor, str(davis / "data"), str(tmp_path / "out"), memory="everything")
    with pytest.raises(FileNotFoundError, match="no predictions under .* for videos \\['bear', 'dogs'\\]"):
        vos.summarize_davis2017(str(davis / "data"), str(tmp_path / "empty"))
    assert not (tmp_path / "out").exists()


def test_youtube_vos_submission_has_late_objects_and_the_server_layout(predictor, tmp_path):
    write_youtube_vos(str(tmp_path / "raw"), np.random.default_rng(2))
    data = str(tmp_path / "data")
    assert build_cli.main(build_args("youtube_vos", str(tmp_path / "raw"), data)) == 0
    out = tmp_path / "out"
    counts = vos.write_youtube_vos(predictor, data, str(out), late_objects=True)
    assert counts == {"videos": 1, "frames": 3, "objects": 2, "late_objects": 1, "skipped": 0,
                      "complete": True, "zip": str(out / "submission.zip")}
    names = ["00000", "00005", "00010"]
    raw = tmp_path / "raw" / "valid" / "Annotations" / "0a1b2c3d"
    pngs = [np.asarray(Image.open(out / "Annotations" / "0a1b2c3d" / f"{n}.png")) for n in names]
    np.testing.assert_array_equal(pngs[0], np.asarray(Image.open(raw / "00000.png")))
    late = np.asarray(Image.open(raw / "00010.png")) == 2
    assert (pngs[2][late] == 2).all() and not (pngs[0] == 2).any() and not (pngs[1] == 2).any()
    assert Image.open(out / "Annotations" / "0a1b2c3d" / "00005.png").getpalette() == Image.open(raw / "00000.png").getpalette()
    with zipfile.ZipFile(counts["zip"]) as z:
        assert sorted(z.namelist()) == [f"Annotations/0a1b2c3d/{n}.png" for n in names]
        np.testing.assert_array_equal(np.asarray(Image.open(z.open("Annotations/0a1b2c3d/00010.png"))), pngs[2])

    again = vos.write_youtube_vos(predictor, data, str(out), late_objects=True)
    assert again["skipped"] == 1 and again["videos"] == 0 and again["zip"] == counts["zip"]
    with pytest.raises(ValueError, match="segmented with late_objects=True; this run has late_objects=False"):
        vos.write_youtube_vos(predictor, data, str(out))  # its videos would be skipped: a mixed submission

    original = tmp_path / "as_segic"
    counts = vos.write_youtube_vos(predictor, data, str(original))  # the default: the original's protocol
    assert counts["objects"] == 1 and counts["late_objects"] == 1
    for n in names:
        assert not (np.asarray(Image.open(original / "Annotations" / "0a1b2c3d" / f"{n}.png")) == 2).any()


def test_one_compiled_step_serves_videos_with_the_same_padded_object_count(predictor, rng, monkeypatch):
    frames = [rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) for _ in range(3)]
    labels = np.zeros((30, 40), np.uint8)
    labels[2:12, 3:15], labels[15:25, 20:30] = 1, 2
    # a fresh program of the same step, which fails on a second trace
    monkeypatch.setattr(video, "_step", jax.jit(chex.assert_max_traces(video._step.__wrapped__, n=1), static_argnums=(0, 1, 2)))
    propagator = video.VideoPropagator(predictor, "first_last2")
    list(propagator.segment(frames, {0: labels}, [1, 2]))
    list(propagator.segment(frames[::-1], {0: np.where(labels == 2, 5, 0)}, [5]))  # 1 object, padded to 4 too


def test_evaluation_modules_do_not_import_tensorflow(tmp_path):
    import subprocess
    import sys

    from sandbox import marking_stand_in, python_path

    site, mark = marking_stand_in(tmp_path, "tensorflow")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = "import segic_jax.evaluation.evaluate, segic_jax.evaluation.example, segic_jax.evaluation.vos, segic_jax.inference.video"
    result = subprocess.run([sys.executable, "-c", code],
                            env=python_path(site, root), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not mark.exists()


def test_paper_config_leaves_late_youtube_vos_objects_out_as_the_original(checkpoint, tmp_path):
    """The original reads only each video's first annotation: configs/eval.py:paper does the same
    through main.py's evaluation (`run`), and late_objects=True, the named option, tracks the object
    that appears later (the fake's object 2, first annotated in frame 00010)."""
    import importlib.util

    import ml_collections

    from segic_jax.evaluation.evaluate import run

    write_youtube_vos(str(tmp_path / "raw"), np.random.default_rng(2))
    data = str(tmp_path / "data")
    assert build_cli.main(build_args("youtube_vos", str(tmp_path / "raw"), data)) == 0
    spec = importlib.util.spec_from_file_location("eval_config", os.path.join(os.path.dirname(__file__), "..", "configs", "eval.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    later = np.asarray(Image.open(tmp_path / "raw" / "valid" / "Annotations" / "0a1b2c3d" / "00010.png")) == 2

    def labels(workdir, late_objects=None):
        config = module.get_config("paper")
        config.update(dict(checkpoint=checkpoint, data_dir=data, benchmarks=("youtube_vos",), image_size=0))
        if late_objects is not None:  # a plain ConfigDict, as a config.json read back is: any type is taken
            config = ml_collections.ConfigDict({**config.to_dict(), "late_objects": late_objects})
        results = run(config, str(workdir))
        frames = [np.asarray(Image.open(workdir / "youtube_vos" / "Annotations" / "0a1b2c3d" / f"{n}.png"))
                  for n in ("00000", "00005", "00010")]
        return results, frames

    paper, frames = labels(tmp_path / "paper")
    assert paper["video"]["youtube_vos"]["objects"] == 1 and paper["video"]["youtube_vos"]["late_objects"] == 1
    assert not any((f == 2).any() for f in frames)
    assert "late_objects=False" in paper["protocols"]["youtube_vos"] and "the paper's protocol" in paper["protocols"]["youtube_vos"]
    tracked, frames = labels(tmp_path / "tracked", late_objects=True)
    assert tracked["video"]["youtube_vos"]["objects"] == 2 and (frames[2][later] == 2).all()
    assert "NOT the paper's protocol" in tracked["protocols"]["youtube_vos"]
    with pytest.raises(ValueError, match="config.late_objects must be True or False, got 'yes'"):
        labels(tmp_path / "bad", late_objects="yes")
