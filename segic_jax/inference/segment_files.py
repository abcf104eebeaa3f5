"""The predict command (main.py --mode predict): segment targets given reference images and masks.

For each target `NAME.*` it writes to the output directory:
  NAME_mask{j}.png         the binary mask of concept j (0/255), at the target's resolution;
  NAME_overlay.png         all concepts' masks tinted over the target;
  NAME_propagated{j}.png   concept j's propagated mask (cosine similarity) as a JET heatmap over
                           the target, with the point prompt marked (the paper's Figure 1 style).
(`outputs` picks which: masks alone are the cheapest for thousands of images.)
References with the same class name are shots of one concept; without class names every
reference is its own concept. Targets stream through the predictor: read in background threads,
segmented in batches while the next are read, written in background threads, with a progress bar
in images/s; a video is a folder of its frames.
"""

from __future__ import annotations

import collections
import contextlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Sequence

import numpy as np
from tqdm.auto import tqdm

from segic_jax import atomic_files, visualize
from segic_jax.data.images import load_image, load_mask
from segic_jax.inference.predictor import Predictor, concept_stacks

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def target_paths(target: str) -> list[str]:
    if os.path.isdir(target):
        paths = sorted(
            os.path.join(target, f) for f in os.listdir(target) if f.lower().endswith(IMAGE_SUFFIXES)
        )
        if not paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the target folder {target}")
        return paths
    if not os.path.isfile(target):
        raise FileNotFoundError(f"target not found: {target}")
    return [target]


def build_context_inputs(references: Sequence[str], masks: Sequence[str], class_names: Sequence[str]):
    """(images, per-image mask stacks, concept names or None) from the command-line lists."""
    if not references:
        raise ValueError("give at least one --reference image with its --reference_mask")
    if len(masks) != len(references):
        raise ValueError(f"{len(references)} --reference images but {len(masks)} --reference_mask files: give one mask per reference")
    if class_names and len(class_names) != len(references):
        raise ValueError(f"{len(class_names)} --class_name values for {len(references)} references: give one per reference or none")
    for name in class_names:
        if not name.strip() or any(c in name for c in "\r\n\t\v\f"):
            raise ValueError(f"--class_name {name!r} must be one line of text (no line breaks or tabs, not blank)")
    images, single = [], []
    for ref, mask in zip(references, masks):
        image = load_image(ref)
        images.append(image)
        single.append(load_mask(mask, image.shape[:2], ref))
    return (images, *concept_stacks(single, class_names))


OUTPUTS = visualize.PREDICTION_PICTURES  # what --outputs may name


def check_outputs(outputs: Sequence[str]) -> tuple[str, ...]:
    unknown = sorted(set(outputs) - set(OUTPUTS))
    if unknown or not outputs:
        raise ValueError(f"--outputs must name some of {', '.join(OUTPUTS)}, got {','.join(outputs) or 'nothing'}")
    return tuple(outputs)


class Inputs(NamedTuple):
    """What a predict run reads before any model work: the decoded references and their mask stacks,
    the concept names (or None) and the target paths."""

    images: list
    stacks: list
    names: list | None
    paths: list[str]


