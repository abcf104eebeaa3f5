"""Converted-checkpoint inference end to end: a tiny random SEGIC written in the released formats
(hub DINOv2 .pth, HF CLIP folder, SEGIC head .pth), converted with the CLI, against a torch
transcription of the reference pipeline; the predict command and its input checks."""

import contextlib
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from segic_jax import convert
from segic_jax.inference.predictor import Episode, Predictor
from torch_reference import (
    TorchSegicHead,
    hf_clip_text,
    hf_dinov2,
    hf_folder_to_hub_state_dict,
    hub_interpolation,
    write_clip_vocab,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 112  # model input; DINOv2 grid 8, mask strides 7 x 2
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_segic")
    dino = hf_dinov2(seed=5)
    dino.save_pretrained(str(root / "dino_hf"))
    torch.save(hf_folder_to_hub_state_dict(str(root / "dino_hf")), str(root / "dinov2_vits14_pretrain.pth"))
    clip = hf_clip_text(vocab=49408, width=32, depth=1, heads=2, mlp=64, seed=6)
    clip.save_pretrained(str(root / "clip"))
    write_clip_vocab(str(root / "clip"))
    head = TorchSegicHead(vision_dim=128, text_dim=32, grid=8, image_size=SIZE, seed=7)
    torch.save(head.state_dict(), str(root / "segic.pth"))
    out = str(root / "converted")
    assert convert.main([
        "segic", "--src", str(root / "segic.pth"), "--dinov2", str(root / "dinov2_vits14_pretrain.pth"),
        "--clip", str(root / "clip"), "--out", out, "--image-size", str(SIZE),
    ]) == 0
    from transformers import CLIPTokenizerFast

    return dict(
        path=out, dino=hub_interpolation(dino, 0.1, False), clip=clip, head=head,
        tokenizer=CLIPTokenizerFast.from_pretrained(str(root / "clip")), root=root,
    )


@pytest.fixture(scope="module")
def predictor(tiny):
    return Predictor.from_checkpoint(tiny["path"])


def _torch_fit(x):
    """Evaluation resize of an (C, H, W) float tensor: longer side to SIZE by scale factor, pad."""
    h, w = x.shape[-2:]
    s = SIZE / max(h, w)
    y = F.interpolate(x[None], scale_factor=(s, s), mode="bilinear", align_corners=False)[0]
    out = torch.zeros(x.shape[0], SIZE, SIZE)
    out[:, : y.shape[1], : y.shape[2]] = y
    return out, y.shape[1:]


@torch.no_grad()
def _torch_features(tiny, image):
    x, (h, w) = _torch_fit(torch.from_numpy(image).permute(2, 0, 1).float())
    x = (x / 255 - torch.tensor(MEAN, dtype=torch.float32)[:, None, None]) / torch.tensor(STD, dtype=torch.float32)[:, None, None]
    x[:, h:, :] = 0
    x[:, :, w:] = 0
    tokens = tiny["dino"](pixel_values=x[None]).last_hidden_state[0, 1:]
    return tokens.T.reshape(-1, SIZE // 14, SIZE // 14), (h, w)


@torch.no_grad()
def _torch_pipeline(tiny, ref_image, ref_mask, target, prompt, binarize=True):
    """The reference's one-shot inference, step by step (docs/original.md 2.4 and 5.1)."""
    ref_feat, _ = _torch_features(tiny, ref_image)
    tgt_feat, (h, w) = _torch_features(tiny, target)
    label, _ = _torch_fit(torch.from_numpy(ref_mask.astype(np.float32) * 255)[None])
    label = (label / 255 > 0.5).float() if binarize else label / 255
    small = (F.interpolate(label[None], size=ref_feat.shape[-2:], mode="bilinear", align_corners=False)[0, 0] > 0.5).float()
    inst = torch.einsum("chw,hw->c", ref_feat, small) / small.sum().clamp(min=1)
    ids = tiny["tokenizer"]([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    text = tiny["clip"](input_ids=ids["input_ids"]).pooler_output[0]
    logits, sim, _ = tiny["head"].decode_one(tgt_feat, inst[None], text)
    logits = F.interpolate(logits[None, :, :h, :w], size=target.shape[:2], mode="bilinear", align_corners=False)[0]
    return logits.numpy()


def _scene(rng, h, w):
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    mask[h // 4 : 3 * h // 4, w // 5 : w // 2] = True
    return image, mask


@pytest.mark.parametrize("prompt_kind,binarize", [("none", True), ("class", True), ("instance", True), ("none", False)])
def test_one_shot_matches_the_reference_pipeline(tiny, predictor, rng, prompt_kind, binarize):
    ref_image, ref_mask = _scene(rng, 120, 90)
    target, _ = _scene(rng, 100, 130)
    names = ["dog"] if prompt_kind == "class" else None
    context = predictor.encode_context(
        [ref_image], [ref_mask], class_names=names, instance_prompt=prompt_kind == "instance", binarize=binarize
    )
    prompt = {"none": "", "class": "a photo of a dog", "instance": "please segment the instances"}[prompt_kind]
    assert context.prompts == (prompt,)
    (pred,) = predictor.segment([target], context)
    expected = _torch_pipeline(tiny, ref_image, ref_mask, target, prompt, binarize)
    assert pred.logits.shape == expected.shape == (1, 100, 130)
    np.testing.assert_allclose(pred.logits, expected, rtol=0, atol=1e-3)
    decided = np.abs(expected) > 1e-3
    assert decided.mean() > 0.99 and np.array_equal(pred.masks[decided], (expected > 0)[decided])


def test_batches_of_targets_and_instances_are_consistent_and_deterministic(predictor, rng):
    ref_image, _ = _scene(rng, 90, 90)
    masks = np.zeros((3, 90, 90), bool)
    masks[0, :30, :30] = masks[1, 40:80, 10:50] = masks[2, 60:, 60:] = True
    context = predictor.encode_context([ref_image], [masks])
    targets = [_scene(rng, h, w)[0] for h, w in [(64, 80), (120, 40), (90, 90)]]
    preds = predictor.segment(targets, context)  # 3 targets in batches of 2: one padded batch
    again = predictor.segment(targets, context)
    for pred, target, other in zip(preds, targets, again):
        assert pred.logits.shape == pred.masks.shape == pred.similarity.shape == (3,) + target.shape[:2]
        assert pred.points.shape == (3, 2)
        np.testing.assert_array_equal(pred.logits, other.logits)
    alone = predictor.segment(targets[2:], context)[0]  # batch position and padding change nothing
    np.testing.assert_allclose(alone.logits, preds[2].logits, atol=1e-5)


def test_k_shot_concepts_pool_features_over_all_shots(predictor, rng):
    # 112 px images need no resize, and masks aligned to the 14-px cells cover known cell counts
    # at the 8x8 feature grid: 6 cells in a, 4 in b.
    a, b = (rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(2))
    ma, mb = np.zeros((112, 112), bool), np.zeros((112, 112), bool)
    ma[14:42, 28:70] = True
    mb[56:84, 0:28] = True
    both = predictor.encode_context([a, b], [ma, mb])
    one_a = predictor.encode_context([a], [ma])
    one_b = predictor.encode_context([b], [mb])
    expected = (6 * one_a.features + 4 * one_b.features) / 10
    np.testing.assert_allclose(np.asarray(both.features), np.asarray(expected), atol=1e-5)
    # a concept absent from one shot (empty mask there) takes its feature from the others
    absent = predictor.encode_context([a, b], [ma, np.zeros_like(mb)])
    np.testing.assert_allclose(np.asarray(absent.features), np.asarray(one_a.features), atol=1e-6)


def test_semantic_mode_one_reference_per_class(tmp_path, rng):
    from segic_jax.inference.segment_files import build_context_inputs

    paths = []
    for i in range(3):
        image, mask = _scene(rng, 40 + i, 50)
        paths.append((_save(tmp_path / f"r{i}.png", image), _save(tmp_path / f"m{i}.png", mask.astype(np.uint8) * 255)))
    images, stacks, names = build_context_inputs([p for p, _ in paths], [m for _, m in paths], ["cat", "dog", "cat"])
    assert names == ["cat", "dog"]  # the two cat references are shots of one concept
    assert [s.shape[0] for s in stacks] == [2, 2, 2]
    assert stacks[0][0].any() and not stacks[0][1].any() and stacks[1][1].any() and stacks[2][0].any()
    _, stacks, names = build_context_inputs([p for p, _ in paths], [m for _, m in paths], [])
    assert names is None and [s.shape[0] for s in stacks] == [3, 3, 3]  # no names: one concept each


def test_class_prompts_per_concept(predictor, rng):
    image, mask = _scene(rng, 60, 60)
    context = predictor.encode_context([image, image], [np.stack([mask, ~mask]), np.stack([mask, ~mask])], class_names=["cat", ""])
    assert context.prompts == ("a photo of a cat", "")
    assert not np.allclose(np.asarray(context.text[0]), np.asarray(context.text[1]))


def test_context_errors_are_clear(predictor, rng):
    image, mask = _scene(rng, 50, 60)
    with pytest.raises(ValueError, match="empty in every reference"):
        predictor.encode_context([image], [np.zeros_like(mask)])
    with pytest.raises(ValueError, match="masks are"):
        predictor.encode_context([image], [mask[:40]])
    with pytest.raises(ValueError, match="one mask array per reference"):
        predictor.encode_context([image, image], [mask])
    with pytest.raises(FileNotFoundError, match="no head/"):
        Predictor.from_checkpoint("/nonexistent")


def _save(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def _reference_files(rng, folder):
    """A reference scene and its mask, in memory and as ref.png / ref_mask.png in `folder`."""
    ref, mask = _scene(rng, 80, 60)
    return ref, mask, _save(folder / "ref.png", ref), _save(folder / "ref_mask.png", mask.astype(np.uint8) * 255)


def _run_cli(*args):
    return subprocess.run([sys.executable, "main.py", "--mode", "predict", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_predict_command_writes_masks_overlays_and_heatmaps(tiny, rng, tmp_path):
    ref, mask, ref_path, mask_path = _reference_files(rng, tmp_path)
    targets = tmp_path / "targets"
    targets.mkdir()
    _save(targets / "a.jpg", _scene(rng, 70, 90)[0])
    Image.fromarray(_scene(rng, 50, 50)[0]).convert("L").save(targets / "gray.png")  # grayscale target
    Image.fromarray(_scene(rng, 40, 64)[0]).convert("RGBA").save(targets / "rgba.png")
    out = tmp_path / "out"
    result = _run_cli("--checkpoint", tiny["path"], "--workdir", str(out), "--reference", ref_path,
                      "--reference_mask", mask_path, "--target", str(targets))
    assert result.returncode == 0, result.stderr[-3000:]
    for stem, (h, w) in [("a", (70, 90)), ("gray", (50, 50)), ("rgba", (40, 64))]:
        mask_png = Image.open(out / f"{stem}_mask0.png")
        assert mask_png.size == (w, h) and set(np.unique(np.asarray(mask_png))) <= {0, 255}
        assert Image.open(out / f"{stem}_overlay.png").size == (w, h)
        assert Image.open(out / f"{stem}_propagated0.png").mode == "RGB"


def test_predict_refuses_bad_inputs_and_writes_nothing(tiny, rng, tmp_path):
    ref, mask = _scene(rng, 80, 60)
    ref_path = _save(tmp_path / "ref.png", ref)
    good_mask = _save(tmp_path / "mask.png", mask.astype(np.uint8) * 255)
    small_mask = _save(tmp_path / "small.png", mask[:40].astype(np.uint8) * 255)
    empty_mask = _save(tmp_path / "empty.png", np.zeros((80, 60), np.uint8))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cases = [
        (["--reference", str(tmp_path / "missing.png"), "--reference_mask", good_mask, "--target", ref_path], "image file not found"),
        (["--reference", str(corrupt), "--reference_mask", good_mask, "--target", ref_path], "cannot read .*corrupt.jpg"),
        (["--reference", ref_path, "--reference_mask", small_mask, "--target", ref_path], "small.png is 60x40"),
        (["--reference", ref_path, "--reference_mask", empty_mask, "--target", ref_path], "empty.png is empty"),
        (["--reference", ref_path, "--reference_mask", good_mask, "--target", str(corrupt)], "cannot read .*corrupt.jpg"),
        (["--reference", ref_path, "--target", ref_path], "one mask per reference"),
    ]
    # the inputs are checked before the checkpoint is even looked at: a missing mask is named as a mask
    missing_mask = ["--reference", ref_path, "--reference_mask", str(tmp_path / "nomask.png"), "--target", ref_path]
    cases.append((missing_mask + ["--checkpoint", str(tmp_path / "no_checkpoint")], "mask file not found: .*nomask.png"))
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        result = _run_cli("--checkpoint", tiny["path"], "--workdir", str(out), *args)
        assert result.returncode == 1 and re.search(message, result.stderr), (message, result.stderr[-2000:])
        assert not out.exists()


def test_images_of_any_mode_are_read_as_rgb(tmp_path, rng):
    from segic_jax.data.images import load_image, load_mask

    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(str(tmp_path / "a.png")), rgb)
    gray16 = (rng.integers(0, 65536, (20, 30))).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    loaded = load_image(str(tmp_path / "g16.png"))
    assert loaded.shape == (20, 30, 3) and loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded[..., 0], np.round(gray16 / 257).astype(np.uint8))
    palette = Image.fromarray(np.array([[0, 1], [2, 0]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_mask(str(tmp_path / "p.png")), [[False, True], [True, False]])


def test_bfloat16_predictor_stays_close_to_float32(tiny, predictor, rng):
    fast = Predictor.from_checkpoint(tiny["path"], dtype="bfloat16")
    ref_image, ref_mask = _scene(rng, 90, 120)
    target, _ = _scene(rng, 110, 100)
    exact = predictor.segment([target], predictor.encode_context([ref_image], [ref_mask]))[0]
    approx = fast.segment([target], fast.encode_context([ref_image], [ref_mask]))[0]
    scale = np.abs(exact.logits).max()
    assert 0 < np.abs(approx.logits - exact.logits).max() < 0.05 * scale
    assert (approx.masks == exact.masks).mean() > 0.97


# --- the throughput path: device pre/post-processing, pipelined batches, compile once ---------


def _host_pipeline(predictor, ref_image, ref_mask, targets):
    """The predictor as it was before preprocessing and post-processing moved to the device: the
    evaluation resize of images and masks and the final crop-and-resize in NumPy on the host."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from segic_jax.data.images import fit_to_model
    from segic_jax.models.dinov2 import patch_features
    from segic_jax.ops.correspondence import masked_mean_features
    from segic_jax.ops.resize import resize

    def feats(image):
        pixels, hw = fit_to_model(image, SIZE)
        return patch_features(predictor.encoder, jnp.asarray(pixels[None]), jnp.asarray([hw])), hw

    with jax.default_matmul_precision("highest"):
        ref_feats, _ = feats(ref_image)
        fitted = fit_to_model(ref_mask.astype(np.float32) * 255, SIZE)[0] > 127.5
        vec = masked_mean_features(ref_feats, jnp.asarray(fitted[None, None], jnp.float32))
        text = jnp.asarray(predictor.text_features([""]))[None]
        out = []
        for target in targets:
            t_feats, (h, w) = feats(target)
            dec = nnx.merge(*nnx.split(predictor.head)).decode(t_feats, vec, jnp.ones((1, 1), bool), text)
            logits = resize(np.ascontiguousarray(np.asarray(dec.logits)[0, :, :h, :w]), size=target.shape[:2], axes=(-2, -1))
            sim = resize(np.ascontiguousarray(np.asarray(dec.similarity)[0, :, :h, :w]), size=target.shape[:2], axes=(-2, -1))
            scale = np.array([target.shape[1] / w, target.shape[0] / h], np.float32)
            out.append((logits, sim, (np.asarray(dec.points)[0] + 0.5) * scale - 0.5))
    return out


def test_device_pre_and_post_processing_equal_the_host_pipeline(predictor, rng):
    # sizes below, at and above the model size, thin ones, and several 128-px buckets in one batch
    ref_image, ref_mask = _scene(rng, 150, 97)
    targets = [_scene(rng, h, w)[0] for h, w in [(112, 112), (60, 200), (300, 41), (129, 257), (7, 90)]]
    targets.append(targets[1].astype(np.float32) + 0.4)  # not uint8: the values are kept, not truncated
    expected = _host_pipeline(predictor, ref_image, ref_mask, targets)
    preds = predictor.segment(targets, predictor.encode_context([ref_image], [ref_mask]))
    for pred, target, (logits, sim, points) in zip(preds, targets, expected):
        assert pred.logits.shape == (1,) + target.shape[:2] and pred.logits.flags.c_contiguous
        np.testing.assert_allclose(pred.logits, logits, rtol=0, atol=2e-5 * np.abs(logits).max())
        np.testing.assert_allclose(pred.similarity, sim, rtol=0, atol=2e-6)
        np.testing.assert_allclose(pred.points, points, rtol=0, atol=1e-4)
        decided = np.abs(logits) > 1e-4 * np.abs(logits).max()
        np.testing.assert_array_equal(pred.masks[decided], (logits > 0)[decided])


def test_batch_i_plus_1_is_dispatched_before_batch_i_is_pulled(tiny, rng):
    predictor = Predictor.from_checkpoint(tiny["path"], batch_size=2, prefetch=1)
    events = []
    dispatch, collect = predictor._decode, predictor._collect

    def logged_dispatch(*args):
        pending = dispatch(*args)
        events.append(("dispatch", id(pending)))
        return pending

    def logged_collect(pending):
        events.append(("pull", id(pending)))
        return collect(pending)

    predictor._decode, predictor._collect = logged_dispatch, logged_collect
    ref_image, ref_mask = _scene(rng, 60, 60)
    context = predictor.encode_context([ref_image], [ref_mask])
    targets = [_scene(rng, 50 + i, 70)[0] for i in range(5)]  # batches of 2, 2, 1
    preds = list(predictor.segment_iter(iter(targets), context))
    kinds = [kind for kind, _ in events]
    assert kinds == ["dispatch", "dispatch", "pull", "dispatch", "pull", "pull"]
    batches = [b for _, b in events]
    assert batches[2] == batches[0] and batches[4] == batches[1] and batches[5] == batches[3]
    assert [p.logits.shape[1] for p in preds] == [50, 51, 52, 53, 54]
    # without prefetch each batch is pulled before the next is dispatched
    events.clear()
    predictor.prefetch = 0
    list(predictor.segment_iter(targets, context))
    assert [kind for kind, _ in events] == ["dispatch", "pull"] * 3


@contextlib.contextmanager
def compiled_programs():
    """The names of the programs XLA compiles inside the block (compilations, not cache lookups)."""
    import jax

    names = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(str(kwargs.get("fun_name")).removeprefix("jit(").removesuffix(")"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_encoder_and_decoder_compile_once_for_every_call(tiny, rng):
    predictor = Predictor.from_checkpoint(tiny["path"], batch_size=3, concept_bucket=4)  # shapes no other test uses
    ref_image, _ = _scene(rng, 80, 100)
    masks = np.zeros((4, 80, 100), bool)
    masks[0, :20] = masks[1, 30:60, :50] = masks[2, 50:, 60:] = masks[3, 70:, :10] = True
    with compiled_programs() as first_calls:
        for k in (1, 2, 3):  # 1, 2 and 4 concept slots
            predictor.segment([_scene(rng, 90, 100)[0]], predictor.encode_context([ref_image], [masks[:k]]))
    assert first_calls.count("_encode") == 1 and first_calls.count("_decode") == 3
    with compiled_programs() as later:
        # other concept counts and target counts, sizes in the same 128-px bucket, episodes
        for k, sizes in [(4, [(100, 120), (64, 64), (128, 1)]), (2, [(33, 127)]), (1, [(120, 90)] * 5)]:
            context = predictor.encode_context([ref_image, ref_image], [masks[:k], masks[:k]], class_names=["a"] * k)
            preds = predictor.segment([_scene(rng, h, w)[0] for h, w in sizes], context)
            assert [p.masks.shape for p in preds] == [(k, h, w) for h, w in sizes]
        list(predictor.segment_episodes([Episode(ref_image, masks[:k], _scene(rng, 70, 70)[0]) for k in (1, 3, 2, 4)]))
        # another predictor over the same models (the trainer builds one per evaluation) shares them
        again = Predictor.from_checkpoint(tiny["path"], batch_size=3, concept_bucket=4)
        again.segment([_scene(rng, 90, 100)[0]], again.encode_context([ref_image], [masks[:1]]))
    assert not {"_encode", "_decode", "_fit"} & set(later), later
    with compiled_programs() as new_bucket:
        predictor.segment([_scene(rng, 300, 200)[0]], predictor.encode_context([ref_image], [masks[:1]]))
    assert "_fit" in new_bucket and not {"_encode", "_decode"} & set(new_bucket)  # only the resizes compile


def test_concept_slots_are_powers_of_two_then_multiples_of_the_bucket():
    from segic_jax.inference.predictor import concept_slots

    assert [concept_slots(k, 4) for k in range(1, 11)] == [1, 2, 4, 4, 8, 8, 8, 8, 12, 12]
    assert [concept_slots(k, 1) for k in (1, 2, 3)] == [1, 2, 3]


def test_batched_episodes_equal_episodes_one_by_one(tiny, rng):
    predictor = Predictor.from_checkpoint(tiny["path"], batch_size=2)
    episodes = []
    for i, (k, names) in enumerate([(1, None), (3, ["cat", "dog", ""]), (2, None)]):
        ref_image, _ = _scene(rng, 70 + 10 * i, 90)
        masks = np.zeros((k, 70 + 10 * i, 90), bool)
        for j in range(k):
            masks[j, 10 * j : 10 * j + 30, 20 * j : 20 * j + 40] = True
        episodes.append(Episode(ref_image, masks, _scene(rng, 60, 50 + 20 * i)[0], class_names=names,
                                instance_prompt=i == 2))
    for binarize in (True, False):
        batched = list(predictor.segment_episodes(episodes, binarize=binarize))  # batches of 2 and 1 (padded)
        for e, pred in zip(episodes, batched):
            context = predictor.encode_context([e.reference], [e.masks], class_names=e.class_names,
                                               instance_prompt=e.instance_prompt, binarize=binarize)
            (alone,) = predictor.segment([e.target], context)
            assert pred.logits.shape == alone.logits.shape == (e.masks.shape[0],) + e.target.shape[:2]
            np.testing.assert_allclose(pred.logits, alone.logits, rtol=0, atol=1e-5)
            np.testing.assert_allclose(pred.points, alone.points, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="empty reference mask"):
        list(predictor.segment_episodes([Episode(episodes[0].reference, np.zeros((1, 70, 90), bool), episodes[0].target)]))


def test_predict_streams_a_folder_skips_unreadable_targets_and_names_them(tiny, predictor, rng, tmp_path):
    from segic_jax.inference import segment_files

    ref, mask, ref_path, mask_path = _reference_files(rng, tmp_path)
    frames = tmp_path / "frames"
    frames.mkdir()
    images = {}
    for i in range(9):
        images[f"{i:03d}"] = _scene(rng, 60 + 3 * i, 70)[0]
        _save(frames / f"{i:03d}.png", images[f"{i:03d}"])
    (frames / "004.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # unreadable, in the middle
    del images["004"]
    Image.new("1", (12000, 12000)).save(frames / "bomb.png", optimize=True)  # over the pixel budget: skipped
    images["003-2"] = _scene(rng, 50, 70)[0]  # a second target with the stem 003 (after 003.png): another name
    _save(frames / "003.tif", images["003-2"])
    streaming = Predictor.from_checkpoint(tiny["path"], batch_size=2, prefetch=2)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"2 of 11 targets could not be read \(the other 9 were written .*\): "
                                         r".*004\.png.*; .*bomb\.png is 12000x12000 pixels"):
        segment_files.run(streaming, [ref_path], [mask_path], str(frames), str(out), outputs=("masks",), threads=3)
    assert sorted(os.listdir(out)) == sorted(f"{stem}_mask0.png" for stem in images)  # masks only, nothing partial
    context = predictor.encode_context([ref], [mask], binarize=False)
    expected = predictor.segment(list(images.values()), context)
    for stem, pred in zip(images, expected):
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{stem}_mask0.png")) > 0, pred.masks[0])
    result = _run_cli("--checkpoint", tiny["path"], "--workdir", str(tmp_path / "cli"), "--reference", ref_path,
                      "--reference_mask", mask_path, "--target", str(frames), "--outputs", "masks,nope")
    assert result.returncode == 1 and "--outputs must name some of masks, overlay, propagated" in result.stderr


def test_images_of_any_shape_are_segmented(predictor, rng):
    """Thin images whose short side scales to under one pixel (the README promises any size)."""
    ref, mask = _scene(rng, 80, 60)
    context = predictor.encode_context([ref], [mask])
    shapes = [(1, 600), (600, 1), (1, 1), (2, 5000)]
    preds = predictor.segment([rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in shapes], context)
    for shape, pred in zip(shapes, preds):
        assert pred.masks.shape == (1, *shape) and np.isfinite(pred.logits).all()
    thin = predictor.encode_context([rng.integers(0, 256, (1, 600, 3), dtype=np.uint8)], [np.ones((1, 600), bool)])
    assert np.isfinite(np.asarray(thin.features)).all()


def test_predict_stops_on_ctrl_c_with_status_130_and_a_full_disk_is_one_error(tiny, rng, tmp_path, monkeypatch):
    from segic_jax.inference import segment_files

    ref, mask, ref_path, mask_path = _reference_files(rng, tmp_path)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(12):
        _save(frames / f"{i:03d}.png", _scene(rng, 40, 50)[0])
    proc = subprocess.Popen([sys.executable, "main.py", "--mode", "predict", "--checkpoint", tiny["path"], "--workdir",
                             str(tmp_path / "out"), "--reference", ref_path, "--reference_mask", mask_path, "--target",
                             str(frames)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "segmenting" not in seen:  # the bar appears before the first batch is compiled: Ctrl-C lands mid-run
        seen += proc.stderr.read(1) or ""
        assert seen or proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err[-2000:]
    out = tmp_path / "out"
    assert not [n for n in (os.listdir(out) if out.exists() else []) if n.startswith(".")]  # no temporary file left

    # a disk that fills up mid-run: the files written so far are whole, the failed one leaves nothing
    real_replace, calls = os.replace, []

    def full(src, dst):
        calls.append(dst)
        if len(calls) > 3:
            raise OSError(28, "No space left on device", dst)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    predictor = Predictor.from_checkpoint(tiny["path"], batch_size=2)
    with pytest.raises(OSError, match="No space left on device"):
        segment_files.run(predictor, [ref_path], [mask_path], str(frames), str(tmp_path / "full"), outputs=("masks",),
                          threads=1)
    assert sorted(os.listdir(tmp_path / "full")) == sorted(os.path.basename(c) for c in calls[:3])
