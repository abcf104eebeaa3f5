"""CLIP text encoder and tokenizer against Hugging Face on random weights / CLIP's real BPE."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from segic_jax import checkpoints
from segic_jax.conversion import clip_text as clip_conversion
from segic_jax.models import clip_text
from segic_jax.models.clip_text import ClipTextModel
from perturb import perturbed
from torch_reference import hf_clip_text, write_clip_vocab

TOL = 1e-4
VOCAB = 1000
PROMPTS = [
    "a photo of a dog",
    "a photo of a traffic light",
    "a photo of a hot_dog",
    "please segment the instances",
    "",
    "A Photo   of a  CAT!!",
    "naïve café, 2 persons' bikes & 13 umbrellas",
    "<|startoftext|> tokens in text",
    " ".join(["a long prompt"] * 40),  # longer than 77 tokens: truncated
]


def _random_ids(rng, batch, length=77):
    """Token ids like the tokenizer's: start, words, end-of-text, then end-of-text padding."""
    ids = np.full((batch, length), VOCAB - 1, np.int64)
    for row in range(batch):
        n = rng.integers(0, length - 1)
        ids[row, 0] = VOCAB - 2
        ids[row, 1 : 1 + n] = rng.integers(0, VOCAB - 2, n)
    return ids


@pytest.fixture(scope="module", params=["text_model", "full_clip"])
def converted(request, tmp_path_factory):
    hf = hf_clip_text(vocab=VOCAB, full_model=request.param == "full_clip")
    root = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(str(root / "hf"))
    config, params, extra = clip_conversion.convert(str(root / "hf"), progress=False)
    out = checkpoints.save_model(str(root / "ckpt"), ClipTextModel, config, params, extra_files=extra)
    text_model = hf.text_model if request.param == "full_clip" else hf
    return clip_text.load(out), text_model


def _max_diff(ours, hf, ids):
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids))
    out = ours(jnp.asarray(ids))
    return max(
        np.abs(np.asarray(out.hidden_states) - ref.last_hidden_state.numpy()).max(),
        np.abs(np.asarray(out.pooled) - ref.pooler_output.numpy()).max(),
    )


def test_matches_hf_clip_text_model(converted, rng):
    ours, hf = converted
    assert ours.cfg.eos_token_id == VOCAB - 1
    assert _max_diff(ours, hf, _random_ids(rng, 4)) <= TOL


def test_pooled_output_is_taken_at_the_first_end_of_text(converted, rng):
    ours, _ = converted
    ids = _random_ids(rng, 3)
    out = ours(jnp.asarray(ids))
    first = (ids == VOCAB - 1).argmax(1)
    np.testing.assert_array_equal(np.asarray(out.pooled), np.asarray(out.hidden_states)[np.arange(3), first])
    assert len(set(first.tolist())) > 1


@pytest.mark.parametrize("param", ["token_embedding.embedding", "layers.1.self_attn.k_proj.kernel", "final_layer_norm.scale"])
def test_parity_check_catches_one_perturbed_weight(converted, param, rng):
    ours, hf = converted
    ids = _random_ids(rng, 2)
    # nudge an entry the input reaches: a used token's embedding row, or the middle of a kernel
    index = (int(ids[0, 0]), 3) if param.startswith("token_embedding") else None
    assert _max_diff(perturbed(ours, param, index), hf, ids) > TOL


@pytest.fixture(scope="module")
def clip_vocab(tmp_path_factory):
    return write_clip_vocab(str(tmp_path_factory.mktemp("clip_vocab")))


@pytest.fixture(scope="module")
def hf_tokenizer(clip_vocab):
    from transformers import CLIPTokenizerFast

    tok = CLIPTokenizerFast.from_pretrained(clip_vocab)
    assert len(tok) == 49408
    return tok


def _hf_ids(tok, prompts):
    return tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="np")["input_ids"]


def test_tokenizer_from_vocab_and_merges_matches_hf(clip_vocab, hf_tokenizer):
    ours = clip_text.ClipTokenizer.from_folder(clip_vocab)
    ids = ours(PROMPTS)
    assert ids.shape == (len(PROMPTS), 77) and ids.dtype == np.int32
    np.testing.assert_array_equal(ids, _hf_ids(hf_tokenizer, PROMPTS))
    # the real CLIP vocabulary: start 49406, end-of-text 49407 also pads
    assert ids[4, 0] == 49406 and (ids[4, 1:] == 49407).all()
    assert ids[-1, -1] == 49407 and (ids[-1] != 49407).sum() == 76


def test_tokenizer_from_tokenizer_json_matches_hf(tmp_path, hf_tokenizer):
    hf_tokenizer.save_pretrained(str(tmp_path))
    for name in ("vocab.json", "merges.txt"):
        if (tmp_path / name).exists():
            os.remove(tmp_path / name)
    ours = clip_text.ClipTokenizer.from_folder(str(tmp_path))
    np.testing.assert_array_equal(ours(PROMPTS), _hf_ids(hf_tokenizer, PROMPTS))


def test_tokenizer_files_travel_with_the_converted_checkpoint(tmp_path, clip_vocab):
    hf = hf_clip_text(vocab=49408, width=32, depth=1, heads=2, mlp=64)
    hf.save_pretrained(str(tmp_path / "hf"))
    for name in ("vocab.json", "merges.txt"):
        os.link(os.path.join(clip_vocab, name), tmp_path / "hf" / name)
    config, params, extra = clip_conversion.convert(str(tmp_path / "hf"), progress=False)
    out = checkpoints.save_model(str(tmp_path / "ckpt"), ClipTextModel, config, params, extra_files=extra)
    assert config.eos_token_id == 49407
    tok = clip_text.ClipTokenizer.from_folder(out)
    assert tok(["a photo of a cat"])[0, :2].tolist() == [49406, 320]


def test_missing_tokenizer_files_are_named(tmp_path):
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        clip_text.ClipTokenizer.from_folder(str(tmp_path))