def prepare(references: Sequence[str], masks: Sequence[str], target: str, class_names: Sequence[str] = ()) -> Inputs:
    """Read and check every reference and mask and list the targets, so that a wrong path or a bad
    mask is reported at once, before a checkpoint is loaded (seconds) or anything is written."""
    images, stacks, names = build_context_inputs(references, masks, class_names)
    return Inputs(images, stacks, names, target_paths(target))


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_out_dir(out_dir: str, target: str, inputs: Inputs, outputs: Sequence[str] = OUTPUTS,
                  beside_targets: bool = False) -> None:
    """Refuse an output folder where the outputs could replace a user's file or be read as targets
    by a later run, and make sure that the folder can be written, before the model is loaded.

    The target folder (or, for a folder of targets, a folder inside it) is refused unless
    `beside_targets`; even then no output may take the name of one of the targets. The folder is created if need be and a probe file
    is written and removed there (and any folder made for it)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--workdir {out_dir} is a file; give a folder for the outputs")
    # a folder of targets: not it, nor a folder in it; one target file: not the folder that holds it
    folder = target if os.path.isdir(target) else os.path.dirname(os.path.abspath(target))
    same = _inside(out_dir, folder) and _inside(folder, out_dir)
    if (same or (_inside(out_dir, folder) and os.path.isdir(target))) and not beside_targets:
        raise ValueError(
            f"--workdir {out_dir} is {'the' if same else 'inside the'} target folder {folder}: the outputs would "
            "sit among your images (and be segmented by a later run); give another folder, or pass --outputs_beside_targets"
        )
    targets = {os.path.realpath(p) for p in inputs.paths}
    for stem in visualize.output_stems(inputs.paths):
        for name in _file_names(stem, len(inputs.stacks[0]), outputs):
            if os.path.realpath(os.path.join(out_dir, name)) in targets:
                raise ValueError(f"the output {name} would replace the target {os.path.join(out_dir, name)}; "
                                 "give another --workdir")
    made = []  # the folders the probe creates, removed again: nothing is left if the model fails to load
    folder = os.path.abspath(out_dir)
    while not os.path.exists(folder):
        made.insert(0, folder)
        folder = os.path.dirname(folder)
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir) as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as e:
        raise ValueError(f"cannot write the outputs to --workdir {out_dir}: {e.strerror or e}") from None
    finally:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def _file_names(stem: str, n_concepts: int, outputs: Sequence[str]) -> list[str]:
    """The names `_write` gives the files of one target."""
    drawn = visualize.Pictures(masks=[None] * n_concepts if "masks" in outputs else [],
                               overlay=stem if "overlay" in outputs else None,
                               propagated=[None] * n_concepts if "propagated" in outputs else [])
    return [name for name, _ in drawn.file_names(stem)]


def run(
    predictor: Predictor,
    references: Sequence[str] | Inputs,
    masks: Sequence[str] = (),
    target: str | None = None,
    out_dir: str = ".",
    class_names: Sequence[str] = (),
    instance_prompt: bool = False,
    outputs: Sequence[str] = OUTPUTS,
    threads: int = 4,
) -> list[str]:
    """Segment every target and write its files; returns the written paths. `references` may be
    the `Inputs` that `prepare` returned (then `masks`, `target` and `class_names` are not used).

    Built for folders of thousands of images (or a video's frames): targets are read and decoded
    `threads` at a time in background threads while the device works on earlier batches, outputs
    are encoded and written in background threads, and at most a few batches are held in memory.
    A target that cannot be read is skipped and named at the end (a ValueError after every other
    target is written); every file is written whole or not at all."""
    outputs = check_outputs(outputs)
    inputs = references if isinstance(references, Inputs) else prepare(references, masks, target, class_names)
    images, stacks, names, paths = inputs
    labels = [str(n) for n in names] if names else None
    # as the reference's custom evaluation: soft (resized) reference masks
    context = predictor.encode_context(images, stacks, class_names=names, instance_prompt=instance_prompt, binarize=False)
    written, unreadable = [], []
    read_ahead = 2 * predictor.batch_size * (predictor.prefetch + 1) + threads
    with ThreadPoolExecutor(threads, thread_name_prefix="read") as readers, \
            ThreadPoolExecutor(threads, thread_name_prefix="write") as writers, \
            tqdm(total=len(paths), desc="segmenting", unit="image") as progress:
        stems = dict(zip(paths, visualize.output_stems(paths)))
        reading = collections.deque(readers.submit(_read, p) for p in paths[:read_ahead])
        queued = iter(paths[read_ahead:])
        order: collections.deque = collections.deque()  # (stem, image) of targets handed to the predictor

        def targets():
            while reading:
                path, image, error = reading.popleft().result()
                nxt = next(queued, None)
                if nxt is not None:
                    reading.append(readers.submit(_read, nxt))
                if error:
                    unreadable.append(error)
                    progress.update(1)
                    continue
                order.append((stems[path], image))
                yield image

        writing: collections.deque = collections.deque()
        for pred in predictor.segment_iter(targets(), context):
            stem, image = order.popleft()
            writing.append(writers.submit(_write, out_dir, stem, image, pred, outputs, labels))
            while writing and (writing[0].done() or len(writing) > 2 * threads):
                written += writing.popleft().result()
                progress.update(1)
        for job in writing:
            written += job.result()
            progress.update(1)
    if unreadable:
        done = len(paths) - len(unreadable)
        rest = ("none was written" if done == 0 else f"the other {done} {'was' if done == 1 else 'were'} "
                f"written to {out_dir}")
        raise ValueError(f"{len(unreadable)} of {len(paths)} target{'s' if len(paths) > 1 else ''} could not be "
                         f"read ({rest}): " + "; ".join(unreadable))
    return written


def _read(path: str) -> tuple[str, np.ndarray | None, str | None]:
    try:
        return path, load_image(path), None
    except (FileNotFoundError, ValueError) as e:
        return path, None, str(e)


def _write(out_dir: str, stem: str, image: np.ndarray, pred, outputs: Sequence[str] = OUTPUTS,
           labels: Sequence[str] | None = None) -> list[str]:
    """The files of one target (see `visualize.prediction_pictures`), named after `stem`."""
    written = []
    for name, picture in visualize.prediction_pictures(image, pred, outputs, labels).file_names(stem):
        written.append(os.path.join(out_dir, name))
        atomic_files.write_png(written[-1], picture)
    return written
