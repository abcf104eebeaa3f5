"""Your own data as TFDS datasets (array_record), in one of three layouts (docs/your_data.md):

  user_coco     annotations.json (COCO instances: images, annotations, categories; polygons, RLE,
                crowd flags) and images/ holding each image's file_name.
  user_masks    images/<stem>.<jpg|jpeg|png|bmp|webp> and masks/<stem>.png, a class-index map
                (0 background, 255 ignored, i = line i of classes.txt, counted from 1) and classes.txt.
  user_folders  one folder per class, <class>/<stem>.<jpg|jpeg> with its mask <class>/<stem>.png
                (foreground where the mask's luminance is >= 128), as FSS-1000 is laid out.

Every dataset is stored as the instance datasets are (`instances.instance_features`): each object
is a mask with its category id and name, the name being what SEGIC prompts with (the COCO category
name, the line of classes.txt, the folder name). user_masks stores each class present in an image
as one object (its pixels; 255 is in no object); user_folders one object per image. So a built
dataset trains as "class" (or "instance") episodes and evaluates as the `synthetic` benchmark does.

The dataset's own name is its config: `user_masks/pets` and `user_masks/cars` are two datasets under
one --data_dir (default config: `default`). Splits `train` and `test`: from train.txt and test.txt
in --manual_dir when they are there (one item a line: an image's stem for user_masks, its file_name
without extension for user_coco, <class>/<stem> or a whole <class> for user_folders; items in
neither list are left out), else drawn with --seed: --split_by images (default) holds out
--test_fraction of the images; --split_by classes holds out that fraction of the classes, an image
with any held-out class going to `test` with only its held-out objects, so that `train` never shows
a held-out class. Every malformed item is named in one error before anything is written.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from segic_jax.data import rle
from segic_jax.data.builders.common import (
    LayoutError, check_same_size, gray_pixels, image_size, load_json, pick_splits, read_bytes, read_stored_pixels,
    require_dir,
)
from segic_jax.data.builders.fewshot import image_mask_pairs
from segic_jax.data.builders.instances import group_annotations, instance_features, instance_object

_LAYOUT = __doc__  # the module's layout text (inside a class body, __doc__ is the class's)

SPLITS = ("train", "test")
LIST_FILES = {split: f"{split}.txt" for split in SPLITS}
SPLIT_BY = ("images", "classes")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


@dataclasses.dataclass
class _Item:
    key: str  # what a split list names
    image_path: str
    file_name: str  # relative to --manual_dir
    height: int
    width: int
    objects: list  # stored objects (instance_features' "objects" entries)


def _box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.asarray([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1], np.float32)


def _object(mask: np.ndarray, class_id: int, name: str) -> dict:
    return {"rle": rle.from_mask(mask), "category_id": class_id, "category_name": name, "iscrowd": False,
            "bbox": _box(mask)}


def _refuse(problems: list[str], root: str) -> None:
    if problems:
        raise LayoutError(f"{len(problems)} malformed item{'s' * (len(problems) > 1)} under {root}, nothing was "
                          "written; fix or remove them: " + "; ".join(problems))


def _image_hw(path: str, problems: list[str]) -> tuple[int, int] | None:
    try:
        return image_size(read_bytes(path), path)
    except LayoutError as e:
        problems.append(str(e))
        return None


class _UserData(tfds.core.GeneratorBasedBuilder):
    """Shared splitting and storing of a user's dataset; subclasses read their layout (`_scan`)."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="default", description="a user dataset")]
    # the build's options (python -m segic_jax.data.build --split_by / --test_fraction / --seed)
    split_by = "images"
    test_fraction = 0.2
    seed = 0

    def _create_builder_config(self, builder_config, version, *args, **kwargs):
        """Any name is a config: the dataset's own name, so that several user datasets coexist."""
        if isinstance(builder_config, str) and builder_config != "default":
            if not _NAME.match(builder_config):
                raise ValueError(f"dataset name {builder_config!r} (after {self.name}/): use lower-case letters, "
                                 "digits and _, starting with a letter")
            builder_config = tfds.core.BuilderConfig(name=builder_config, description="a user dataset")
        return super()._create_builder_config(builder_config, version, *args, **kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=instance_features(),
                                     metadata=tfds.core.MetadataDict())

    def _scan(self, root: str, problems: list[str]) -> tuple[list[_Item], dict[int, str]]:
        """Every item of the layout, checked, and the class names by id; each malformed item is a line
        in `problems` (and left out)."""
        raise NotImplementedError

    def _list_keys(self, item: _Item) -> tuple[str, ...]:
        """The names a split list may give `item` by."""
        return (item.key,)

    def _split_generators(self, dl_manager):
        root = require_dir(os.fspath(dl_manager.manual_dir), f"--manual_dir of {self.name}")
        if self.split_by not in SPLIT_BY:
            raise ValueError(f"--split_by {self.split_by!r}: choose one of {', '.join(SPLIT_BY)}")
        if not 0 < float(self.test_fraction) < 1:
            raise ValueError(f"--test_fraction {self.test_fraction}: must be between 0 and 1")
        chosen = pick_splits(self, {s: s for s in SPLITS}, {s: f"the {s} split" for s in SPLITS})
        problems: list[str] = []
        items, names = self._scan(root, problems)
        keys: dict[str, list[str]] = {}
        for item in items:
            keys.setdefault(item.key, []).append(item.file_name)
        problems.extend(f"{' and '.join(files)} under {root} share the name {key!r}; one image per name"
                        for key, files in keys.items() if len(files) > 1)
        lists = self._read_lists(root, items, problems)
        _refuse(problems, root)  # nothing is written before every item is checked
        if not items:
            raise LayoutError(f"{root} holds no images in {self.name}'s layout (see docs/your_data.md)")
        splits = lists if lists is not None else self._draw(root, items)
        self.info.metadata.update(
            class_names={str(k): v for k, v in sorted(names.items())},
            split_by="lists" if lists is not None else self.split_by,
            test_classes=sorted({o["category_id"] for it in splits["test"] for o in it.objects})
            if lists is None and self.split_by == "classes" else [],
        )
        return {s: self._generate_examples(splits[s]) for s in chosen}

    def _read_lists(self, root: str, items: list[_Item], problems: list[str]) -> dict | None:
        paths = {s: os.path.join(root, f) for s, f in LIST_FILES.items()}
        present = [s for s, p in paths.items() if os.path.isfile(p)]
        if not present:
            return None
        if len(present) < len(SPLITS):
            missing = [paths[s] for s in SPLITS if s not in present]
            raise LayoutError(f"{paths[present[0]]} is there but not {', '.join(missing)}: give both split lists or neither")
        by_key: dict[str, list[_Item]] = {}
        for item in items:
            for key in self._list_keys(item):
                by_key.setdefault(key, []).append(item)
        out, seen = {}, {}
        for split in SPLITS:
            out[split] = []
            with open(paths[split]) as f:
                lines = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
            for n, key in lines:
                if key not in by_key:
                    problems.append(f"{paths[split]} line {n}: {key!r} is no item of the dataset")
                    continue
                for item in by_key[key]:
                    if item.key in seen and seen[item.key] != split:
                        problems.append(f"{paths[split]} line {n}: {item.key!r} is also in {LIST_FILES[seen[item.key]]}")
                    elif item.key not in seen:
                        seen[item.key] = split
                        out[split].append(item)
        left = len(items) - len(seen)
        if left and not problems:
            print(f"{self.name}: {left} of {len(items)} images are in neither split list and are left out", flush=True)
        return out

    def _draw(self, root: str, items: list[_Item]) -> dict:
        rng = np.random.default_rng(int(self.seed))
        if self.split_by == "images":
            if len(items) < 2:
                raise LayoutError(f"{root} holds {len(items)} image; holding out images needs at least 2")
            n_test = min(len(items) - 1, max(1, round(self.test_fraction * len(items))))
            test = {int(i) for i in rng.permutation(len(items))[:n_test]}
            return {"train": [it for i, it in enumerate(items) if i not in test],
                    "test": [it for i, it in enumerate(items) if i in test]}
        classes = sorted({o["category_id"] for it in items for o in it.objects})
        if len(classes) < 2:
            raise LayoutError(f"{root} has {len(classes)} class; holding out classes needs at least 2")
        n_test = min(len(classes) - 1, max(1, round(self.test_fraction * len(classes))))
        held = {classes[int(i)] for i in rng.permutation(len(classes))[:n_test]}
        train, test = [], []
        for item in items:
            kept = [o for o in item.objects if o["category_id"] in held]
            if kept:
                test.append(dataclasses.replace(item, objects=kept))
            else:
                train.append(item)
        if not train:
            raise LayoutError(f"every image under {root} shows a held-out class, so nothing is left to train on; "
                              "give a lower --test_fraction, another --seed or split lists")
        return {"train": train, "test": test}

    def _generate_examples(self, items: list[_Item]):
        for index, item in enumerate(items):
            yield item.key, {
                "image": read_bytes(item.image_path),
                "image_id": index,
                "file_name": item.file_name,
                "height": item.height,
                "width": item.width,
                "objects": item.objects,
            }


