"""FSS-1000 as a TFDS dataset (array_record), split by the official class lists.

Layout read from --manual_dir: one folder per class with N.jpg images and N.png masks
(`<class>/1.jpg`, `<class>/1.png`, ...), and the class lists splits/{trn,val,test}.txt (HSNet's
`data/splits/fss`, one class name per line; 520 / 240 / 240 classes).
Each example: the encoded image, its mask PNG as on disk, the class name (folder name,
underscores kept, as SEGIC prompts with it) and the file name.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from segic_jax.data.builders.common import LayoutError, image_size, pick_splits, read_bytes, require_dir, require_file

_LAYOUT = __doc__  # the module's layout text (inside a class body, __doc__ is the class's)

SPLIT_FILES = {"train": "trn.txt", "val": "val.txt", "test": "test.txt"}


def image_mask_pairs(folder: str, image_exts: tuple[str, ...]):
    """A class folder's images (`image_exts`, lower case) and their <stem>.png masks, as FSS-1000 lays
    them out: ([(stem, image name, mask name)], [images without a mask], [masks without an image]),
    each sorted. (With ".png" among `image_exts`, a .png is a mask when an image shares its stem.)"""
    files = sorted(os.listdir(folder))
    masks = {os.path.splitext(f)[0]: f for f in files if f.endswith(".png")}
    images = [f for f in files if os.path.splitext(f)[1].lower() in image_exts and f not in masks.values()]
    stems = {os.path.splitext(f)[0] for f in images}
    pairs = [(os.path.splitext(f)[0], f, masks[os.path.splitext(f)[0]]) for f in images if os.path.splitext(f)[0] in masks]
    unpaired = [f for f in images if os.path.splitext(f)[0] not in masks]
    orphans = [m for stem, m in sorted(masks.items()) if stem not in stems]
    return pairs, unpaired, orphans


class Fss1000(tfds.core.GeneratorBasedBuilder):
    """FSS-1000."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(), dtype=np.object_),
                    "mask": tfds.features.Tensor(shape=(), dtype=np.object_),
                    "class_name": tfds.features.Text(),
                    "file_name": tfds.features.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        root = require_dir(os.fspath(dl_manager.manual_dir), "--manual_dir of fss1000")
        expected = {split: os.path.join(root, "splits", name) for split, name in SPLIT_FILES.items()}
        present = {s: p for s, p in expected.items() if os.path.isfile(p)}
        splits = {}
        for split, path in pick_splits(self, present, expected).items():
            with open(path) as f:
                splits[split] = [line.strip() for line in f if line.strip()]
        return {split: self._generate_examples(root, classes) for split, classes in splits.items()}

    def _generate_examples(self, root: str, classes: list[str]):
        mismatched = []
        for cls in classes:
            folder = require_dir(os.path.join(root, cls), f"images of FSS-1000 class {cls}")
            pairs, unpaired, _ = image_mask_pairs(folder, (".jpg",))
            if not pairs and not unpaired:
                raise LayoutError(f"{folder} has no .jpg images")
            if unpaired:
                name = unpaired[0]
                require_file(os.path.join(folder, os.path.splitext(name)[0] + ".png"), f"the mask of {cls}/{name}")
            for stem, name, _ in pairs:
                mask = os.path.join(folder, stem + ".png")
                image_bytes, mask_bytes = read_bytes(os.path.join(folder, name)), read_bytes(mask)
                if image_size(image_bytes, os.path.join(folder, name)) != image_size(mask_bytes, mask):
                    mismatched.append(f"{cls}/{stem}")
                yield f"{cls}/{stem}", {
                    "image": image_bytes,
                    "mask": mask_bytes,
                    "class_name": cls,
                    "file_name": f"{cls}/{name}",
                }
        if mismatched:  # kept, as the original keeps them (its test loader replaces such an episode)
            print(f"FSS-1000: {len(mismatched)} masks differ in size from their images: "
                  + ", ".join(mismatched[:10]) + (", ..." if len(mismatched) > 10 else ""), flush=True)
