"""Semantic-segmentation datasets as TFDS datasets (array_record), built without TensorFlow.

Layouts read from --manual_dir:
  ade20k_semantic   ADEChallengeData2016: images/{training,validation}/*.jpg,
                    annotations/{training,validation}/*.png (0 = other, 1..150).
  coco20i_semantic  COCO 2014: {train,val}2014/*.jpg, annotations/instances_{train,val}2014.json;
                    the class map (1..80 in category-id order, 0 background) is rasterised from the
                    instance masks, later annotations over earlier ones, crowd regions included.
                    And, for the paper's protocol, HSNet's split lists (its repository's data/splits:
                    coco/val/fold{0..3}.pkl, coco/trn/fold{0..3}.pkl) in splits/ (or --splits_dir):
                    the images each class's episodes draw from. Without them every image containing
                    a class is in its pool, which is not the paper's protocol.
Each example: the encoded image bytes, the label map as PNG bytes, the file name, the size, the
classes present and `pool_classes`, the classes whose episodes may use the image (HSNet's lists:
the union of the split's four folds; without them, the classes present). `info.metadata["pools"]`
says which ("hsnet" or "present"). The class names SEGIC prompts with are segic_jax/data/names.py's.
"""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import tensorflow_datasets as tfds

from segic_jax.data import rle
from segic_jax.data.builders.common import (
    LayoutError, image_size, load_json, pick_splits, read_bytes, read_stored_pixels, require_dir, require_file,
)

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
            "pool_classes": tfds.features.Sequence(np.int32),
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

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "pool_classes; the class names are the package's (no objectInfo150 needed)"}

    SPLITS = {"train": "training", "val": "validation"}

    def _split_generators(self, dl_manager):
        root = require_dir(os.fspath(dl_manager.manual_dir), "--manual_dir of ade20k_semantic")
        self.info.metadata["pools"] = "present"
        expected = {s: os.path.join(root, "images", d) for s, d in self.SPLITS.items()}
        present = {s: self.SPLITS[s] for s, p in expected.items() if os.path.isdir(p)}
        return {s: self._generate_examples(root, d) for s, d in pick_splits(self, present, expected).items()}

    def _generate_examples(self, root: str, folder: str):
        images = require_dir(os.path.join(root, "images", folder), "ADE20K images")
        labels = require_dir(os.path.join(root, "annotations", folder), "ADE20K annotations")
        for name in sorted(f for f in os.listdir(images) if f.lower().endswith(".jpg")):
            stem = os.path.splitext(name)[0]
            label_path = require_file(os.path.join(labels, stem + ".png"), f"the label of {name}")
            data = read_bytes(os.path.join(images, name))
            h, w = image_size(data, os.path.join(images, name))
            label = read_stored_pixels(label_path)
            if label.shape != (h, w):
                raise LayoutError(f"{label_path} is {label.shape[1]}x{label.shape[0]} but its image is {w}x{h}")
            classes = sorted(int(c) for c in np.unique(label) if 0 < c <= 150)
            yield stem, {
                "image": data, "label": read_bytes(label_path), "file_name": f"{folder}/{name}",
                "height": h, "width": w, "classes": classes, "pool_classes": classes,
            }


# What a split list may refer to besides dicts, lists and strings: numpy's integer class ids, as
# pickled by numpy 1.x (numpy.core) and 2.x (numpy._core).
_NUMPY_GLOBALS = {
    (module, name)
    for core in ("numpy.core", "numpy._core")
    for module, name in ((f"{core}.multiarray", "scalar"), (f"{core}.multiarray", "_reconstruct"),
                         ("numpy", "dtype"), ("numpy", "ndarray"))
}


class _Lists(pickle.Unpickler):
    """HSNet's lists are pickled dicts of lists of strings: nothing else is loaded from them."""

    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise LayoutError(f"unexpected {module}.{name} in a split list")