class UserCoco(_UserData):
    """A user's dataset in COCO format: annotations.json and images/."""

    def _list_keys(self, item):
        return (item.key, os.path.basename(item.key))

    def _scan(self, root, problems):
        from segic_jax.data.builders.common import require_file

        path = require_file(os.path.join(root, "annotations.json"), "the COCO instances file of user_coco")
        images_dir = require_dir(os.path.join(root, "images"), "the images of user_coco")
        data = load_json(path)
        for key in ("images", "annotations", "categories"):
            if not isinstance(data, dict) or not isinstance(data.get(key), list):
                raise LayoutError(f"{path} has no '{key}' list; is it a COCO instances file?")
        names, images, by_image = group_annotations(data, path, problems)
        counts: dict[str, int] = {}
        for name in names.values():
            counts[name] = counts.get(name, 0) + 1
        problems.extend(f"{path}: {counts[n]} categories are named {n!r}; a class name must be unique"
                        for n in sorted(counts) if counts[n] > 1)
        items = []
        for image_id, anns in sorted(by_image.items()):
            image = images[image_id]
            image_path = os.path.join(images_dir, str(image.get("file_name", "")))
            hw = _image_hw(image_path, problems)
            if hw is None:
                continue
            if (image.get("height"), image.get("width")) != hw:
                problems.append(f"{image_path} is {hw[1]}x{hw[0]} but {path} gives it "
                                f"{image.get('width')}x{image.get('height')}")
                continue
            objects = []
            for ann in anns:
                try:
                    obj = instance_object(ann, names, *hw)
                except (KeyError, TypeError, ValueError) as e:
                    problems.append(f"{path}: annotation {ann.get('id')} of {image['file_name']}: {e}")
                    continue
                if not rle.decode(obj["rle"]).any():
                    problems.append(f"{path}: annotation {ann.get('id')} of {image['file_name']}: empty mask")
                    continue
                objects.append(obj)
            rel = os.path.relpath(image_path, root)
            items.append(_Item(os.path.splitext(str(image["file_name"]))[0], image_path, rel, *hw, objects))
        skipped = len(images) - len(by_image)
        if skipped and not problems:
            print(f"{path}: {skipped} of {len(images)} images have no annotations and are skipped", flush=True)
        return items, dict(names)


