"""A picture of one evaluation episode: what training shows next to its held-out scores
(workdir/images/ and TensorBoard)."""

from __future__ import annotations

import numpy as np

from segic_jax import visualize
from segic_jax.data import eval_episodes
from segic_jax.evaluation.benchmarks import BENCHMARKS
from segic_jax.evaluation.evaluate import Options, open_units, prepare
from segic_jax.evaluation.metrics import jaccard


def example_image(predictor, benchmark: str, data_dir: str, *, dataset: str | None = None, seed: int = 0,
                  height: int = 256) -> np.ndarray:
    """The first one-shot episode of a few-shot benchmark as one picture of titled panels: the
    reference with its mask (green), the target with the prediction (red), and the propagated mask
    (JET) with its point prompt. (H, W, 3) uint8."""
    if benchmark not in BENCHMARKS or benchmark == "ade20k":
        raise ValueError(f"example_image draws a few-shot episode; {benchmark!r} is not a few-shot benchmark")
    unit = prepare(open_units(benchmark, data_dir, 1, [0] if BENCHMARKS[benchmark].folds else None, dataset)[0],
                   Options(episodes=1, seed=seed, progress=False), None)
    class_id, query, supports = unit.episodes[0]
    q = eval_episodes.decode_item(benchmark, unit.source[query], class_id)
    r = eval_episodes.decode_item(benchmark, unit.source[supports[0]], class_id)
    name = q.name or unit.class_names[class_id - 1]
    (pred,) = predictor.segment([q.image], predictor.encode_context([r.image], [r.mask], class_names=[name]))
    iou = 100 * float(jaccard(q.mask, pred.masks[0]))
    return visualize.panel_strip([
        (f"reference: {name}", visualize.mask_overlay(r.image, r.mask, colour=visualize.REFERENCE_COLOUR)),
        (f"prediction (IoU {iou:.1f})", visualize.mask_overlay(q.image, pred.masks[0])),
        ("propagated mask + point", visualize.draw_point(visualize.heatmap_overlay(q.image, pred.similarity[0]), pred.points[0])),
    ], height=height)
