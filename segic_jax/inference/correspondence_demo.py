"""The correspondence demo job (main.py --mode correspondence): DINOv2 features of a reference and a
target, the reference mask's mean feature, and its cosine-similarity map on the target (SEGIC's
propagated mask) with its peak (SEGIC's point prompt); the maths is segic_jax.ops.correspondence.

Outputs in the workdir: `reference.png` (reference with its mask), `target_propagated.png` (JET
heatmap of the propagated mask over the target, peak marked), `target_truth.png`, and
`summary.json` with the figures printed at the end.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from segic_jax import atomic_files, visualize
from segic_jax.data.synthetic import synthetic_pair
from segic_jax.models import dinov2
from segic_jax.models.encoders import build_encoder
from segic_jax.ops.correspondence import masked_mean_features, peak_points, similarity_maps


@nnx.jit
def propagate(encoder: dinov2.Dinov2, images: jax.Array, ref_mask: jax.Array):
    """images (2, S, S, 3) uint8 [reference, target]; ref_mask (S, S) -> (S, S) map, (x, y) peak."""
    size = images.shape[1]
    feats = dinov2.patch_features(encoder, images)  # (2, h, w, C)
    vec = masked_mean_features(feats[:1], ref_mask[None, None])  # (1, 1, C)
    sim = similarity_maps(feats[1:], vec, (size // 4, size // 4), (size, size))[0, 0]
    return sim, peak_points(sim)


def run(config, workdir: str) -> dict:
    size = config.image_size
    if size % 14:
        raise ValueError(f"config.image_size must be a multiple of 14 (DINOv2's patch), got {size}")
    encoder, weights = build_encoder(config)
    print(f"encoder: DINOv2 {encoder.cfg.embed_dim}-d x {encoder.cfg.depth} blocks, {weights}, {config.dtype}")
    pair = synthetic_pair(config.seed, size)
    print(f"synthetic pair: a {pair['class_name']} at {size}x{size} px")
    images = jnp.asarray(np.stack([pair["reference_image"], pair["target_image"]]))
    ref_mask = jnp.asarray(pair["reference_mask"], jnp.float32)

    t0 = time.perf_counter()
    sim, point = jax.block_until_ready(propagate(encoder, images, ref_mask))
    t1 = time.perf_counter()
    sim, point = jax.block_until_ready(propagate(encoder, images, ref_mask))
    t2 = time.perf_counter()

    sim, point = np.asarray(sim), np.asarray(point)
    truth = pair["target_mask"]
    x, y = int(point[0]), int(point[1])
    summary = {
        "weights": weights,
        "class": pair["class_name"],
        "image_size": size,
        "peak_xy": [x, y],
        "peak_on_target_object": bool(truth[y, x]),
        "mean_similarity_on_object": float(sim[truth].mean()),
        "mean_similarity_off_object": float(sim[~truth].mean()),
        "compile_and_run_s": round(t1 - t0, 3),
        "run_s": round(t2 - t1, 3),
    }
    atomic_files.write_png(os.path.join(workdir, "reference.png"), visualize.mask_overlay(pair["reference_image"], pair["reference_mask"]))
    atomic_files.write_png(os.path.join(workdir, "target_truth.png"), visualize.mask_overlay(pair["target_image"], truth))
    heat = visualize.draw_point(visualize.heatmap_overlay(pair["target_image"], sim), (x, y))
    atomic_files.write_png(os.path.join(workdir, "target_propagated.png"), heat)
    atomic_files.write_json(os.path.join(workdir, "summary.json"), summary)
    for key, value in summary.items():
        print(f"  {key}: {value}")
    print(f"wrote reference.png, target_truth.png, target_propagated.png and summary.json to {workdir}")
    return summary