def read_class_names(path: str) -> list[str]:
    """classes.txt: line i names class i (from 1); a blank line among them, or a name twice, names the line."""
    with open(path) as f:
        lines = [line.strip() for line in f.read().splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for n, name in enumerate(lines, 1):
        if not name:
            raise LayoutError(f"{path} line {n} is blank; line i names class i")
        if name in lines[: n - 1]:
            raise LayoutError(f"{path} line {n}: {name!r} names an earlier class too; a class name must be unique")
    if not lines:
        raise LayoutError(f"{path} names no class")
    if len(lines) > 254:
        raise LayoutError(f"{path} names {len(lines)} classes; a class-index PNG holds at most 254 (255 is ignored)")
    return lines


class UserMasks(_UserData):
    """A user's dataset of images and class-index masks: images/, masks/, classes.txt."""

    def _scan(self, root, problems):
        from segic_jax.data.builders.common import require_file

        images_dir = require_dir(os.path.join(root, "images"), "the images of user_masks")
        masks_dir = require_dir(os.path.join(root, "masks"), "the class-index masks of user_masks")
        names = read_class_names(require_file(os.path.join(root, "classes.txt"), "the class names of user_masks"))
        by_stem: dict[str, list[str]] = {}
        for f in sorted(os.listdir(images_dir)):
            if os.path.splitext(f)[1].lower() in IMAGE_EXTS:
                by_stem.setdefault(os.path.splitext(f)[0], []).append(f)
        masks = {os.path.splitext(f)[0] for f in os.listdir(masks_dir) if f.endswith(".png")}
        problems.extend(f"{os.path.join(masks_dir, s + '.png')} has no image in {images_dir}"
                        for s in sorted(masks - set(by_stem)))
        items = []
        for stem, files in sorted(by_stem.items()):
            image_path = os.path.join(images_dir, files[0])
            mask_path = os.path.join(masks_dir, stem + ".png")
            if len(files) > 1:
                problems.append(f"{images_dir} has {' and '.join(files)}: one image per stem")
                continue
            if stem not in masks:
                problems.append(f"{image_path} has no mask {mask_path}")
                continue
            hw = _image_hw(image_path, problems)
            try:
                label = read_stored_pixels(mask_path)
            except LayoutError as e:
                problems.append(str(e))
                continue
            if hw is None:
                continue
            if label.ndim != 2:
                problems.append(f"{mask_path} has {label.shape[2]} channels; a class-index mask is one channel "
                                "(grayscale or palette PNG)")
                continue
            try:
                check_same_size(mask_path, label.shape, image_path, hw)
            except LayoutError as e:
                problems.append(str(e))
                continue
            values = [int(v) for v in np.unique(label)]
            unknown = [v for v in values if v != 255 and v > len(names)]
            if unknown:
                problems.append(f"{mask_path} has class indices {unknown} beyond the {len(names)} of classes.txt")
                continue
            present = [v for v in values if 0 < v < 255]
            if not present:
                problems.append(f"{mask_path} is empty (no pixel of any class)")
                continue
            objects = [_object(label == c, c, names[c - 1]) for c in present]
            items.append(_Item(stem, image_path, os.path.relpath(image_path, root), *hw, objects))
        return items, {i + 1: n for i, n in enumerate(names)}


class UserFolders(_UserData):
    """A user's dataset of one folder per class: <class>/<stem>.jpg and <class>/<stem>.png."""

    def _list_keys(self, item):
        return (item.key, item.key.partition("/")[0])

    def _scan(self, root, problems):
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
        items = []
        for class_id, cls in enumerate(classes, 1):
            folder = os.path.join(root, cls)
            pairs, unpaired, orphans = image_mask_pairs(folder, (".jpg", ".jpeg"))
            problems.extend(f"{os.path.join(folder, f)} has no mask {os.path.join(folder, os.path.splitext(f)[0])}.png"
                            for f in unpaired)
            problems.extend(f"{os.path.join(folder, m)} has no image (.jpg) in {folder}" for m in orphans)
            if not pairs and not unpaired and not orphans:
                problems.append(f"{folder} has no images (.jpg + .png mask)")
            for stem, name, mask_name in pairs:
                image_path, mask_path = os.path.join(folder, name), os.path.join(folder, mask_name)
                hw = _image_hw(image_path, problems)
                try:
                    mask_bytes = read_bytes(mask_path)
                    mask_hw = image_size(mask_bytes, mask_path)
                    if hw is None:
                        continue
                    check_same_size(mask_path, mask_hw, image_path, hw)
                    mask = gray_pixels(mask_bytes) >= 128
                except LayoutError as e:
                    problems.append(str(e))
                    continue
                except Exception as e:  # a header that reads but pixels that do not (a truncated file)
                    problems.append(f"cannot read {mask_path} as an image ({e}); is the file complete?")
                    continue
                if not mask.any():
                    problems.append(f"{mask_path} is empty (no pixel >= 128)")
                    continue
                items.append(_Item(f"{cls}/{stem}", image_path, f"{cls}/{name}", *hw, [_object(mask, class_id, cls)]))
        return items, {i: c for i, c in enumerate(classes, 1)}
