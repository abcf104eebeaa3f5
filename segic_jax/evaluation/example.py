"""A picture of one evaluation episode: what training shows next to its held-out scores
(workdir/images/ and TensorBoard).

The episode shown is a representative one, not simply the first: the first `candidates` one-shot
episodes of the benchmark's seeded list are segmented, and the one whose IoU is nearest the median of
theirs is drawn, its position in the list and its IoU in the caption. Each mask is tinted in the
colour that stands out most against the image under it (`visualize.contrasting_colour`), so a
reference mask on a green object is not tinted green."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from segic_jax import visualize
from segic_jax.data import eval_episodes
from segic_jax.evaluation.benchmarks import BENCHMARKS
from segic_jax.evaluation.evaluate import Options, open_units, prepare
from segic_jax.evaluation.metrics import jaccard
from segic_jax.inference.predictor import Episode


class Example(NamedTuple):
    index: int  # the shown episode's position in the benchmark's episode list
    iou: float  # its IoU, in percent
    median: float  # the median IoU of the candidates
    ious: list  # each candidate's IoU, in list order (episodes 0 .. candidates - 1)
    caption: str
    image: np.ndarray  # (H, W, 3) uint8: the caption over the titled panels


def representative(ious: Sequence[float]) -> int:
    """The position of the IoU nearest the median of `ious` (the earliest on a tie)."""
    ious = np.asarray(ious, np.float64)
    if ious.size == 0:
        raise ValueError("no episode was scored")
    return int(np.argmin(np.abs(ious - np.median(ious))))


def _iou(item, mask: np.ndarray) -> float:
    gt, pred = item.mask, np.asarray(mask, bool)
    if item.void is not None:  # as the scores leave void pixels out
        gt, pred = gt & ~item.void, pred & ~item.void
    return 100 * float(jaccard(gt, pred))


def example(predictor, benchmark: str, data_dir: str, *, dataset: str | None = None, seed: int = 0,
            candidates: int = 20, height: int = 256) -> Example:
    """Segment the first `candidates` one-shot episodes of a few-shot benchmark (its first fold) and
    draw the representative one as titled panels under a caption: the reference with its mask, the
    target with the prediction, and the propagated mask (JET) with its point prompt."""
    if benchmark not in BENCHMARKS or benchmark == "ade20k":
        raise ValueError(f"example_image draws a few-shot episode; {benchmark!r} is not a few-shot benchmark")
    if candidates < 1:
        raise ValueError(f"candidates must be at least 1, got {candidates}")
    unit = prepare(open_units(benchmark, data_dir, 1, [0] if BENCHMARKS[benchmark].folds else None, dataset)[0],
                   Options(episodes=candidates, seed=seed, progress=False), None)
    decoded = []
    for class_id, query, supports in unit.episodes[:candidates]:
        q = eval_episodes.decode_item(benchmark, unit.source[query], class_id)
        r = eval_episodes.decode_item(benchmark, unit.source[supports[0]], class_id)
        decoded.append((q.name or unit.class_names[class_id - 1], r, q))
    predictions = list(predictor.segment_episodes(
        Episode(r.image, r.mask, q.image, class_names=[name]) for name, r, q in decoded))
    ious = [_iou(q, pred.masks[0]) for (_, _, q), pred in zip(decoded, predictions)]
    index = representative(ious)
    (name, r, q), pred = decoded[index], predictions[index]
    median = float(np.median(ious))
    if len(ious) == 1:
        caption = f"{benchmark} episode 0: IoU {ious[0]:.1f} (the only one scored)"
    else:
        caption = (f"{benchmark} episode {index}: IoU {ious[index]:.1f}, the nearest to the median ({median:.1f}) "
                   f"of episodes 0-{len(ious) - 1}")
    strip = visualize.panel_strip([
        (f"reference: {name}", visualize.mask_overlay(r.image, r.mask, visualize.contrasting_colour(r.image, r.mask))),
        (f"prediction (IoU {ious[index]:.1f})",
         visualize.mask_overlay(q.image, pred.masks[0], visualize.contrasting_colour(q.image, pred.masks[0]))),
        ("propagated mask + point", visualize.draw_point(visualize.heatmap_overlay(q.image, pred.similarity[0]), pred.points[0])),
    ], height=height)
    image = visualize.titled(strip, caption, font_px=int(np.clip(height / 16, 10, 40)))
    return Example(index, ious[index], median, ious, caption, image)


def example_image(predictor, benchmark: str, data_dir: str, *, dataset: str | None = None, seed: int = 0,
                  candidates: int = 20, height: int = 256) -> np.ndarray:
    """`example(...).image`: the representative episode's picture, (H, W, 3) uint8."""
    return example(predictor, benchmark, data_dir, dataset=dataset, seed=seed, candidates=candidates,
                   height=height).image
