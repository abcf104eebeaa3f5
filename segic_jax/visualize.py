"""Overlays and heatmaps for masks and propagated masks (the paper's Figure 1 style)."""

from __future__ import annotations

import numpy as np


def jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H, W) -> uint8 RGB with the JET colormap (blue = low, red = high)."""
    v = np.clip(np.asarray(values, np.float32), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0], np.float32)  # r, g, b
    return (np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0) * 255).astype(np.uint8)


def blend(image: np.ndarray, colour_layer: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    out = (1 - alpha) * image.astype(np.float32) + alpha * colour_layer.astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def mask_overlay(image: np.ndarray, mask: np.ndarray, colour=(255, 60, 60), alpha: float = 0.5) -> np.ndarray:
    """Tint the masked pixels of an (H, W, 3) uint8 image."""
    layer = image.copy()
    layer[mask.astype(bool)] = colour
    return blend(image, layer, alpha)


def heatmap_overlay(image: np.ndarray, values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """JET heatmap of `values` over the image, mapped from [lo, hi] (default: the values' range)."""
    values = np.asarray(values, np.float32)
    lo = float(values.min()) if lo is None else lo
    hi = float(values.max()) if hi is None else hi
    return blend(image, jet((values - lo) / max(hi - lo, 1e-12)), 0.5)


def draw_point(image: np.ndarray, xy, radius: int = 6, colour=(255, 255, 255)) -> np.ndarray:
    """A filled disc with a dark rim at pixel (x, y)."""
    out = image.copy()
    h, w = out.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(xx - xy[0], yy - xy[1])
    out[d <= radius + 2] = (0, 0, 0)
    out[d <= radius] = colour
    return out
