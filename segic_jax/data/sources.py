"""Random-access reading of built datasets (TFDS data sources: no TensorFlow) and decoding of their
examples into arrays."""

from __future__ import annotations

import io

import numpy as np

from segic_jax.data import rle


def data_source(name: str, split: str, data_dir: str):
    """`name` is a dataset, optionally with its config: synthetic_incontext/tiny."""
    from segic_jax.data import build

    files = "" if name.partition("/")[0] in build.NEEDS_NO_FILES else " --manual_dir ..."
    how = f"build it with `python -m segic_jax.data.build {name}{files} --data_dir {data_dir}`"
    builder = build.make_builder(name, data_dir)
    with build.quiet_tfds():
        prepared = builder.is_prepared()
    if not prepared:  # reading never builds or downloads anything
        raise FileNotFoundError(f"dataset {name} is not built under {data_dir}; {how}")
    try:
        return builder.as_data_source(split=split)
    except Exception as e:  # TFDS raises several types for a dataset that is not there
        raise FileNotFoundError(f"dataset {name} split {split!r} not found under {data_dir} ({e}); {how}") from None


def text(value) -> str:
    """A string feature as read back (TFDS gives bytes) -> str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_image(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB from encoded bytes (any mode)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), np.uint8)


def decode_gray(data: bytes) -> np.ndarray:
    """(H, W) uint8 luminance from encoded bytes (PIL's "L" conversion of any mode)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L"), np.uint8)


def decode_instances(example: dict) -> dict:
    """image (H, W, 3) uint8, masks (N, H, W) bool, category_ids (N,), category_names, iscrowd (N,)."""
    objects = example["objects"]
    masks = [rle.decode(r) for r in objects["rle"]]
    h, w = int(example["height"]), int(example["width"])
    return {
        "image": decode_image(example["image"]),
        "masks": np.stack(masks) if masks else np.zeros((0, h, w), bool),
        "category_ids": np.asarray(objects["category_id"], np.int64),
        "category_names": [text(n) for n in objects["category_name"]],
        "iscrowd": np.asarray(objects["iscrowd"], bool),
    }


def class_mask(example: dict, class_id: int) -> np.ndarray:
    """(H, W) bool union of the instance masks of `class_id`, decoding only those instances' RLEs."""
    objects = example["objects"]
    mask = np.zeros((int(example["height"]), int(example["width"])), bool)
    for r, c in zip(objects["rle"], objects["category_id"]):
        if int(c) == class_id:
            mask |= rle.decode(r)
    return mask


def class_names(name: str) -> list[str]:
    """The names SEGIC prompts with for a semantic dataset's classes (index i is class i + 1):
    the package's own lists (segic_jax/data/names.py), whatever annotation files it was built from."""
    from segic_jax.data.names import PROMPT_NAMES

    dataset = name.partition("/")[0]
    if dataset not in PROMPT_NAMES:
        raise ValueError(f"{name} has no class-name list; the semantic datasets are {', '.join(PROMPT_NAMES)}")
    return list(PROMPT_NAMES[dataset])


def episode_pools(name: str, data_dir: str) -> str:
    """What a semantic dataset's `pool_classes` were built from: "hsnet" (HSNet's split lists, the
    paper's COCO-20i pools) or "present" (every class present in the image)."""
    from segic_jax.data import build

    return str(build.make_builder(name, data_dir).info.metadata.get("pools", "present"))


def decode_semantic(example: dict) -> dict:
    """image (H, W, 3) uint8, label (H, W) int32 class map, classes present (C,)."""
    from PIL import Image

    with Image.open(io.BytesIO(example["label"])) as img:
        label = np.asarray(img).astype(np.int32)
    return {
        "image": decode_image(example["image"]),
        "label": label,
        "classes": np.asarray(example["classes"], np.int32),
    }
