"""Reading user images and masks, and the reference's evaluation resize (docs/original.md 5.1).

Images of any mode become 8-bit RGB (grayscale, palette, RGBA, 16-bit); masks become boolean,
checked against their image. Both are turned upright by their EXIF orientation, as image viewers show
them, so a mask drawn on a phone photo as displayed matches it. Every error names the file at fault.

Every file is measured from its header before its pixels are decoded: one of more than `max_pixels()`
pixels (8192 x 8192 unless the environment variable SEGIC_JAX_MAX_PIXELS says otherwise) is refused, so
a small file that declares a huge size (a decompression bomb) never takes the memory it asks for.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from segic_jax.ops.resize import resize


MAX_PIXELS_VARIABLE = "SEGIC_JAX_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 8192 * 8192


def max_pixels() -> int:
    """The largest image, in pixels, that any reader of the project decodes."""
    value = os.environ.get(MAX_PIXELS_VARIABLE, "")
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"{MAX_PIXELS_VARIABLE}={value!r} must be a positive whole number of pixels")
    return limit


class TooLarge(ValueError):
    """An image declares more pixels than the budget allows."""


def check_pixels(width: int, height: int, path: str) -> None:
    """Refuse an image of more than `max_pixels()` pixels, before it is decoded."""
    limit = max_pixels()
    if width * height > limit:
        raise TooLarge(
            f"{path} is {width}x{height} pixels ({width * height / 1e6:.1f} MP), over the limit of "
            f"{limit / 1e6:.1f} MP; shrink it, or raise the limit with {MAX_PIXELS_VARIABLE}=<pixels>"
        )


_PILLOW_LIMIT = threading.Lock()


def open_header(path):
    """Image.open (which reads the header only) with Pillow's own size limit lifted for the call, so
    that `check_pixels` judges every size and names it; Pillow's limit is restored at once."""
    from PIL import Image

    with _PILLOW_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _open(path: str, what: str = "image"):
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}" + (" (it is a folder)" if os.path.isdir(path) else ""))
    try:
        img = open_header(path)
        check_pixels(img.width, img.height, path)
        img.load()
        upright = ImageOps.exif_transpose(img)
    except TooLarge:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read {path} as {'an' if what[0] in 'aeiou' else 'a'} {what} ({e}); is the file complete?") from None
    return upright


def _to_8bit(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        top = 1.0 if array.max(initial=0) <= 1.0 else 255.0
        return np.clip(array / top * 255.0, 0, 255).round().astype(np.uint8)
    return (array.astype(np.float64) / 257.0).round().clip(0, 255).astype(np.uint8)  # 16-bit


def load_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any image file (grayscale, palette, RGBA and 16-bit converted)."""
    img = _open(path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = _to_8bit(np.asarray(img))
        return np.repeat(gray[..., None], 3, axis=-1)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA").convert("RGB")  # drop transparency, keep the colours
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def load_mask(path: str, image_hw: tuple[int, int] | None = None, image_path: str = "the image") -> np.ndarray:
    """(H, W) bool foreground from a mask file: palette masks by index != 0, others by value > 127
    (any colour channel for colour masks; a mask with transparency is first laid over black, so a
    transparent pixel is background whatever its colour). Refuses a mask whose size differs from its
    image or that is empty."""
    img = _open(path, "mask")
    if img.mode == "P":
        fg = np.asarray(img) != 0
    elif img.mode == "1":
        fg = np.asarray(img).astype(bool)
    else:
        if img.mode in ("LA", "PA", "RGBA", "La", "RGBa"):
            rgba = np.asarray(img.convert("RGBA"), np.float32)
            array = rgba[..., :3].max(axis=-1) * (rgba[..., 3] / 255.0)
        else:
            array = np.asarray(img)
            array = _to_8bit(array) if array.dtype != np.uint8 else array
            if array.ndim == 3:
                array = array[..., :3].max(axis=-1)
        fg = array > 127
    if image_hw is not None and fg.shape != tuple(image_hw):
        raise ValueError(
            f"mask {path} is {fg.shape[1]}x{fg.shape[0]} (WxH) but {image_path} is "
            f"{image_hw[1]}x{image_hw[0]}; a mask must have its image's size"
        )
    if not fg.any():
        raise ValueError(f"mask {path} is empty: it marks no pixel (foreground is > 127, or palette index != 0)")
    return fg


def fit_to_model(array: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The reference's evaluation transform: scale the longer side to `size` (bilinear, scale-factor
    semantics, no antialiasing), then pad bottom/right with zeros to (size, size).

    array (H, W) or (H, W, C) -> float32 (size, size[, C]) and the valid (h, w) extent.
    """
    x = np.asarray(array, np.float32)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[..., None]
    h, w = x.shape[:2]
    scale = size / max(h, w)
    x = resize(x, scale_factor=(scale, scale), method="bilinear", axes=(0, 1))
    valid = x.shape[:2]
    out = np.zeros((size, size, x.shape[2]), np.float32)
    out[: valid[0], : valid[1]] = x
    return (out[..., 0] if squeeze else out), (int(valid[0]), int(valid[1]))
