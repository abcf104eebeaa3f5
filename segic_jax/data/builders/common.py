"""What every dataset builder shares: checking the user's layout with errors that name the path,
and reading files."""

from __future__ import annotations

import json
import os


class LayoutError(ValueError):
    """The files under --manual_dir are not in the layout the builder reads."""


def require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise LayoutError(f"missing folder {path} ({what})")
    return path


def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise LayoutError(f"missing file {path} ({what})")
    return path


def load_json(path: str):
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise LayoutError(f"{path} is not valid JSON: {e}") from None


def read_bytes(path: str) -> bytes:
    if not os.path.isfile(path):
        raise LayoutError(f"missing image {path}")
    with open(path, "rb") as f:
        return f.read()


def pick_splits(builder, present: dict, expected: dict[str, str]) -> dict:
    """The splits to build: those asked for (`builder.requested_splits`, set by `build --splits`;
    default: every split of the dataset), each of which must be present. `present` maps a split
    found under --manual_dir to what builds it, `expected` every split to the file or folder it
    needs. A missing one is an error naming that path, never a dataset built without it."""
    requested = list(getattr(builder, "requested_splits", None) or expected)
    unknown = [s for s in requested if s not in expected]
    if unknown:
        raise LayoutError(f"{builder.name} has no split {', '.join(unknown)}; its splits are {', '.join(expected)}")
    missing = [s for s in requested if s not in present]
    if missing:
        have = [s for s in expected if s in present]
        raise LayoutError(
            "missing " + "; ".join(f"{expected[s]} (the {s} split)" for s in missing)
            + (f". To build only what you have: --splits {','.join(have)}" if have else "")
        )
    return {s: present[s] for s in requested}


def image_size(data: bytes, path: str) -> tuple[int, int]:
    """(height, width) of an encoded image, read from its header; an unreadable file, or one over the
    pixel budget (`data.images.max_pixels`), names its path."""
    import io

    from segic_jax.data import images

    try:
        with images.open_header(io.BytesIO(data)) as img:
            images.check_pixels(img.width, img.height, path)
            return img.height, img.width
    except images.TooLarge as e:
        raise LayoutError(str(e)) from None
    except Exception as e:  # PIL raises several types for a damaged file
        raise LayoutError(f"cannot read {path} as an image ({e})") from None


def read_stored_pixels(path: str):
    """The pixel values of an image file as stored, in its own mode (a palette image's indices, not its
    colours: a label map's class ids), as a NumPy array; a damaged or truncated file, or one over the
    pixel budget, names its path. As the original reads its datasets, no EXIF orientation is applied:
    the annotations of the public datasets refer to the stored pixels."""
    import numpy as np

    from segic_jax.data import images

    try:
        with images.open_header(path) as img:
            images.check_pixels(img.width, img.height, path)
            return np.asarray(img)
    except images.TooLarge as e:
        raise LayoutError(str(e)) from None
    except Exception as e:
        raise LayoutError(f"cannot read {path} as an image ({e}); is the file complete?") from None


def gray_pixels(data: bytes):
    """(H, W) uint8 luminance of an encoded image (Pillow's "L" conversion of any mode), as the
    evaluation reads an FSS-style mask (`data.sources.decode_gray`)."""
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L"), np.uint8)


def check_same_size(mask_path: str, mask_hw: tuple[int, int], image_path: str, image_hw: tuple[int, int]) -> None:
    if tuple(mask_hw) != tuple(image_hw):
        raise LayoutError(f"{mask_path} is {mask_hw[1]}x{mask_hw[0]} but its image {image_path} is "
                          f"{image_hw[1]}x{image_hw[0]}; a mask must have its image's size")
