"""Pictures of masks and propagated masks (the paper's Figure 1 style) that read at any size.

Masks are tinted and outlined (a band in the mask's colour with a dark rim outside it, so that a mask
stays visible over an object of its own colour); the point prompt, outlines and lettering scale with
the image; panels carry titles and overlays of several concepts a legend. `prediction_pictures`
draws what a prediction shows for one target: the predict command writes those pictures and the
interactive page shows them.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Sequence

import numpy as np

PALETTE = (
    (255, 60, 60), (60, 200, 60), (60, 120, 255), (255, 200, 40), (200, 60, 220), (40, 210, 210), (255, 130, 40),
    (150, 150, 255),
)
REFERENCE_COLOUR = (60, 220, 60)
PREDICTION_COLOUR = (255, 60, 60)
TINTS = PALETTE[:6]  # green, red, blue, yellow, magenta, cyan: what `contrasting_colour` picks from


def jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H, W) -> uint8 RGB with the JET colormap (blue = low, red = high)."""
    v = np.clip(np.asarray(values, np.float32), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0], np.float32)  # r, g, b
    return (np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0) * 255).astype(np.uint8)


def blend(image: np.ndarray, colour_layer: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    out = (1 - alpha) * image.astype(np.float32) + alpha * colour_layer.astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def line_width(shape: Sequence[int]) -> int:
    """Outline width for an image of `shape` (H, W, ...): 2 px up to 625 px, then growing with the image
    (1 px below 125 px)."""
    return max(1 if max(shape[:2]) < 125 else 2, round(max(shape[:2]) / 250))


def marker_radius(shape: Sequence[int]) -> int:
    """Point-marker radius: about 1.2% of the longer side, at least 1 px."""
    return max(1, round(max(shape[:2]) * 0.012))


def _grow(mask: np.ndarray, steps: int) -> np.ndarray:
    """Dilation by `steps` 4-neighbour steps."""
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def outline(mask: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(inner band, outer rim): mask pixels within `width` of the background, and background pixels
    within `max(1, width // 2)` of the mask."""
    mask = np.asarray(mask, bool)
    inner = mask & _grow(~mask, width)
    rim = _grow(mask, max(1, width // 2)) & ~mask
    return inner, rim


def mask_overlay(image: np.ndarray, mask: np.ndarray, colour=PREDICTION_COLOUR, alpha: float = 0.45,
                 outlined: bool = True) -> np.ndarray:
    """Tint the masked pixels of an (H, W, 3) uint8 image and, with `outlined`, draw the mask's edge."""
    mask = np.asarray(mask, bool)
    layer = image.copy()
    layer[mask] = colour
    out = blend(image, layer, alpha)
    if outlined and mask.any():
        inner, rim = outline(mask, line_width(image.shape))
        out[rim] = (0, 0, 0)
        out[inner] = colour
    return out


def contrasting_colour(image: np.ndarray, mask: np.ndarray | None = None, candidates=None) -> tuple[int, int, int]:
    """The tint (of `candidates`, default `TINTS`) that stands out most where it is drawn: the one whose
    smaller RGB distance to the mean colour under `mask` and to the image's mean colour is largest
    (the earlier candidate on a tie). Without a mask, or with an empty one, the image's mean alone. So a
    mask over a green object on a green scene is not tinted green."""
    candidates = np.asarray(TINTS if candidates is None else candidates, np.float32)
    pixels = np.asarray(image, np.float32)[..., :3]
    means = [pixels.reshape(-1, 3).mean(0)]
    if mask is not None and np.asarray(mask, bool).any():
        means.append(pixels[np.asarray(mask, bool)].mean(0))
    distance = np.min([np.linalg.norm(candidates - m, axis=-1) for m in means], axis=0)
    return tuple(int(c) for c in candidates[int(np.argmax(distance))])


def heatmap_overlay(image: np.ndarray, values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """JET heatmap of `values` over the image, mapped from [lo, hi] (default: the values' range)."""
    values = np.asarray(values, np.float32)
    lo = float(values.min()) if lo is None else lo
    hi = float(values.max()) if hi is None else hi
    return blend(image, jet((values - lo) / max(hi - lo, 1e-12)), 0.5)


def draw_point(image: np.ndarray, xy, radius: int | None = None, colour=(255, 255, 255)) -> np.ndarray:
    """A filled disc with a dark rim at pixel (x, y); the radius defaults to `marker_radius`."""
    out = image.copy()
    h, w = out.shape[:2]
    radius = marker_radius(out.shape) if radius is None else radius
    rim = max(1, radius // 3)
    x, y = float(xy[0]), float(xy[1])
    reach = radius + rim
    y0, y1 = max(0, int(y - reach)), min(h, int(y + reach) + 2)
    x0, x1 = max(0, int(x - reach)), min(w, int(x + reach) + 2)
    if y0 >= y1 or x0 >= x1:
        return out
    yy, xx = np.mgrid[y0:y1, x0:x1]
    d = np.hypot(xx - x, yy - y)
    window = out[y0:y1, x0:x1]
    window[d <= reach] = (0, 0, 0)
    window[d <= radius] = colour
    return out


def _font(px: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=px)  # Pillow's scalable font (needs FreeType, in the wheels)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def titled(image: np.ndarray, title: str, font_px: int | None = None) -> np.ndarray:
    """The image under a dark bar holding `title` (font scaled to the image's width unless given)."""
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    px = font_px or int(np.clip(w / 18, 10, 64))
    font = _font(px)
    bar_h = round(px * 1.5)
    bar = Image.new("RGB", (w, bar_h), (32, 32, 32))
    draw = ImageDraw.Draw(bar)
    text = title
    while text and draw.textlength(text, font=font) > w - px // 2:  # too long: shorten with an ellipsis
        text = text[:-2] + "…" if len(text) > 2 else ""
    draw.text((px // 4, (bar_h - px) // 2), text, fill=(255, 255, 255), font=font)
    return np.concatenate([np.asarray(bar), image[..., :3]], axis=0)


def with_legend(image: np.ndarray, entries: Sequence[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """A legend box (a swatch and a name per entry) drawn into the top-left corner; the image keeps
    its size, so overlays stay pixel-aligned with their targets."""
    from PIL import Image, ImageDraw

    if not entries:
        return image
    h, w = image.shape[:2]
    px = int(np.clip(min(h, w) / 22, 8, 48))
    font = _font(px)
    pil = Image.fromarray(np.ascontiguousarray(image[..., :3]))
    draw = ImageDraw.Draw(pil, "RGBA")
    pad, line = max(2, px // 3), round(px * 1.35)
    width = pad * 3 + px + max(int(draw.textlength(name, font=font)) for name, _ in entries)
    draw.rectangle([0, 0, min(w - 1, width), min(h - 1, pad * 2 + line * len(entries))], fill=(0, 0, 0, 150))
    for i, (name, colour) in enumerate(entries):
        top = pad + i * line
        draw.rectangle([pad, top + 1, pad + px, top + px], fill=tuple(int(c) for c in colour) + (255,),
                       outline=(255, 255, 255, 255))
        draw.text((pad * 2 + px, top), name, fill=(255, 255, 255, 255), font=font)
    return np.asarray(pil)


def panel_strip(panels: Sequence[tuple[str, np.ndarray]], height: int = 256, gap: int = 4) -> np.ndarray:
    """Titled panels side by side, each scaled to `height` (the titles on one font size)."""
    from PIL import Image

    scaled = []
    for _, p in panels:
        w = max(1, round(p.shape[1] * height / p.shape[0]))
        scaled.append(np.asarray(Image.fromarray(np.ascontiguousarray(p[..., :3])).resize((w, height), Image.BILINEAR)))
    px = int(np.clip(height / 16, 10, 40))
    out = []
    for (title, _), p in zip(panels, scaled):
        out.append(titled(p, title, font_px=px))
        out.append(np.full((out[-1].shape[0], gap, 3), 255, np.uint8))
    return np.concatenate(out[:-1], axis=1)


class Pictures(NamedTuple):
    """What a prediction shows for one target, at the target's size."""

    masks: list  # (H, W) uint8 0/255 per concept
    overlay: np.ndarray | None  # (H, W, 3) uint8: every concept's mask tinted and outlined, with a legend
    propagated: list  # (H, W, 3) uint8 per concept: the propagated mask as a JET heatmap, its point marked

    def file_names(self, stem: str) -> list[tuple[str, np.ndarray]]:
        """(file name, picture) of each picture: STEM_mask{j}.png, STEM_overlay.png, STEM_propagated{j}.png
        (one naming for the predict command's files and the page's downloads)."""
        named = [(f"{stem}_mask{j}.png", m) for j, m in enumerate(self.masks)]
        named += [(f"{stem}_propagated{j}.png", p) for j, p in enumerate(self.propagated)]
        if self.overlay is not None:
            named.append((f"{stem}_overlay.png", self.overlay))
        return named


def output_stems(paths: Sequence[str]) -> list[str]:
    """The stem that names each target's files: its file name without the suffix, with -2, -3, ...
    added to a repeated stem (photo.png and photo.jpg), so that no target's files replace another's."""
    bases = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    own = set(bases)  # no added number may take another target's own stem
    given: set[str] = set()
    stems = []
    for base in bases:
        stem, n = base, 1
        while stem in given:
            n += 1
            stem = f"{base}-{n}"
            while stem in own:
                n += 1
                stem = f"{base}-{n}"
        given.add(stem)
        stems.append(stem)
    return stems


PREDICTION_PICTURES = Pictures._fields  # the kinds `prediction_pictures` draws: masks, overlay, propagated


def prediction_pictures(image: np.ndarray, pred, kinds: Sequence[str] = PREDICTION_PICTURES,
                        labels: Sequence[str] | None = None) -> Pictures:
    """The pictures of one target (uint8 (H, W, 3)) and its `Prediction` that `kinds` names (the
    others are empty). `labels` name the concepts (legend of the overlay, title of each heatmap);
    without them a single concept goes unlabelled and several are "concept j"."""
    k = len(pred.masks)
    names = list(labels) if labels else ([f"concept {j}" for j in range(k)] if k > 1 else [])
    colours = [PALETTE[j % len(PALETTE)] for j in range(k)]
    masks = [m.astype(np.uint8) * 255 for m in pred.masks] if "masks" in kinds else []
    overlay = None
    if "overlay" in kinds:
        overlay = image.copy()
        for mask, colour in zip(pred.masks, colours):
            overlay = mask_overlay(overlay, mask, colour)
        overlay = with_legend(overlay, list(zip(names, colours)))
    propagated = []
    for j in range(k) if "propagated" in kinds else ():
        heat = draw_point(heatmap_overlay(image, pred.similarity[j]), pred.points[j])
        title = f"{names[j]}: " if names else ""
        propagated.append(with_legend(heat, [(f"{title}propagated mask (red high), point prompt", (255, 255, 255))]))
    return Pictures(masks, overlay, propagated)
