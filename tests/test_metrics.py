"""Metrics against hand-computed cases (few-shot IoU, DAVIS J and F).

The boundary F-measure, disk dilation, J and the mean/recall/decay statistics were also checked
once against davis2017-evaluation itself (with OpenCV and scikit-image) on 40 random mask pairs:
identical results. That package is not a dependency; these tests pin the definitions by hand."""

import numpy as np
import pytest

from segic_jax.evaluation import metrics


def test_iou_meter_sums_per_class_then_averages(rng):
    meter = metrics.IoUMeter()
    gt = np.zeros((4, 4), bool)
    gt[:2] = True  # 8 pixels
    pred = np.zeros((4, 4), bool)
    pred[:1] = True  # 4 pixels, inside gt
    meter.add(1, pred, gt)  # fg I 4 U 8; bg I 8 U 12
    meter.add(1, gt, gt)  # fg I 8 U 8; bg I 8 U 8
    meter.add(2, np.zeros_like(gt), gt)  # fg I 0 U 8; bg I 8 U 16
    assert meter.class_iou() == {1: 12 / 16, 2: 0.0}
    assert meter.miou() == pytest.approx(100 * (0.75 + 0) / 2)
    assert meter.fb_iou() == pytest.approx(100 * ((12 / 24) + (24 / 36)) / 2)
    void = np.zeros_like(gt)
    void[2:] = True
    only = metrics.IoUMeter()
    only.add(3, pred, gt, void)  # the void half counts nowhere: fg I 4 U 8, bg I 0 U 4
    assert only.class_iou() == {3: 0.5} and only.fb_iou() == pytest.approx(100 * (0.5 + 0) / 2)


def test_jaccard_counts_two_empty_masks_as_perfect():
    gt = np.zeros((3, 4, 4), bool)
    pred = np.zeros((3, 4, 4), bool)
    gt[1, :2] = True
    pred[1, :1] = True
    gt[2, 0, 0] = True
    np.testing.assert_allclose(metrics.jaccard(gt, pred), [1.0, 0.5, 0.0])


def test_seg2bmap_by_hand():
    seg = np.zeros((5, 5), bool)
    seg[1:3, 1:3] = True
    expected = np.zeros((5, 5), bool)
    expected[0, 0:3] = True  # pixels whose right, lower or lower-right neighbour differs
    expected[1:3, 0] = True
    expected[1, 2] = expected[2, 1] = expected[2, 2] = True
    np.testing.assert_array_equal(metrics.seg2bmap(seg), expected)


def test_disk_dilation_equals_brute_force(rng):
    for _ in range(10):
        mask = rng.uniform(size=(17, 23)) > 0.97
        r = int(rng.integers(1, 6))
        brute = np.zeros_like(mask)
        for y, x in zip(*np.nonzero(mask)):
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    if dx * dx + dy * dy <= r * r and 0 <= y + dy < 17 and 0 <= x + dx < 23:
                        brute[y + dy, x + dx] = True
        np.testing.assert_array_equal(metrics.dilate_disk(mask, r), brute)


def test_boundary_f_edge_cases_and_tolerance():
    square = np.zeros((100, 100), bool)
    square[30:60, 30:60] = True
    empty = np.zeros_like(square)
    assert metrics.boundary_f(square, square) == 1.0
    assert metrics.boundary_f(empty, empty) == 1.0
    assert metrics.boundary_f(square, empty) == 0.0  # nothing predicted: precision 1, recall 0
    assert metrics.boundary_f(empty, square) == 0.0
    shifted = np.roll(square, 1, axis=1)
    assert metrics.boundary_f(square, shifted) == 1.0  # 1 px off, tolerance ceil(0.008 * 141.4) = 2 px
    far = np.roll(square, 5, axis=1)
    assert 0 < metrics.boundary_f(square, far) < 1


def test_statistics_by_hand():
    s = metrics.statistics(np.array([1.0, 1.0, 0.0, 0.0]))
    assert s == (0.5, 0.5, 1.0)
    s = metrics.statistics(np.array([0.2, 0.9, 0.6, 0.4, 1.0]))
    # bins by round(linspace(1, 5, 5)) - 1 = [0, 1, 2, 3, 4]: first [0.2, 0.9], last [0.4, 1.0]
    assert s.mean == pytest.approx(0.62) and s.recall == pytest.approx(0.6) and s.decay == pytest.approx(0.55 - 0.7)


def test_davis_video_scores_objects_and_skips_first_and_last_frames():
    t, h, w = 5, 40, 40
    gt = np.zeros((t, h, w), np.uint8)
    gt[:, 5:15, 5:15] = 1
    gt[:, 20:35, 20:35] = 2
    gt[:, 0, :] = 255  # void border row: background for scoring
    pred = np.where(gt == 1, 1, 0).astype(np.uint8)  # object 1 perfect, object 2 missed
    pred[0] = pred[-1] = 2  # garbage on the unscored first and last frames
    scores = metrics.davis_video(gt, pred)
    assert set(scores) == {1, 2}
    (j1, f1), (j2, f2) = scores[1], scores[2]
    assert j1 == (1.0, 1.0, 0.0) and f1 == (1.0, 1.0, 0.0)
    assert j2.mean == 0.0 and f2.mean == 0.0
    summary = metrics.davis_summary({"video": scores})
    assert summary["J&F"] == pytest.approx(50.0) and summary["J-recall"] == pytest.approx(50.0)
