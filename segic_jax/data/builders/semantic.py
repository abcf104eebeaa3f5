"""Semantic-segmentation datasets as TFDS datasets (array_record), built without TensorFlow.

Layouts read from --manual_dir:
  ade20k_semantic   ADEChallengeData2016: images/{training,validation}/*.jpg,
                    annotations/{training,validation}/*.png (0 = other, 1..150), objectInfo150.txt
                    (or .csv) for the class names (the first name of each row is used).
  coco20i_semantic  COCO 2014: {train,val}2014/*.jpg, annotations/instances_{train,val}2014.json;
                    the class map (1..80 in category-id order, 0 background) is rasterised from the
                    instance masks, later annotations over earlier ones, crowd regions included.
Each example: the encoded image bytes, the label map as PNG bytes, the file name, the size and the
classes present. Class names: `info.metadata["class_names"]` (index i is class i + 1).
"""

from __future__ import annotations

import csv
import io
import os

import numpy as np
import tensorflow_datasets as tfds

from segic_jax.data import rle
from segic_jax.data.builders.common import LayoutError, load_json, read_bytes, require_dir, require_file, decode_image, image_size, pick_splits

_LAYOUT = __doc__  # the module's layout text (inside a class body, __doc__ is the class's)


def _features():
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Tensor(shape=(), dtype=np.object_),
            "label": tfds.features.Tensor(shape=(), dtype=np.object_),  # PNG of the class map
            "file_name": tfds.features.Text(),
            "height": np.int32,
            "width": np.int32,
            "classes": tfds.features.Sequence(np.int32),
        }
    )


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


class _Semantic(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, description=self.__doc__, features=_features(), metadata=tfds.core.MetadataDict()
        )


class Ade20kSemantic(_Semantic):
    """ADE20K SceneParsing-150."""

    SPLITS = {"train": "training", "val": "validation"}

    def _class_names(self, root: str) -> list[str]:
        for name in ("objectInfo150.txt", "objectInfo150.csv"):
            path = os.path.join(root, name)
            if os.path.isfile(path):
                with open(path, newline="") as f:
                    sample = f.read(2048)
                    f.seek(0)
                    rows = list(csv.reader(f, delimiter="\t" if "\t" in sample else ","))
                header = [h.strip().lower() for h in rows[0]]
                if "name" not in header:
                    raise LayoutError(f"{path} has no Name column")
                col = header.index("name")
                names = [r[col].split(";")[0].split(",")[0].strip() for r in rows[1:] if r]
                if len(names) != 150:
                    raise LayoutError(f"{path} lists {len(names)} classes, ADE20K-150 has 150")
                return names
        raise LayoutError(f"missing file {os.path.join(root, 'objectInfo150.txt')} (ADE20K class names)")

    def _split_generators(self, dl_manager):
        root = require_dir(os.fspath(dl_manager.manual_dir), "--manual_dir of ade20k_semantic")
        self.info.metadata["class_names"] = self._class_names(root)
        expected = {s: os.path.join(root, "images", d) for s, d in self.SPLITS.items()}
        present = {s: self.SPLITS[s] for s, p in expected.items() if os.path.isdir(p)}
        return {s: self._generate_examples(root, d) for s, d in pick_splits(self, present, expected).items()}

    def _generate_examples(self, root: str, folder: str):
        from PIL import Image

        images = require_dir(os.path.join(root, "images", folder), "ADE20K images")
        labels = require_dir(os.path.join(root, "annotations", folder), "ADE20K annotations")
        for name in sorted(f for f in os.listdir(images) if f.lower().endswith(".jpg")):
            stem = os.path.splitext(name)[0]
            label_path = require_file(os.path.join(labels, stem + ".png"), f"the label of {name}")
            data = read_bytes(os.path.join(images, name))
            h, w = image_size(data, os.path.join(images, name))
            label = decode_image(label_path)
            if label.shape != (h, w):
                raise LayoutError(f"{label_path} is {label.shape[1]}x{label.shape[0]} but its image is {w}x{h}")
            classes = sorted(int(c) for c in np.unique(label) if 0 < c <= 150)
            yield stem, {
                "image": data, "label": read_bytes(label_path), "file_name": f"{folder}/{name}",
                "height": h, "width": w, "classes": classes,
            }


class Coco20iSemantic(_Semantic):
    """COCO 2014 semantic maps for COCO-20i."""

    SPLITS = {"train": "train2014", "val": "val2014"}

    def _split_generators(self, dl_manager):
        root = require_dir(os.fspath(dl_manager.manual_dir), "--manual_dir of coco20i_semantic")
        expected = {s: os.path.join(root, "annotations", f"instances_{d}.json") for s, d in self.SPLITS.items()}
        present = {s: p for s, p in expected.items() if os.path.isfile(p)}
        chosen = pick_splits(self, present, expected)
        return {s: self._generate_examples(root, self.SPLITS[s], p) for s, p in chosen.items()}

    def _generate_examples(self, root: str, folder: str, annotation_path: str):
        data = load_json(annotation_path)
        cats = sorted(c["id"] for c in data.get("categories", []))
        if len(cats) != 80:
            raise LayoutError(f"{annotation_path} lists {len(cats)} categories, COCO has 80")
        self.info.metadata["class_names"] = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
        index = {cid: i + 1 for i, cid in enumerate(cats)}
        images = {im["id"]: im for im in data["images"]}
        by_image: dict[int, list] = {}
        for ann in data["annotations"]:
            if ann["image_id"] not in images:
                raise LayoutError(f"{annotation_path}: annotation {ann.get('id')} refers to unknown image {ann['image_id']}")
            by_image.setdefault(ann["image_id"], []).append(ann)
        for image_id, anns in sorted(by_image.items()):
            image = images[image_id]
            h, w = int(image["height"]), int(image["width"])
            label = np.zeros((h, w), np.uint8)
            for ann in anns:
                try:
                    mask = rle.decode(rle.encode(ann["segmentation"], h, w))
                except ValueError as e:
                    raise LayoutError(f"{annotation_path}: annotation {ann.get('id')}: {e}") from None
                label[mask] = index[ann["category_id"]]
            path = os.path.join(root, folder, image["file_name"])
            yield image_id, {
                "image": read_bytes(path), "label": _png(label), "file_name": f"{folder}/{image['file_name']}",
                "height": h, "width": w, "classes": sorted(int(c) for c in np.unique(label) if c),
            }
