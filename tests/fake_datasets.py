"""Tiny datasets in the real on-disk layouts, for the builder and pipeline tests."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image


def _jpeg(path, rng, h, w, mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    img.convert(mode).save(path, quality=95)


def coco_annotations(rng, images):
    """A COCO instances dict over `images` [(id, file_name, h, w)], with polygons (one of two
    parts), an uncompressed crowd RLE and a compressed RLE, and one image left unannotated."""
    from pycocotools import mask as mask_utils

    anns, ann_id = [], 1
    for image_id, _, h, w in images[:-1]:
        anns.append(dict(id=ann_id, image_id=image_id, category_id=1, iscrowd=0, bbox=[2, 3, 10, 8],
                         segmentation=[[2, 3, 12, 3, 12, 11, 2, 11], [20, 20, 26, 20, 23, 27]], area=1.0))
        crowd = np.zeros((h, w), np.uint8)
        crowd[h // 2 :, : w // 3] = 1
        counts, run, value = [], 0, 0
        for v in crowd.flatten(order="F"):
            if v == value:
                run += 1
            else:
                counts.append(run)
                run, value = 1, v
        counts.append(run)
        anns.append(dict(id=ann_id + 1, image_id=image_id, category_id=2, iscrowd=1, bbox=[0, h // 2, w // 3, h - h // 2],
                         segmentation={"size": [h, w], "counts": counts}, area=1.0))
        blob = np.zeros((h, w), np.uint8)
        blob[1:5, w - 9 : w - 2] = 1
        enc = mask_utils.encode(np.asfortranarray(blob))
        anns.append(dict(id=ann_id + 2, image_id=image_id, category_id=3, iscrowd=0, bbox=[w - 9, 1, 7, 4],
                         segmentation={"size": [h, w], "counts": enc["counts"].decode()}, area=1.0))
        ann_id += 3
    return dict(
        images=[dict(id=i, file_name=f, height=h, width=w, coco_url=f"http://images.cocodataset.org/train2017/{f}")
                for i, f, h, w in images],
        annotations=anns,
        categories=[dict(id=1, name="person"), dict(id=2, name="traffic light"), dict(id=3, name="dog")],
    )


def write_coco(root, rng, split="train"):
    """root/annotations/instances_{split}2017.json and root/{split}2017/*.jpg."""
    images = [(7, "000000000007.jpg", 40, 50), (3, "000000000003.jpg", 33, 61), (9, "000000000009.jpg", 20, 20)]
    for _, f, h, w in images:
        _jpeg(os.path.join(root, f"{split}2017", f), rng, h, w, mode="L" if f.endswith("3.jpg") else "RGB")
    data = coco_annotations(rng, images)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    path = os.path.join(root, "annotations", f"instances_{split}2017.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def write_lvis(root, rng):
    """root/lvis_v1_val.json with images under root/train2017 (by coco_url)."""
    images = [(11, "000000000011.jpg", 30, 30), (12, "000000000012.jpg", 25, 35), (13, "000000000013.jpg", 20, 20)]
    for _, f, h, w in images:
        _jpeg(os.path.join(root, "train2017", f), rng, h, w)
    data = coco_annotations(rng, images)
    for ann in data["annotations"]:
        ann.pop("iscrowd")
    for im in data["images"]:
        im.pop("file_name")
    path = os.path.join(root, "lvis_v1_val.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def write_ade(root, rng, per_split=3):
    """ADEChallengeData2016 layout with a 150-class objectInfo150.txt."""
    from PIL import Image

    for split in ("training", "validation"):
        os.makedirs(os.path.join(root, "images", split), exist_ok=True)
        os.makedirs(os.path.join(root, "annotations", split), exist_ok=True)
        for i in range(per_split):
            h, w = 24 + i, 30
            stem = f"ADE_{'train' if split == 'training' else 'val'}_{i + 1:08d}"
            _jpeg(os.path.join(root, "images", split, stem + ".jpg"), rng, h, w)
            label = np.zeros((h, w), np.uint8)
            label[: h // 2] = 1 + i  # class i + 1 (wall, building, ...)
            label[h // 2 :, : w // 2] = 5
            Image.fromarray(label).save(os.path.join(root, "annotations", split, stem + ".png"))
    rows = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i}\t0.1\t10\t1\tclass{i};synonym" for i in range(1, 151)]
    with open(os.path.join(root, "objectInfo150.txt"), "w") as f:
        f.write("\n".join(rows) + "\n")


def write_coco2014(root, rng):
    """COCO 2014 layout with 80 categories (ids with COCO's gaps) for COCO-20i."""
    ids = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
    images = [(1, "COCO_train2014_000000000001.jpg", 30, 40), (2, "COCO_train2014_000000000002.jpg", 20, 20)]
    for _, f, h, w in images:
        _jpeg(os.path.join(root, "train2014", f), rng, h, w)
    anns = [
        dict(id=1, image_id=1, category_id=ids[0], iscrowd=0, segmentation=[[0, 0, 20, 0, 20, 20, 0, 20]], bbox=[0, 0, 20, 20]),
        dict(id=2, image_id=1, category_id=ids[5], iscrowd=0, segmentation=[[10, 10, 39, 10, 39, 29, 10, 29]], bbox=[10, 10, 29, 19]),
        dict(id=3, image_id=2, category_id=ids[5], iscrowd=0, segmentation=[[2, 2, 15, 2, 15, 15, 2, 15]], bbox=[2, 2, 13, 13]),
    ]
    data = dict(images=[dict(id=i, file_name=f, height=h, width=w) for i, f, h, w in images], annotations=anns,
                categories=[dict(id=c, name=f"cat{c}") for c in ids])
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(os.path.join(root, "annotations", "instances_train2014.json"), "w") as f:
        json.dump(data, f)
    return data


def _palette_png(path, labels):
    img = Image.fromarray(labels.astype(np.uint8), "P")
    img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * 756)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path)


def write_fss(root, rng, classes=("hot_dog", "cat", "airliner", "bear")):
    """FSS-1000 layout: <class>/N.jpg + N.png and splits/{trn,val,test}.txt."""
    for cls in classes:
        for n in range(1, 4):
            _jpeg(os.path.join(root, cls, f"{n}.jpg"), rng, 20, 20)
            mask = np.zeros((20, 20), np.uint8)
            mask[n : n + 8, 3:15] = 255
            Image.fromarray(mask).save(os.path.join(root, cls, f"{n}.png"))
    os.makedirs(os.path.join(root, "splits"), exist_ok=True)
    for name, part in (("trn", classes[:2]), ("val", classes[2:3]), ("test", classes[3:])):
        with open(os.path.join(root, "splits", f"{name}.txt"), "w") as f:
            f.write("\n".join(part) + "\n")


def write_davis(root, rng, videos=("bear", "dogs")):
    """DAVIS 2017 layout with palette masks, 4 frames per video, both videos in val."""
    for v, video in enumerate(videos):
        for t in range(4):
            _jpeg(os.path.join(root, "JPEGImages", "480p", video, f"{t:05d}.jpg"), rng, 24, 32)
            labels = np.zeros((24, 32), np.uint8)
            labels[2 + t : 10 + t, 4:12] = 1
            if v:
                labels[12:20, 16 + t : 24 + t] = 2
            _palette_png(os.path.join(root, "Annotations", "480p", video, f"{t:05d}.png"), labels)
    os.makedirs(os.path.join(root, "ImageSets", "2017"), exist_ok=True)
    with open(os.path.join(root, "ImageSets", "2017", "val.txt"), "w") as f:
        f.write("\n".join(videos) + "\n")


def write_youtube_vos(root, rng):
    """YouTube-VOS 2018 valid layout: first-frame masks only, an object appearing later."""
    video = "0a1b2c3d"
    for t in range(0, 15, 5):
        _jpeg(os.path.join(root, "valid", "JPEGImages", video, f"{t:05d}.jpg"), rng, 24, 32)
    first = np.zeros((24, 32), np.uint8)
    first[2:10, 4:12] = 1
    _palette_png(os.path.join(root, "valid", "Annotations", video, "00000.png"), first)
    later = np.zeros((24, 32), np.uint8)
    later[12:20, 16:24] = 2
    _palette_png(os.path.join(root, "valid", "Annotations", video, "00010.png"), later)
    meta = {"videos": {video: {"objects": {"1": {"category": "dog", "frames": ["00000", "00005", "00010"]},
                                           "2": {"category": "cat", "frames": ["00010"]}}}}}
    with open(os.path.join(root, "valid", "meta.json"), "w") as f:
        json.dump(meta, f)


# the splits each fake provides (the real datasets have more): builds of the fakes name them, as a
# user with part of a dataset does (`--splits`); a build without them would rightly refuse
FAKE_SPLITS = {"coco_instances": "train", "lvis_instances": "val", "coco20i_semantic": "train", "davis2017": "val",
               "youtube_vos": "valid"}


def fake_splits(name: str) -> list[str] | None:
    split = FAKE_SPLITS.get(name.partition("/")[0])
    return [split] if split else None


def build_args(name: str, manual_dir, data_dir, split: str | None = None) -> list[str]:
    """`python -m segic_jax.data.build` arguments for a fake dataset (`split`: another than the usual)."""
    splits = [split] if split else fake_splits(name)
    return [name, "--manual_dir", str(manual_dir), "--data_dir", str(data_dir)] + (["--splits", ",".join(splits)] if splits else [])


def write_coco2014_split(root, rng, folder: str, images: dict[str, list[int]]):
    """root/<folder>/ and annotations/instances_<folder>.json: `images` {file name: 0-based classes},
    each class a square of its own in the image, over COCO's 80 category ids and names."""
    ids = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
    names = {ids[0]: "person", ids[4]: "airplane", ids[57]: "couch"}
    entries, anns = [], []
    for image_id, (name, classes) in enumerate(sorted(images.items()), start=1):
        _jpeg(os.path.join(root, folder, name), rng, 24, 24 + image_id)
        entries.append(dict(id=image_id, file_name=name, height=24, width=24 + image_id))
        for j, c in enumerate(classes):
            x = 2 + 7 * j
            anns.append(dict(id=len(anns) + 1, image_id=image_id, category_id=ids[c], iscrowd=0,
                             segmentation=[[x, 2, x + 5, 2, x + 5, 20, x, 20]], bbox=[x, 2, 5, 18]))
    data = dict(images=entries, annotations=anns,
                categories=[dict(id=c, name=names.get(c, f"category{c}")) for c in ids])
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(os.path.join(root, "annotations", f"instances_{folder}.json"), "w") as f:
        json.dump(data, f)


def write_hsnet_lists(splits_dir, split: str, lists: dict[int, list[str]], fold_of: dict[str, int] | None = None):
    """HSNet's data/splits/coco/<split>/fold{0..3}.pkl: for each fold a dict over the fold's classes
    (val: its 20 held-out classes; trn: the other 60), 0-based, of "<folder>/<file>" names; `lists`
    gives a class's images, listed in every fold that has the class unless `fold_of` names the one
    fold an image is listed in."""
    fold_of = fold_of or {}
    import pickle

    folder = "val2014" if split == "val" else "train2014"
    for fold in range(4):
        held_out = {fold + 4 * v for v in range(20)}
        classes = sorted(held_out if split == "val" else set(range(80)) - held_out)
        fold_lists = {c: [f"{folder}/{n}" for n in lists.get(c, []) if fold_of.get(n, fold) == fold] for c in classes}
        path = os.path.join(splits_dir, "coco", split, f"fold{fold}.pkl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(fold_lists, f)
