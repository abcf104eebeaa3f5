"""The built-in synthetic in-context dataset (no download): scenes of several textured objects
on clutter, stored like the COCO/LVIS instance datasets so every pipeline reads it the same way.
Classes are (shape, colour, texture) triples; every fourth is held out: the `train` split uses
only training classes and `test` only held-out ones.

Configs: `default` (512 train / 128 test images at 256 px) and `tiny` (16 / 8 at 64 px, for tests).
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import tensorflow_datasets as tfds

from segic_jax.data import rle, synthetic
from segic_jax.data.builders.instances import instance_features


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
    size: int = 256
    train_images: int = 512
    test_images: int = 128
    max_objects: int = 6


class SyntheticIncontext(tfds.core.GeneratorBasedBuilder):
    """Synthetic in-context segmentation scenes."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        SyntheticConfig(name="default"),
        SyntheticConfig(name="tiny", size=64, train_images=16, test_images=8, max_objects=4),
    ]

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, description=__doc__, features=instance_features())

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        return {
            "train": self._generate_examples("train", cfg.train_images, seed=0),
            "test": self._generate_examples("test", cfg.test_images, seed=1),
        }

    def _generate_examples(self, split: str, count: int, seed: int):
        from PIL import Image

        cfg = self.builder_config
        classes = [c for c in synthetic.all_classes() if synthetic.class_split(c) == split]
        rng = np.random.default_rng(seed)
        for i in range(count):
            image, masks, labels = synthetic.multi_object_scene(rng, classes, cfg.size, int(rng.integers(2, cfg.max_objects + 1)))
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            yield i, {
                "image": buf.getvalue(),
                "image_id": i,
                "file_name": f"{split}/{i:06d}.png",
                "height": cfg.size,
                "width": cfg.size,
                "objects": [
                    {
                        "rle": rle.from_mask(m),
                        "category_id": synthetic.all_classes().index(classes[c]),
                        "category_name": classes[c].name,
                        "iscrowd": False,
                        "bbox": _box(m),
                    }
                    for m, c in zip(masks, labels)
                ],
            }


def _box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.asarray([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1], np.float32)
