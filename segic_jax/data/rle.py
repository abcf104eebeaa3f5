"""COCO-style instance masks: polygons, uncompressed (crowd) RLE and compressed RLE, all stored as
compact compressed RLE strings and decoded with pycocotools."""

from __future__ import annotations

import json

import numpy as np


def to_rle(segmentation, height: int, width: int) -> dict:
    """Compressed RLE {'size': [h, w], 'counts': str} of a COCO/LVIS `segmentation` field."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons, possibly several parts
        if not segmentation:
            raise ValueError("empty polygon list")
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, *segmentation["size"])  # uncompressed (crowd)
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        rle = dict(segmentation)
    else:
        raise ValueError(f"unknown segmentation format: {type(segmentation).__name__}")
    if list(rle["size"]) != [height, width]:
        raise ValueError(f"mask size {list(rle['size'])} differs from the image's {[height, width]}")
    counts = rle["counts"]
    return {"size": [int(height), int(width)], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def encode(segmentation, height: int, width: int) -> str:
    """The stored form: compressed RLE as a JSON string."""
    return json.dumps(to_rle(segmentation, height, width))


def decode(stored) -> np.ndarray:
    """(H, W) bool mask from the stored JSON string (str or bytes)."""
    from pycocotools import mask as mask_utils

    rle = json.loads(stored.decode() if isinstance(stored, bytes) else stored)
    rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool)


def from_mask(mask: np.ndarray) -> str:
    """The stored form of a binary mask."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return json.dumps({"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")})
