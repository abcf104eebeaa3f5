"""The converted SEGIC: the trained head with the frozen encoders it runs with, as one directory.

    ckpt/segic/
        head/          the SegicHead        (each part a `checkpoints` directory:
        dinov2/        the DINOv2 encoder    segic_jax.json + params/)
        clip_text/     the CLIP text model, with its tokenizer files
        release.json   only in a release fetched by `segic_jax.pretrained`: where its files came from

Written by the converter (`conversion.segic.convert_all`) and by training's export, read by
`Predictor.from_checkpoint` and the evaluation; this module is the only code that knows the layout.
A directory is written whole or not at all (`atomic_files.atomic_directory`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from segic_jax import atomic_files, checkpoints
from segic_jax.models import clip_text, dinov2, segic
from segic_jax.models.encoders import compute_dtype

HEAD, DINOV2, CLIP_TEXT = "head", "dinov2", "clip_text"
PARTS = (HEAD, DINOV2, CLIP_TEXT)
RELEASE_FILE = "release.json"
# what a single model's directory may hold, and what a bundle may hold: --overwrite replaces only these
MODEL_ENTRIES = frozenset({checkpoints.DESCRIPTION_FILE, checkpoints.PARAMS_DIR, *clip_text.TOKENIZER_FILES})
BUNDLE_ENTRIES = frozenset({*PARTS, RELEASE_FILE})


class Bundle(NamedTuple):
    head: segic.SegicHead
    encoder: dinov2.Dinov2
    text_model: clip_text.ClipTextModel
    tokenizer: clip_text.ClipTokenizer


class Part(NamedTuple):
    """One model of a bundle to write: its config, parameters (dotted path -> array) and origin."""

    config: object
    params: Mapping[str, np.ndarray]
    source: str = ""


def check(path: str) -> None:
    """Raise FileNotFoundError unless `path` looks like a converted SEGIC directory."""
    for part in PARTS:
        if not os.path.isdir(os.path.join(path, part)):
            raise FileNotFoundError(
                f"{path} is not a converted SEGIC checkpoint: it has no {part}/ "
                "(write one with `python -m segic_jax.convert segic ...`)"
            )


def part_path(path: str, part: str) -> str:
    """The directory of one model (HEAD, DINOV2 or CLIP_TEXT) of a converted SEGIC at `path`."""
    if part not in PARTS:
        raise ValueError(f"a converted SEGIC has no part {part!r}; its parts are {', '.join(PARTS)}")
    return os.path.join(path, part)


def load_head_weights(head: segic.SegicHead, path: str) -> segic.SegicHead:
    """`head` holding the weights of the head of the converted SEGIC at `path` (to fine-tune it).
    Its config may differ from the saved one in the image size alone (no weight depends on it);
    any other difference, and every tensor whose name or shape differs, is named in the error."""
    check(path)
    saved_config = head_config(path)
    differ = [f"{k}: {v!r} there, {getattr(head.cfg, k)!r} here" for k, v in dataclasses.asdict(saved_config).items()
              if k != "image_size" and getattr(head.cfg, k) != v]
    if differ:
        raise ValueError(f"the head of {path} was built otherwise ({'; '.join(differ)}); fine-tune it with the "
                         "encoders it was trained with (drop config.dinov2.* / config.clip.* changes)")
    saved = checkpoints.module_params(segic.load(os.path.join(path, HEAD)))
    here = checkpoints.module_params(head)
    problems = [f"{k}: {tuple(saved[k].shape)} there, {tuple(here[k].shape)} here"
                for k in sorted(set(saved) & set(here)) if tuple(saved[k].shape) != tuple(here[k].shape)]
    problems += [f"{k}: missing there" for k in sorted(set(here) - set(saved))]
    problems += [f"{k}: not in this head" for k in sorted(set(saved) - set(here))]
    if problems:
        raise ValueError(f"the head of {path} does not fit this config's head: " + "; ".join(problems[:6])
                         + ("; ..." if len(problems) > 6 else ""))
    return checkpoints.with_params(head, saved)


def head_config(path: str) -> segic.SegicConfig:
    """The head's config (its image size, widths) without loading any weights."""
    check(path)
    return checkpoints.load_config(os.path.join(path, HEAD), segic.SegicHead)


