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
