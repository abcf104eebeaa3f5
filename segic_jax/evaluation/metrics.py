"""Segmentation metrics with the community's exact definitions.

Few-shot (HSNet / SEGIC): intersection and union are summed per class over all episodes;
mIoU = mean over the classes seen of sum(I) / max(sum(U), 1), x100; FB-IoU = mean over
foreground and background of sum_c I / sum_c U (docs/benchmarks.md).

Video (davis2017-evaluation): per object and frame, J = IoU (1 when both masks are empty) and
F = boundary F-measure with a tolerance of ceil(0.008 x image diagonal) pixels (boundaries from
`seg2bmap`, dilated with a disk); per object the mean, the recall (fraction of frames > 0.5) and the
decay (mean of the first quarter of frames minus the last); first and last frames are not scored;
objects are 1..max id of the first annotated frame.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


def confusion(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """(4,) int64 pixel counts [fg intersection, fg union, bg intersection, bg union] of binary
    (H, W) masks; pixels where `void` is set count for neither."""
    keep = np.ones(gt.shape, bool) if void is None else ~void
    pred, gt = pred.astype(bool) & keep, gt.astype(bool) & keep
    pred_bg, gt_bg = ~pred & keep, ~gt & keep
    return np.array([(pred & gt).sum(), (pred | gt).sum(), (pred_bg & gt_bg).sum(), (pred_bg | gt_bg).sum()], np.int64)


class IoUMeter:
    """Per-class foreground/background intersection and union, summed over episodes."""

    def __init__(self):
        self.fg_i: dict[int, float] = {}
        self.fg_u: dict[int, float] = {}
        self.bg_i: dict[int, float] = {}
        self.bg_u: dict[int, float] = {}

    def add(self, class_id: int, pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> None:
        self.add_counts(class_id, confusion(pred, gt, void))

    def add_counts(self, class_id: int, counts) -> None:
        """Add one episode's `confusion` counts of a class."""
        for table, value in zip((self.fg_i, self.fg_u, self.bg_i, self.bg_u), counts):
            table[class_id] = table.get(class_id, 0.0) + float(value)

    def class_iou(self) -> dict[int, float]:
        return {c: self.fg_i[c] / max(self.fg_u[c], 1.0) for c in sorted(self.fg_i)}

    def miou(self) -> float:
        ious = self.class_iou()
        return 100.0 * float(np.mean(list(ious.values()))) if ious else 0.0

    def fb_iou(self) -> float:
        fg = sum(self.fg_i.values()) / max(sum(self.fg_u.values()), 1.0)
        bg = sum(self.bg_i.values()) / max(sum(self.bg_u.values()), 1.0)
        return 100.0 * (fg + bg) / 2


def jaccard(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-frame IoU of (F, H, W) masks; 1 where both are empty."""
    gt, pred = gt.astype(bool), pred.astype(bool)
    inter = (gt & pred).sum(axis=(-2, -1))
    union = (gt | pred).sum(axis=(-2, -1))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel boundaries of a binary mask, offset half a pixel towards the origin (Martin's
    seg2bmap, as davis2017-evaluation computes it)."""
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def dilate_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with the disk {dx^2 + dy^2 <= r^2} (skimage's `disk`, as cv2.dilate uses it):
    for each row offset, a horizontal running-window OR of the row's half-width."""
    h, w = mask.shape
    r = int(radius)
    counts = np.zeros((h + 2 * r, w + 2 * r + 1), np.int32)
    counts[r : r + h, r + 1 : r + 1 + w] = mask
    counts = np.cumsum(counts, axis=1)  # counts[y, x] = number of set pixels left of x (padded)
    out = np.zeros((h, w), bool)
    cols = np.arange(w) + r
    for dy in range(-r, r + 1):
        half = int(math.isqrt(r * r - dy * dy))
        rows = counts[r + dy : r + dy + h]
        out |= (rows[:, cols + half + 1] - rows[:, cols - half]) > 0
    return out


def boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008) -> float:
    """Boundary F-measure of one frame's binary masks (davis2017-evaluation's f_measure)."""
    bound_pix = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*gt.shape))
    fg, gtb = seg2bmap(pred), seg2bmap(gt)
    fg_dil, gt_dil = dilate_disk(fg, bound_pix), dilate_disk(gtb, bound_pix)
    n_fg, n_gt = fg.sum(), gtb.sum()
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = (fg & gt_dil).sum() / n_fg
        recall = (gtb & fg_dil).sum() / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


class Statistics(NamedTuple):
    mean: float
    recall: float
    decay: float


def statistics(per_frame: np.ndarray) -> Statistics:
    """Mean, recall (> 0.5) and decay (first quarter minus last quarter) of per-frame values."""
    values = np.asarray(per_frame, np.float64)
    ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64)
    bins = [values[ids[i] : ids[i + 1] + 1] for i in range(4)]
    return Statistics(float(np.nanmean(values)), float(np.nanmean(values > 0.5)),
                      float(np.nanmean(bins[0]) - np.nanmean(bins[3])))


def davis_video(gt: np.ndarray, pred: np.ndarray) -> dict[int, tuple[Statistics, Statistics]]:
    """J and F statistics per object of one video. gt, pred (T, H, W) integer label maps (255 in
    gt is void and counts as background); first and last frames are not scored."""
    gt = np.where(gt == 255, 0, gt)
    objects = range(1, int(gt[0].max()) + 1)
    gt, pred = gt[1:-1], pred[1:-1]
    out = {}
    for obj in objects:
        g, p = gt == obj, pred == obj
        j = jaccard(g, p)
        f = np.array([boundary_f(g[t], p[t]) for t in range(len(g))])
        out[obj] = (statistics(j), statistics(f))
    return out


def davis_summary(per_video: dict[str, dict[int, tuple[Statistics, Statistics]]]) -> dict[str, float]:
    """Global scores (x100) over all objects of all videos, as the DAVIS 2017 benchmark reports."""
    js = [s[0] for objs in per_video.values() for s in objs.values()]
    fs = [s[1] for objs in per_video.values() for s in objs.values()]
    mean = lambda xs, field: 100.0 * float(np.mean([getattr(x, field) for x in xs])) if xs else 0.0
    j, f = mean(js, "mean"), mean(fs, "mean")
    return {"J&F": (j + f) / 2, "J": j, "J-recall": mean(js, "recall"), "J-decay": mean(js, "decay"),
            "F": f, "F-recall": mean(fs, "recall"), "F-decay": mean(fs, "decay")}