def load(path: str, *, dtype: str = "float32", fp8: bool = False) -> Bundle:
    """Every model of the directory, computing in `dtype` ("float32" or "bfloat16").

    fp8: DINOv2's linear layers in FP8 e4m3 (`dinov2.use_fp8_matmuls`), with dtype bfloat16."""
    compute = compute_dtype(dtype)
    if fp8 and dtype != "bfloat16":
        raise ValueError(f"fp8 matmuls go with dtype bfloat16, got dtype {dtype!r}")
    check(path)
    head = segic.load(os.path.join(path, HEAD), dtype=compute)
    encoder = dinov2.load(os.path.join(path, DINOV2), dtype=compute)
    if fp8:
        dinov2.use_fp8_matmuls(encoder)
    text_model = clip_text.load(os.path.join(path, CLIP_TEXT), dtype=compute)
    tokenizer = clip_text.ClipTokenizer.from_folder(os.path.join(path, CLIP_TEXT))
    return Bundle(head, encoder, text_model, tokenizer)


def save(out: str, head: Part, encoder: Part, text_model: Part, *, tokenizer_files: Mapping[str, str] | None = None,
         overwrite: bool = False, inputs: Sequence[str] = ()) -> str:
    """Write the three parts as one directory. tokenizer_files: the CLIP tokenizer's files (name ->
    path) to copy beside the text model; None writes the byte-level vocabulary of a random text
    model (`clip_text.write_vocab`). inputs: files the caller read, which --overwrite must never
    delete. Returns the absolute path."""
    replaceable = lambda p: check_replaceable(p, inputs)  # noqa: E731
    with atomic_files.atomic_directory(out, overwrite, replaceable=replaceable) as tmp:
        for name, model_cls, part in ((HEAD, segic.SegicHead, head), (DINOV2, dinov2.Dinov2, encoder)):
            checkpoints.save_model(os.path.join(tmp, name), model_cls, part.config, part.params, source=part.source)
        text_dir = checkpoints.save_model(os.path.join(tmp, CLIP_TEXT), clip_text.ClipTextModel, text_model.config,
                                          text_model.params, source=text_model.source, extra_files=tokenizer_files)
        if tokenizer_files is None:
            clip_text.write_vocab(text_dir)
    return os.path.abspath(out)


def module_part(model, source: str) -> Part:
    """A model in memory as a `Part` (its config and current parameters)."""
    return Part(model.cfg, checkpoints.module_params(model), source)


def check_replaceable(path: str, inputs: Sequence[str] = ()) -> None:
    """Raise ValueError unless `path` is a directory this project wrote (one converted model, or a
    SEGIC bundle) holding nothing else, and none of `inputs` (the files a conversion reads) lies in
    it: --overwrite replaces our outputs, never a user's files."""
    path = os.path.abspath(path)
    for src in inputs:
        if src and os.path.exists(src):
            src = os.path.abspath(src)
            if src == path or src.startswith(path + os.sep):
                raise ValueError(f"refusing to replace {path}: it holds {src}, which this conversion reads")
    entries = set(os.listdir(path))
    model = checkpoints.DESCRIPTION_FILE in entries and entries <= MODEL_ENTRIES
    bundle = entries and entries <= BUNDLE_ENTRIES and all(
        os.path.isfile(os.path.join(path, part, checkpoints.DESCRIPTION_FILE)) for part in entries & set(PARTS))
    if not (model or bundle):
        others = sorted(entries - (MODEL_ENTRIES | BUNDLE_ENTRIES))
        raise ValueError(
            f"refusing to replace {path}: it is not a checkpoint written by segic_jax"
            + (f" (it holds {', '.join(others[:5])}{', ...' if len(others) > 5 else ''})" if others else "")
            + "; remove it yourself or write elsewhere"
        )


def write_release(path: str, info: dict) -> None:
    """Record in a converted release where its files came from (`segic_jax.pretrained`)."""
    atomic_files.write_json(os.path.join(path, RELEASE_FILE), info)


def read_release(path: str) -> dict:
    """What `write_release` recorded; {} when there is no readable record."""
    try:
        with open(os.path.join(path, RELEASE_FILE), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}