def _load_lists(path: str):
    """The object pickled in `path`, through `_Lists`. Whatever a damaged or crafted file does to the
    unpickler (a refused or unknown global, a length beyond the file or memory, a bad opcode, deep
    nesting) is a LayoutError naming the file."""
    with open(path, "rb") as f:
        try:
            return _Lists(f).load()
        except Exception as e:  # noqa: BLE001  every failure of reading the file, MemoryError included
            if isinstance(e, LayoutError):
                detail = str(e)
            elif isinstance(e, MemoryError):
                detail = "a length in it is beyond this machine's memory"
            else:
                detail = f"{type(e).__name__}: {e}".rstrip(": ")
            raise LayoutError(f"{path} is not one of HSNet's split lists ({detail})") from None


def hsnet_pools(splits_dir: str, split: str) -> dict[str, list[int]]:
    """{image file name: sorted 1-based classes it is listed for} from HSNet's four fold lists of
    `split` ("trn" or "val"; coco/<split>/fold{0..3}.pkl, each {0-based class: [image names]})."""
    pools: dict[str, set[int]] = {}
    for fold in range(4):
        path = require_file(os.path.join(splits_dir, "coco", split, f"fold{fold}.pkl"), f"HSNet's COCO-20i {split} list")
        lists = _load_lists(path)
        if not isinstance(lists, dict) or not lists:
            raise LayoutError(f"{path} is not one of HSNet's split lists (a dict of class -> image names)")
        held_out = {fold + 4 * v for v in range(20)}
        expected = held_out if split == "val" else set(range(80)) - held_out
        if {int(c) for c in lists} != expected:
            raise LayoutError(f"{path} lists classes {sorted(int(c) for c in lists)[:6]}..., not fold {fold}'s {split} "
                              f"classes {sorted(expected)[:6]}...")
        for c, names in lists.items():
            for name in names:
                pools.setdefault(os.path.basename(str(name)), set()).add(int(c) + 1)
    return {name: sorted(classes) for name, classes in pools.items()}


class Coco20iSemantic(_Semantic):
    """COCO 2014 semantic maps for COCO-20i."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "pool_classes from HSNet's split lists"}
    SPLITS = {"train": "train2014", "val": "val2014"}
    LISTS = {"train": "trn", "val": "val"}
    splits_dir: str | None = None  # HSNet's data/splits (build --splits_dir); default: <manual_dir>/splits

    def _split_generators(self, dl_manager):
        root = require_dir(os.fspath(dl_manager.manual_dir), "--manual_dir of coco20i_semantic")
        expected = {s: os.path.join(root, "annotations", f"instances_{d}.json") for s, d in self.SPLITS.items()}
        present = {s: p for s, p in expected.items() if os.path.isfile(p)}
        chosen = pick_splits(self, present, expected)
        splits_dir = self.splits_dir or os.path.join(root, "splits")
        if self.splits_dir is not None:
            require_dir(os.path.join(self.splits_dir, "coco"), "--splits_dir: HSNet's data/splits, with coco/trn and coco/val")
        hsnet = self.splits_dir is not None or os.path.isdir(os.path.join(splits_dir, "coco"))
        # every list is read (and checked) before anything is written
        pools = {s: hsnet_pools(splits_dir, self.LISTS[s]) if hsnet else None for s in chosen}
        self.info.metadata["pools"] = "hsnet" if hsnet else "present"
        return {s: self._generate_examples(root, self.SPLITS[s], p, pools[s]) for s, p in chosen.items()}

    def _generate_examples(self, root: str, folder: str, annotation_path: str, pools: dict[str, list[int]] | None):
        data = load_json(annotation_path)
        cats = sorted(c["id"] for c in data.get("categories", []))
        if len(cats) != 80:
            raise LayoutError(f"{annotation_path} lists {len(cats)} categories, COCO has 80")
        if pools is not None:
            unknown = sorted(set(pools) - {im["file_name"] for im in data["images"]})
            if unknown:
                raise LayoutError(f"HSNet's {folder} lists name {len(unknown)} images that {annotation_path} does not "
                                  f"have, e.g. {unknown[0]}")
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
            classes = sorted(int(c) for c in np.unique(label) if c)
            yield image_id, {
                "image": read_bytes(path), "label": _png(label), "file_name": f"{folder}/{image['file_name']}",
                "height": h, "width": w, "classes": classes,
                "pool_classes": classes if pools is None else pools.get(image["file_name"], []),
            }
