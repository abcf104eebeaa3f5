"""Synthetic in-context scenes that need no download.

An object class is a shape, a colour and a texture. A scene places one object of a class on a
cluttered background (smooth colour noise plus distractor objects of other classes); a pair is
two scenes with the same class at different positions, sizes and rotations, so the reference's
object has to be found again in the target.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SHAPES = ("ellipse", "rectangle", "triangle", "star")
TEXTURES = ("plain", "stripes", "checker", "dots")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "magenta": (200, 50, 200),
    "cyan": (40, 200, 210),
}


@dataclasses.dataclass(frozen=True)
class ObjectClass:
    shape: str
    colour: str
    texture: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.texture} {self.shape}"


def all_classes() -> list[ObjectClass]:
    return [ObjectClass(s, c, t) for s in SHAPES for c in COLOURS for t in TEXTURES]


def _shape_mask(shape: str, size: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * dx + s * dy) / radius, (-s * dx + c * dy) / radius
    if shape == "ellipse":
        return u**2 + (v / 0.6) ** 2 <= 1
    if shape == "rectangle":
        return (np.abs(u) <= 1) & (np.abs(v) <= 0.55)
    if shape == "triangle":
        return (v <= 0.5) & (v >= 2 * np.abs(u) - 1.0)
    r, theta = np.hypot(u, v), np.arctan2(v, u)
    return r <= 0.55 + 0.45 * np.cos(5 * theta)  # star


def _texture(texture: str, size: int, period: float, angle: float) -> np.ndarray:
    """Brightness factor in [0.55, 1] per pixel."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = np.cos(angle) * xx + np.sin(angle) * yy
    v = -np.sin(angle) * xx + np.cos(angle) * yy
    if texture == "plain":
        return np.ones((size, size), np.float32)
    if texture == "stripes":
        on = np.sin(2 * np.pi * u / period) > 0
    elif texture == "checker":
        on = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    else:
        on = np.hypot((u % period) - period / 2, (v % period) - period / 2) < period / 4
    return np.where(on, 1.0, 0.55).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = rng.uniform(60, 200, (4, 4, 3)).astype(np.float32)
    reps = -(-size // 4)
    smooth = np.kron(coarse, np.ones((reps, reps, 1), np.float32))[:size, :size]
    return smooth + rng.normal(0, 12, (size, size, 3)).astype(np.float32)


def _paint(image, rng, cls: ObjectClass, size: int, radius: float, avoid=None) -> np.ndarray:
    for _ in range(20):
        cx, cy = rng.uniform(radius, size - radius, 2)
        mask = _shape_mask(cls.shape, size, cx, cy, radius, rng.uniform(0, np.pi))
        if avoid is None or (mask & avoid).sum() < 0.1 * mask.sum():
            break
    shade = _texture(cls.texture, size, period=max(radius / 3, 3.0), angle=rng.uniform(0, np.pi))
    colour = np.asarray(COLOURS[cls.colour], np.float32) * rng.uniform(0.85, 1.15)
    image[mask] = colour * shade[mask][:, None]
    return mask


def scene(rng: np.random.Generator, cls: ObjectClass, size: int, distractors: int = 3):
    """(image uint8 (size, size, 3), mask bool (size, size)) with one object of `cls`."""
    image = _background(rng, size)
    others = [c for c in all_classes() if c.shape != cls.shape and c.colour != cls.colour]
    occupied = np.zeros((size, size), bool)
    for i in rng.choice(len(others), distractors, replace=False):
        occupied |= _paint(image, rng, others[i], size, rng.uniform(0.08, 0.16) * size)
    mask = _paint(image, rng, cls, size, rng.uniform(0.12, 0.25) * size, avoid=occupied)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def synthetic_pair(seed: int, size: int) -> dict:
    """A reference and a target scene with the same object class."""
    rng = np.random.default_rng(seed)
    classes = all_classes()
    cls = classes[rng.integers(len(classes))]
    ref_image, ref_mask = scene(rng, cls, size)
    tgt_image, tgt_mask = scene(rng, cls, size)
    return dict(
        reference_image=ref_image,
        reference_mask=ref_mask,
        target_image=tgt_image,
        target_mask=tgt_mask,
        class_name=cls.name,
    )


def class_split(cls: ObjectClass) -> str:
    """Every fourth class (in `all_classes` order) is held out for testing."""
    return "test" if all_classes().index(cls) % 4 == 0 else "train"


def multi_object_scene(rng: np.random.Generator, classes: list[ObjectClass], size: int, n_objects: int):
    """A cluttered background with `n_objects` objects drawn from `classes` (a class may repeat).

    Returns image uint8 (size, size, 3), masks bool (N, size, size) of the visible parts (later
    objects occlude earlier ones; fully hidden objects are dropped) and their class indices (N,).
    """
    image = _background(rng, size)
    masks, labels = [], []
    for _ in range(n_objects):
        index = int(rng.integers(len(classes)))
        mask = _paint(image, rng, classes[index], size, rng.uniform(0.08, 0.2) * size)
        masks = [m & ~mask for m in masks]
        masks.append(mask)
        labels.append(index)
    keep = [i for i, m in enumerate(masks) if m.sum() >= 16]
    return (
        np.clip(image, 0, 255).astype(np.uint8),
        np.stack([masks[i] for i in keep]) if keep else np.zeros((0, size, size), bool),
        np.asarray([labels[i] for i in keep], np.int64),
    )


USER_LAYOUTS = ("coco", "masks", "folders")


def _user_scenes(seed: int, classes: list[ObjectClass], count: int, size: int):
    """`count` scenes [(image, [(mask, class index)])]: image i shows class i % len(classes), and
    every fourth a second class too (so that a held-out class leaves images to train on)."""
    rng = np.random.default_rng(seed)
    scenes = []
    for i in range(count):
        image = _background(rng, size)
        wanted = [i % len(classes)] + ([(i + 1) % len(classes)] if i % 4 == 3 else [])
        masks, occupied = [], np.zeros((size, size), bool)
        for c in wanted:
            mask = _paint(image, rng, classes[c], size, rng.uniform(0.18, 0.26) * size, avoid=occupied)
            masks = [(m & ~mask, k) for m, k in masks]
            masks.append((mask, c))
            occupied |= mask
        scenes.append((np.clip(image, 0, 255).astype(np.uint8), [(m, k) for m, k in masks if m.any()]))
    return scenes


def write_user_layouts(root: str, seed: int = 0, n_classes: int = 3, images_per_class: int = 4,
                       size: int = 48, held_out: bool = False) -> dict[str, str]:
    """A small dataset of synthetic scenes in each layout `python -m segic_jax.data.build` reads your
    own data in (docs/your_data.md), under root/coco (user_coco: annotations.json with polygons,
    compressed RLE and crowd RLE; images/), root/masks (user_masks: images/, masks/ class-index PNGs
    with a 255 (ignored) top row, classes.txt) and root/folders (user_folders: <class>/<stem>.jpg
    and .png). held_out: only classes the synthetic dataset's train split never shows (`class_split`),
    as new data for a model trained on it. Returns {layout: its folder}."""
    import json
    import os

    from PIL import Image
    from pycocotools import mask as mask_utils

    everything = all_classes()
    if held_out:
        unseen = [c for c in everything if class_split(c) == "test"]
        if n_classes > len(unseen):
            raise ValueError(f"the synthetic dataset holds out {len(unseen)} classes, not {n_classes}")
        classes = unseen[:n_classes]
    else:
        classes = [everything[(7 * i + 1) % len(everything)] for i in range(n_classes)]
    count = n_classes * images_per_class
    out = {layout: os.path.join(root, layout) for layout in USER_LAYOUTS}

    # user_masks
    scenes = _user_scenes(seed, classes, count, size)
    os.makedirs(os.path.join(out["masks"], "images"), exist_ok=True)
    os.makedirs(os.path.join(out["masks"], "masks"), exist_ok=True)
    with open(os.path.join(out["masks"], "classes.txt"), "w") as f:
        f.write("".join(c.name + "\n" for c in classes))
    for i, (image, objects) in enumerate(scenes):
        label = np.zeros((size, size), np.uint8)
        for mask, c in objects:
            label[mask] = c + 1
        label[0] = 255
        Image.fromarray(image).save(os.path.join(out["masks"], "images", f"scene_{i:02d}.png"))
        Image.fromarray(label).save(os.path.join(out["masks"], "masks", f"scene_{i:02d}.png"))

    # user_coco: the same scenes, their objects as polygons (the mask's box), compressed RLE and crowd RLE
    os.makedirs(os.path.join(out["coco"], "images"), exist_ok=True)
    images, annotations = [], []
    for i, (image, objects) in enumerate(scenes):
        Image.fromarray(image).save(os.path.join(out["coco"], "images", f"scene_{i:02d}.png"))
        images.append(dict(id=100 + i, file_name=f"scene_{i:02d}.png", height=size, width=size))
        for mask, c in objects:
            ys, xs = np.nonzero(mask)
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            form = len(annotations) % 3
            if form == 0:
                segmentation, crowd = [[x0, y0, x1, y0, x1, y1, x0, y1]], 0
            elif form == 1:
                enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                segmentation, crowd = {"size": [size, size], "counts": enc["counts"].decode()}, 0
            else:
                flat = mask.flatten(order="F").astype(np.int8)
                edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
                segmentation, crowd = {"size": [size, size], "counts": np.diff(np.concatenate([[0], edges])).tolist()}, 1
            annotations.append(dict(id=len(annotations) + 1, image_id=100 + i, category_id=10 * (c + 1),
                                    iscrowd=crowd, bbox=[x0, y0, x1 - x0, y1 - y0], segmentation=segmentation,
                                    area=float(mask.sum())))
    categories = [dict(id=10 * (c + 1), name=cls.name) for c, cls in enumerate(classes)]
    with open(os.path.join(out["coco"], "annotations.json"), "w") as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)

    # user_folders: one object per image, a folder per class
    rng = np.random.default_rng(seed + 1)
    for c, cls in enumerate(classes):
        folder = os.path.join(out["folders"], cls.name.replace(" ", "_"))
        os.makedirs(folder, exist_ok=True)
        for n in range(images_per_class):
            image, mask = scene(rng, cls, size, distractors=2)
            Image.fromarray(image).save(os.path.join(folder, f"{n + 1}.jpg"), quality=95)
            Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(folder, f"{n + 1}.png"))
    return out
