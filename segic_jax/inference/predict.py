"""The predict job: segment target image(s) given reference image(s) and mask(s).

For each target `NAME.*` it writes to the output directory:
  NAME_mask{j}.png         the binary mask of concept j (0/255), at the target's resolution;
  NAME_overlay.png         all concepts' masks tinted over the target;
  NAME_propagated{j}.png   concept j's propagated mask (cosine similarity) as a JET heatmap over
                           the target, with the point prompt marked (the paper's Figure 1 style).
References with the same class name are shots of one concept; without class names every
reference is its own concept.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from segic_jax import files, visualize
from segic_jax.data.images import load_image, load_mask
from segic_jax.inference.predictor import Predictor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
PALETTE = np.array(
    [(255, 60, 60), (60, 200, 60), (60, 120, 255), (255, 200, 40), (200, 60, 220), (40, 210, 210), (255, 130, 40), (150, 150, 255)],
    np.uint8,
)


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
    images, single = [], []
    for ref, mask in zip(references, masks):
        image = load_image(ref)
        images.append(image)
        single.append(load_mask(mask, image.shape[:2], ref))
    concepts = list(dict.fromkeys(class_names)) if class_names else list(range(len(references)))
    keys = class_names if class_names else list(range(len(references)))
    stacks = []
    for image, mask, key in zip(images, single, keys):
        stack = np.zeros((len(concepts),) + image.shape[:2], bool)
        stack[concepts.index(key)] = mask
        stacks.append(stack)
    return images, stacks, (concepts if class_names else None)


def run(
    predictor: Predictor,
    references: Sequence[str],
    masks: Sequence[str],
    target: str,
    out_dir: str,
    class_names: Sequence[str] = (),
    instance_prompt: bool = False,
) -> list[str]:
    """Segment every target and write its files; returns the written paths."""
    images, stacks, names = build_context_inputs(references, masks, class_names)
    paths = target_paths(target)
    targets = [load_image(p) for p in paths]  # read them all first: a bad file fails before any output
    # as the reference's custom evaluation: soft (resized) reference masks
    context = predictor.encode_context(images, stacks, class_names=names, instance_prompt=instance_prompt, binarize=False)
    written = []
    bs = predictor.batch_size
    with tqdm(total=len(paths), desc="segmenting", unit="image") as progress:
        for start in range(0, len(paths), bs):
            preds = predictor.segment(targets[start : start + bs], context)
            for path, image, pred in zip(paths[start : start + bs], targets[start : start + bs], preds):
                written += _write(out_dir, path, image, pred)
                progress.update(1)
    return written


def _write(out_dir: str, path: str, image: np.ndarray, pred) -> list[str]:
    stem = os.path.splitext(os.path.basename(path))[0]
    written = []
    overlay = image.copy()
    for j, mask in enumerate(pred.masks):
        name = os.path.join(out_dir, f"{stem}_mask{j}.png")
        files.write_png(name, mask.astype(np.uint8) * 255)
        overlay = visualize.mask_overlay(overlay, mask, tuple(int(c) for c in PALETTE[j % len(PALETTE)]))
        heat = visualize.draw_point(visualize.heatmap_overlay(image, pred.similarity[j]), pred.points[j])
        heat_name = os.path.join(out_dir, f"{stem}_propagated{j}.png")
        files.write_png(heat_name, heat)
        written += [name, heat_name]
    overlay_name = os.path.join(out_dir, f"{stem}_overlay.png")
    files.write_png(overlay_name, overlay)
    return written + [overlay_name]
