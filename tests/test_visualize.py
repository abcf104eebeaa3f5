"""Pictures that read at any size: outlines visible over an object of the mask's own colour, a point
marker scaled to the image, titled panels, legends that keep the overlay's size."""

import numpy as np

from segic_jax import visualize


def test_an_outlined_mask_shows_over_an_object_of_its_own_colour():
    image = np.zeros((300, 300, 3), np.uint8)
    image[:] = visualize.PREDICTION_COLOUR  # the object has the tint's colour
    mask = np.zeros((300, 300), bool)
    mask[100:200, 100:200] = True
    plain = visualize.mask_overlay(image, mask, outlined=False)
    assert (plain == image).all()  # a tint alone disappears
    out = visualize.mask_overlay(image, mask)
    changed = (out != image).any(-1)
    inner, rim = visualize.outline(mask, visualize.line_width(image.shape))
    assert changed[rim].all() and not changed[~rim].any()  # the dark rim just outside the mask
    assert (out[rim] == 0).all() and inner.sum() > 0 and not (inner & rim).any()


def test_the_point_marker_scales_with_the_image():
    for shape in [(15, 20), (480, 640), (3000, 4000)]:
        image = np.full(shape + (3,), 128, np.uint8)
        out = visualize.draw_point(image, (shape[1] // 2, shape[0] // 2))
        marked = (out != 128).any(-1).sum()
        share = marked / (shape[0] * shape[1])
        assert 0.0005 < share < 0.08, (shape, share)  # seen on a 4000x3000 photo, not half of a 20x15 map
    # a point at the border draws what fits and never fails
    assert visualize.draw_point(np.zeros((10, 10, 3), np.uint8), (9.6, -0.4)).shape == (10, 10, 3)


def test_titles_and_legends():
    image = np.full((100, 160, 3), 200, np.uint8)
    out = visualize.titled(image, "reference: dog")
    assert out.shape[1] == 160 and out.shape[0] > 100
    bar = out[: out.shape[0] - 100]
    assert (bar > 128).any() and (bar == 32).any()  # white lettering on the dark bar
    np.testing.assert_array_equal(out[-100:], image)

    legend = visualize.with_legend(image, [("dog", (255, 0, 0)), ("cat", (0, 0, 255))])
    assert legend.shape == image.shape  # still pixel-aligned with the target
    assert ((legend == (255, 0, 0)).all(-1)).any() and ((legend == (0, 0, 255)).all(-1)).any()

    strip = visualize.panel_strip([("a", image), ("b", np.zeros((50, 50, 3), np.uint8))], height=64)
    assert strip.shape[0] > 64 and strip.shape[1] == round(160 * 64 / 100) + 4 + 64


def test_the_tint_stands_out_from_what_it_covers():
    mask = np.zeros((60, 80), bool)
    mask[20:40, 20:50] = True
    for colour in [(40, 180, 60), (220, 40, 40), (40, 80, 220), (230, 210, 40)]:  # the synthetic scenes' colours
        scene = np.full((60, 80, 3), colour, np.uint8)  # a scene full of objects of one colour
        tint = visualize.contrasting_colour(scene, mask)
        assert tint in visualize.TINTS
        others = [np.linalg.norm(np.subtract(t, colour)) for t in visualize.TINTS]
        assert np.linalg.norm(np.subtract(tint, colour)) == max(others)  # the farthest candidate
    green_scene = np.full((60, 80, 3), (40, 180, 60), np.uint8)
    assert visualize.contrasting_colour(green_scene, mask) != visualize.REFERENCE_COLOUR
    # the mask's own pixels count: a green object on a grey scene is not tinted green either
    grey = np.full((60, 80, 3), 128, np.uint8)
    grey[mask] = (40, 180, 60)
    tint = visualize.contrasting_colour(grey, mask)
    assert np.linalg.norm(np.subtract(tint, (40, 180, 60))) > 150
    # an empty mask falls back to the whole image; the earlier candidate wins a tie
    assert visualize.contrasting_colour(green_scene, np.zeros((60, 80), bool)) == visualize.contrasting_colour(green_scene)
    assert visualize.contrasting_colour(np.full((2, 2, 3), 100, np.uint8), candidates=[(0, 0, 0), (255, 255, 255)]) == (255, 255, 255)
    assert visualize.contrasting_colour(np.full((2, 2, 3), 127.5), candidates=[(0, 0, 0), (255, 255, 255)]) == (0, 0, 0)


class _WholeImage:
    """Predicts every pixel of each target, so an episode's IoU is its object's share of the target."""

    def segment_episodes(self, episodes, binarize=True):
        from segic_jax.inference.predictor import Prediction

        for e in episodes:
            h, w = e.target.shape[:2]
            yield Prediction(logits=np.ones((1, h, w), np.float32), masks=np.ones((1, h, w), bool),
                             similarity=np.zeros((1, h, w), np.float32), points=np.zeros((1, 2)))


def test_the_example_picture_shows_the_median_episode(eval_data_dir):
    from segic_jax.data import eval_episodes
    from segic_jax.data.sources import data_source
    from segic_jax.evaluation import example

    assert example.representative([8.5, 70.0, 40.0, 41.0, 3.0]) == 2  # the median 40.0
    assert example.representative([10.0, 30.0, 20.0, 40.0]) == 1  # median 25: 30 and 20 tie, the earlier wins
    shown = example.example(_WholeImage(), "synthetic", eval_data_dir, dataset="synthetic_incontext/tiny",
                            candidates=13, height=96)
    # the IoUs, recomputed here from the benchmark's own episode list
    source = data_source("synthetic_incontext/tiny", "test", eval_data_dir)
    expected = [100 * eval_episodes.decode_item("synthetic", source[e.query], e.class_id).mask.mean()
                for e in eval_episodes.synthetic(source, 1, 13, 0)]
    np.testing.assert_allclose(shown.ious, expected, rtol=1e-6)
    assert len(set(np.round(expected, 3))) > 2
    assert shown.index == int(np.argmin(np.abs(np.asarray(expected) - np.median(expected))))
    assert shown.index != 0  # this data's first episode is not its median one: the choice is visible
    assert shown.iou == shown.ious[shown.index] and shown.median == np.median(expected)
    assert f"episode {shown.index}: IoU {shown.iou:.1f}" in shown.caption and "episodes 0-12" in shown.caption
    assert shown.image.dtype == np.uint8 and shown.image.shape[0] > 96
    np.testing.assert_array_equal(
        example.example_image(_WholeImage(), "synthetic", eval_data_dir, dataset="synthetic_incontext/tiny",
                              candidates=13, height=96), shown.image)
    one = example.example(_WholeImage(), "synthetic", eval_data_dir, dataset="synthetic_incontext/tiny",
                          candidates=1, height=96)
    assert one.index == 0 and one.caption == f"synthetic episode 0: IoU {expected[0]:.1f} (the only one scored)"
