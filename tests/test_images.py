"""The readers of user images and masks: the pixel budget checked before decoding, EXIF orientation,
masks with transparency."""

import os
import resource

import numpy as np
import pytest
from PIL import Image

from segic_jax.data import images


def _bomb(path, side):
    """A ~1/1000 compressed 1-bit PNG that declares side x side pixels."""
    Image.new("1", (side, side)).save(path, optimize=True)
    return str(path)


def test_a_small_file_declaring_a_huge_size_is_refused_before_decoding(tmp_path, monkeypatch):
    bomb = _bomb(tmp_path / "bomb.png", 12000)
    assert os.path.getsize(bomb) < 100_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for read in (images.load_image, images.load_mask):
        with pytest.raises(images.TooLarge, match=r"bomb\.png is 12000x12000 pixels \(144\.0 MP\), over the limit of 67\.1 MP; .*SEGIC_JAX_MAX_PIXELS"):
            read(bomb)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 100  # decoding it would take 144 MB as 8-bit gray, 432 MB as RGB
    # past Pillow's own limit (2 x 89 MP) the message is ours too, not Pillow's DecompressionBombError
    with pytest.raises(images.TooLarge, match=r"huge\.png is 20000x20000 pixels"):
        images.load_image(_bomb(tmp_path / "huge.png", 20000))
    # the limit is the user's to set
    monkeypatch.setenv(images.MAX_PIXELS_VARIABLE, str(12000 * 12000))
    assert images.max_pixels() == 144_000_000
    monkeypatch.setenv(images.MAX_PIXELS_VARIABLE, "100")
    small = tmp_path / "small.png"
    Image.new("RGB", (11, 10)).save(small)
    with pytest.raises(images.TooLarge, match=r"11x10 pixels"):
        images.load_image(str(small))
    monkeypatch.setenv(images.MAX_PIXELS_VARIABLE, "lots")
    with pytest.raises(ValueError, match=r"SEGIC_JAX_MAX_PIXELS='lots' must be a positive whole number"):
        images.load_image(str(small))


def test_exif_orientation_is_applied_to_images_and_masks(tmp_path, rng):
    stored = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)  # 30 wide, 20 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": shown 20 wide, 30 high
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=100)
    shown = images.load_image(str(tmp_path / "phone.jpg"))
    assert shown.shape == (30, 20, 3)
    raw = np.asarray(Image.open(tmp_path / "phone.jpg").convert("RGB"))
    np.testing.assert_array_equal(shown, np.rot90(raw, k=-1))  # 90 degrees clockwise
    # a mask drawn on the photo as displayed matches it
    drawn = np.zeros((30, 20), np.uint8)
    drawn[5:10, 2:8] = 255
    Image.fromarray(drawn).save(tmp_path / "drawn.png")
    np.testing.assert_array_equal(images.load_mask(str(tmp_path / "drawn.png"), shown.shape[:2]), drawn > 0)
    # and a mask that carries the same orientation tag is turned with it
    Image.fromarray(np.rot90(drawn, k=1).copy()).save(tmp_path / "tagged.png", exif=exif)
    np.testing.assert_array_equal(images.load_mask(str(tmp_path / "tagged.png"), shown.shape[:2]), drawn > 0)


def test_masks_with_transparency_are_read_over_black(tmp_path):
    gray = np.array([[255, 255, 0, 200]], np.uint8)
    alpha = np.array([[255, 0, 255, 255]], np.uint8)
    Image.fromarray(np.stack([gray, alpha], -1), "LA").save(tmp_path / "la.png")
    # white and opaque; white but transparent; black and opaque; light and opaque
    np.testing.assert_array_equal(images.load_mask(str(tmp_path / "la.png")), [[True, False, False, True]])
    rgba = np.zeros((1, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = gray, alpha
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(images.load_mask(str(tmp_path / "rgba.png")), [[True, False, False, True]])


def test_dataset_builds_refuse_images_over_the_budget_by_name(tmp_path):
    from segic_jax.data.builders.common import LayoutError, image_size, read_stored_pixels

    bomb = _bomb(tmp_path / "label.png", 12000)
    with open(bomb, "rb") as f:
        data = f.read()
    with pytest.raises(LayoutError, match=r"scene\.jpg is 12000x12000 pixels"):
        image_size(data, "scene.jpg")
    with pytest.raises(LayoutError, match=r"label\.png is 12000x12000 pixels"):
        read_stored_pixels(bomb)
