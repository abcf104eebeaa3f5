"""Image and mask augmentations of SEGIC's instance pipeline (docs/original.md 4.3), in NumPy,
driven by an explicit np.random.Generator so that grain can make them deterministic.
Images are float32 in [0, 255], (H, W, 3); masks bool (N, H, W)."""

from __future__ import annotations

import math

import numpy as np

from segic_jax.ops.resize import resize

GRAY = np.array([0.2989, 0.587, 0.114], np.float32)  # torchvision's rgb_to_grayscale weights


def random_resized_crop_box(rng: np.random.Generator, h: int, w: int, scale=(0.3, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params: 10 tries, then a centre crop. -> top, left, ch, cw."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def resize_nearest(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PyTorch's 'nearest' (floor(dst * in / out)) for (N, H, W) masks."""
    h, w = masks.shape[-2:]
    rows = np.minimum((np.arange(size[0]) * (h / size[0])).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(size[1]) * (w / size[1])).astype(np.int64), w - 1)
    return masks[..., rows[:, None], cols[None, :]]


def resized_crop(image, masks, box, size: int):
    top, left, ch, cw = box
    image = resize(np.ascontiguousarray(image[top : top + ch, left : left + cw]), size=(size, size), axes=(0, 1))
    masks = resize_nearest(masks[:, top : top + ch, left : left + cw], (size, size))
    return image, masks


def _rgb_to_hsv(x):
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc, minc = x.max(-1), x.min(-1)
    v = maxc
    delta = maxc - minc
    s = np.where(maxc > 0, delta / np.maximum(maxc, 1e-12), 0.0)
    safe = np.maximum(delta, 1e-12)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = np.where(maxc == r, bc - gc, np.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    return np.stack([h, s, v], -1)


def _hsv_to_rgb(x):
    h, s, v = x[..., 0], x[..., 1], x[..., 2]
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(np.int64) % 6
    choices = [np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    return np.select([(i == k)[..., None] for k in range(6)], choices)


def color_jitter(rng, image, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1):
    """torchvision ColorJitter on a [0, 255] image: the four adjustments in a random order."""
    x = image / 255.0
    factors = {
        "brightness": rng.uniform(1 - brightness, 1 + brightness),
        "contrast": rng.uniform(1 - contrast, 1 + contrast),
        "saturation": rng.uniform(1 - saturation, 1 + saturation),
        "hue": rng.uniform(-hue, hue),
    }
    for op in rng.permutation(list(factors)):
        f = factors[op]
        if op == "brightness":
            x = np.clip(x * f, 0, 1)
        elif op == "contrast":
            x = np.clip(f * x + (1 - f) * (x @ GRAY).mean(), 0, 1)
        elif op == "saturation":
            x = np.clip(f * x + (1 - f) * (x @ GRAY)[..., None], 0, 1)
        else:
            hsv = _rgb_to_hsv(x)
            hsv[..., 0] = (hsv[..., 0] + f) % 1.0
            x = _hsv_to_rgb(hsv)
    return (x * 255.0).astype(np.float32)
