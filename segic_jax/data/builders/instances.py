"""COCO 2017 and LVIS v1 instance segmentation as TFDS datasets (array_record), built from the
files users have, without TensorFlow.

Layouts read from --manual_dir:
  coco_instances:  annotations/instances_{train,val}2017.json, {train,val}2017/*.jpg
  lvis_instances:  lvis_v1_{train,val}.json, {train,val}2017/*.jpg (the image path is the last two
                   parts of each image's coco_url)
Each example: the encoded image bytes as they are on disk, its id, file name and size, and its
instances: mask (compressed RLE as JSON, from polygons, RLE or crowd RLE), category id and name,
crowd flag and box (x, y, w, h). Images without annotations are skipped (and counted).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from segic_jax.data import rle
from segic_jax.data.builders.common import LayoutError, load_json, read_bytes, require_dir, require_file, pick_splits

_LAYOUT = __doc__  # the module's layout text (inside a class body, __doc__ is the class's)


def instance_features():
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # encoded bytes, decoded by the pipeline
            "image_id": np.int64,
            "file_name": tfds.features.Text(),
            "height": np.int32,
            "width": np.int32,
            "objects": tfds.features.Sequence(
                {
                    "rle": tfds.features.Text(),
                    "category_id": np.int64,
                    "category_name": tfds.features.Text(),
                    "iscrowd": np.bool_,
                    "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                }
            ),
        }
    )


def group_annotations(data: dict, annotation_path: str, problems: list[str] | None = None):
    """(category names by id, images by id, annotations by image id) of a COCO-style instances dict.
    An annotation of an unknown image or category is a LayoutError naming the file; with `problems`,
    it is appended there instead (and left out), so that a caller can report every one at once."""
    names = {c["id"]: c["name"] for c in data["categories"]}
    images = {im["id"]: im for im in data["images"]}
    by_image: dict[int, list] = {}
    for ann in data["annotations"]:
        wrong = None
        if ann.get("image_id") not in images:
            wrong = f"{annotation_path}: annotation {ann.get('id')} refers to unknown image {ann.get('image_id')}"
        elif ann.get("category_id") not in names:
            wrong = f"{annotation_path}: annotation {ann.get('id')} has unknown category {ann.get('category_id')}"
        if wrong is None:
            by_image.setdefault(ann["image_id"], []).append(ann)
        elif problems is None:
            raise LayoutError(wrong)
        else:
            problems.append(wrong)
    return names, images, by_image


def instance_object(ann: dict, names: dict, height: int, width: int) -> dict:
    """The stored object of a COCO-style annotation (polygons, RLE or crowd RLE); a segmentation that
    cannot be read is a ValueError."""
    return {
        "rle": rle.encode(ann["segmentation"], height, width),
        "category_id": ann["category_id"],
        "category_name": names[ann["category_id"]],
        "iscrowd": bool(ann.get("iscrowd", 0)),
        "bbox": np.asarray(ann.get("bbox", [0, 0, 0, 0]), np.float32),
    }


class _InstanceJson(tfds.core.GeneratorBasedBuilder):
    """Shared reading of COCO-style instance JSON; subclasses give the files and the image paths."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT
    SPLITS: dict[str, str] = {}  # split -> annotation file, relative to manual_dir

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=instance_features())

    def _image_path(self, root: str, split: str, image: dict) -> str:
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        root = require_dir(os.fspath(dl_manager.manual_dir), f"--manual_dir of {self.name}")
        expected = {s: os.path.join(root, f) for s, f in self.SPLITS.items()}
        present = {s: p for s, p in expected.items() if os.path.isfile(p)}
        chosen = pick_splits(self, present, expected)
        return {split: self._generate_examples(root, split, path) for split, path in chosen.items()}

    def _generate_examples(self, root: str, split: str, annotation_path: str):
        data = load_json(require_file(annotation_path, "annotations"))
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise LayoutError(f"{annotation_path} has no '{key}' list; is it a COCO/LVIS instances file?")
        names, images, by_image = group_annotations(data, annotation_path)
        skipped = len(images) - len(by_image)
        if skipped:
            print(f"{annotation_path}: {skipped} of {len(images)} images have no annotations and are skipped")
        for image_id, anns in sorted(by_image.items()):
            image = images[image_id]
            h, w = int(image["height"]), int(image["width"])
            objects = []
            for ann in anns:
                try:
                    objects.append(instance_object(ann, names, h, w))
                except ValueError as e:
                    raise LayoutError(f"{annotation_path}: annotation {ann.get('id')} of image {image_id}: {e}") from None
            path = self._image_path(root, split, image)
            yield image_id, {
                "image": read_bytes(path),
                "image_id": image_id,
                "file_name": os.path.relpath(path, root),
                "height": h,
                "width": w,
                "objects": objects,
            }


class CocoInstances(_InstanceJson):
    """COCO 2017 instances."""

    SPLITS = {"train": "annotations/instances_train2017.json", "val": "annotations/instances_val2017.json"}

    def _image_path(self, root, split, image):
        return os.path.join(root, f"{split}2017", image["file_name"])


class LvisInstances(_InstanceJson):
    """LVIS v1 instances on COCO 2017 images."""

    SPLITS = {"train": "lvis_v1_train.json", "val": "lvis_v1_val.json"}

    def _image_path(self, root, split, image):
        url = image.get("coco_url")
        if not url:
            raise LayoutError(f"LVIS image {image.get('id')} has no coco_url to locate its file")
        return os.path.join(root, *url.split("/")[-2:])
