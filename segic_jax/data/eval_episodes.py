"""Fixed, seeded evaluation episode lists (docs/benchmarks.md protocols) and their materialisation.

An episode is (class_id, query index, support indices) into a built dataset's split; the same
seed always gives the same list, so runs and hosts agree on what is evaluated.

  coco20i   COCO-20i fold f (0..3) on coco20i_semantic val: classes {f + 4v + 1 : v = 0..19}
            (1-based ids in the 80-class order), 1000 episodes: class uniform over the fold's
            classes, query uniform among its pool (HSNet's list when the dataset was built with
            it: `pool_classes`), supports other images of the pool.
  coco2017  the original README's `--eval_datasets coco` protocol on coco_instances val: every
            image once (image first), class uniform among its categories, mask = the union of
            that category's instances, supports other images with the class.
  fss1000   every fss1000 test image is a query once (2400); supports other images of its class.
            Queries in the original's order (classes sorted, then file paths sorted as strings);
            as the original, an episode whose query or support image differs in size from its
            mask is replaced by the episode of the next query in that order (index + 1, with a
            support drawn for it).
  lvis92i   LVIS-92i fold f (0..9) on lvis_instances val: categories annotated in more than one
            image, sorted by id, fold = categories[f::10]; 2300 episodes chosen as the SEGIC code
            does (class uniform, then a query image of it, then supports).
query_as_support (lvis92i, coco2017): the original's reference choice, in which a class with no
more than `shots` other images (for one shot: a class in exactly two images) is referenced by the
query itself; False draws only other images, and such classes (coco2017: such queries) are left out.
  synthetic one-shot (or k-shot) episodes on synthetic_incontext's test split, whose classes are
            all held out from training: chosen like lvis92i over every class of the split.
  ade20k    the semantic protocol: every val image once (or a seeded subset); the references are
            one training image per class (`ade20k_references`).
  davis2017 every val video once (the first frame is the context).
k-shot: `shots` supports, all different and different from the query.
"""

from __future__ import annotations

import io
from typing import NamedTuple, Sequence

import numpy as np
from tqdm.auto import tqdm

from segic_jax.data.sources import class_mask, decode_gray, decode_image, decode_semantic, text


class Episode(NamedTuple):
    class_id: int
    query: int
    supports: tuple[int, ...]


def _index(values_per_item: Sequence[Sequence[int]]) -> dict[int, list[int]]:
    images_of: dict[int, list[int]] = {}
    for i, values in enumerate(values_per_item):
        for v in sorted(set(int(x) for x in values)):
            images_of.setdefault(v, []).append(i)
    return images_of


def _supports(rng, pool: list[int], query: int, shots: int, what: str, query_as_support: bool = False) -> tuple[int, ...]:
    others = [i for i in pool if i != query]
    if query_as_support and len(others) <= shots:  # the original's `_get_ref_cid`: `if len(others) > 1`
        return (int(query),) * shots
    if len(others) < shots:
        raise ValueError(f"{what} has {len(others)} other images, fewer than the {shots} shots asked for")
    return tuple(int(i) for i in rng.choice(others, size=shots, replace=False))


def _class_first(images_of, classes, episodes, shots, seed, what, query_as_support=False):
    rng = np.random.default_rng(seed)
    usable = [c for c in classes if len(images_of.get(c, [])) > (0 if query_as_support else shots)]
    if not usable:
        raise ValueError(f"no class of {what} has {shots + 1} images")
    out = []
    for _ in range(episodes):
        c = usable[int(rng.integers(len(usable)))]
        q = images_of[c][int(rng.integers(len(images_of[c])))]
        out.append(Episode(c, int(q), _supports(rng, images_of[c], q, shots, f"class {c} of {what}", query_as_support)))
    return out


def subset(count: int, episodes: int, seed: int) -> list[int]:
    """All of range(count), or a seeded sorted sample of `episodes` of them when 0 < episodes < count."""
    if not 0 < episodes < count:
        return list(range(count))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(count, episodes, replace=False))


def coco20i(source, fold: int, shots: int = 1, episodes: int = 1000, seed: int = 0) -> list[Episode]:
    if fold not in range(4):
        raise ValueError(f"COCO-20i fold must be 0..3, got {fold}")
    classes = [fold + 4 * v + 1 for v in range(20)]
    images_of = _index([source[i]["pool_classes"] for i in tqdm(range(len(source)), desc="indexing", leave=False)])
    return _class_first(images_of, classes, episodes, shots, seed + fold, f"COCO-20i fold {fold}")


def lvis92i(source, fold: int, shots: int = 1, episodes: int = 2300, seed: int = 0,
            query_as_support: bool = True) -> list[Episode]:
    if fold not in range(10):
        raise ValueError(f"LVIS-92i fold must be 0..9, got {fold}")
    images_of = _index([source[i]["objects"]["category_id"] for i in tqdm(range(len(source)), desc="indexing", leave=False)])
    categories = sorted(c for c, images in images_of.items() if len(images) > 1)
    return _class_first(images_of, categories[fold::10], episodes, shots, seed + fold, f"LVIS-92i fold {fold}",
                        query_as_support)


def coco2017(source, shots: int = 1, seed: int = 0, query_as_support: bool = True) -> list[Episode]:
    """One episode per image, in the source's order: a class uniform among the image's categories,
    then supports among the other images with it (the original's SemCOCO evaluation)."""
    categories = [sorted({int(c) for c in source[i]["objects"]["category_id"]})
                  for i in tqdm(range(len(source)), desc="indexing", leave=False)]
    images_of = _index(categories)
    rng = np.random.default_rng(seed)
    out = []
    for q, cats in enumerate(categories):
        if not cats:
            continue
        c = cats[int(rng.integers(len(cats)))]
        if not query_as_support and len(images_of[c]) <= shots:
            continue  # no other images enough to reference this class
        out.append(Episode(c, q, _supports(rng, images_of[c], q, shots, f"category {c}", query_as_support)))
    if not out:
        raise ValueError(f"no image of the COCO 2017 split has a category in {shots + 1} images")
    return out


def synthetic(source, shots: int = 1, episodes: int = 1000, seed: int = 0, what: str = "the synthetic test split") -> list[Episode]:
    """Class-first episodes over a split stored as instances (the synthetic dataset, a user's dataset)."""
    images_of = _index([source[i]["objects"]["category_id"] for i in tqdm(range(len(source)), desc="indexing", leave=False)])
    return _class_first(images_of, sorted(images_of), episodes, shots, seed, what)


def ade20k_references(source, seed: int = 0, min_area: float = 0.05) -> dict[int, int]:
    """One training image per class for the semantic evaluation: {class id: index into `source`}.

    SEGIC's references are Stable-Diffusion images that were never released; this picks real
    training images by a fixed rule instead. For each class, its training images are visited in a
    seeded random order (seed `[seed, class]`, so one class's pick does not depend on the others')
    and the first where the class covers at least `min_area` of the pixels is taken, so that the
    reference shows the class and not a sliver of it; when none does, the one where it covers the
    most (the first of those in that order)."""
    images_of = _index([source[i]["classes"] for i in tqdm(range(len(source)), desc="indexing", leave=False)])
    fraction: dict[int, np.ndarray] = {}  # index -> fraction of its pixels per class id

    def covered(index: int, class_id: int) -> float:
        if index not in fraction:
            label = decode_semantic(source[index])["label"]
            fraction[index] = np.bincount(label.ravel(), minlength=256) / label.size
        return float(fraction[index][class_id])

    picks = {}
    for class_id, images in sorted(images_of.items()):
        order = np.random.default_rng([seed, class_id]).permutation(images)
        areas = []
        for index in order:
            areas.append(covered(int(index), class_id))
            if areas[-1] >= min_area:
                break
        picks[class_id] = int(order[int(np.argmax(areas))])
    return picks


def original_order(examples: Sequence[dict]) -> list[int]:
    """FSS-1000 indices in the original's order (`DatasetFSS.build_img_metadata`): classes sorted by
    name, then each class's file paths sorted as strings (so 1.jpg, 10.jpg, 2.jpg, ...). An example
    without a `file_name` keeps its place in `examples` among its class."""
    def key(i):
        ex = examples[i]
        name = ex.get("file_name")
        return text(ex["class_name"]), "" if name is None else text(name).rsplit("/", 1)[-1], i

    return sorted(range(len(examples)), key=key)


def fss1000(source, shots: int = 1, seed: int = 0) -> list[Episode]:
    """Every image once as the query, in the original's order (`original_order`). An episode whose
    query or a support differs in size from its mask (a few FSS-1000 files do) is replaced, as the
    original's `DatasetFSS.__getitem__` replaces it (`idx + 1`), by the episode of the next image in
    that order, with supports drawn for it. Past the last image the original fails (an IndexError);
    here the search wraps around to the first."""
    examples = [source[i] for i in tqdm(range(len(source)), desc="indexing", leave=False)]
    names = [text(ex["class_name"]) for ex in examples]
    fits = [_size(ex["image"]) == _size(ex["mask"]) for ex in examples]
    classes = sorted(set(names))
    ids = [classes.index(n) for n in names]
    images_of = _index([[c] for c in ids])
    # the search below ends once a query and its supports fit; it cannot when no fitting query has
    # `shots` fitting other images of its class (a class short of images is named by `_supports`)
    if all(len(images_of[c]) > shots for c in images_of) and not any(
            fits[q] and sum(fits[i] for i in images_of[c] if i != q) >= shots for q, c in enumerate(ids)):
        raise ValueError(f"no FSS-1000 image whose mask is its size has {shots} other such image(s) of its class "
                         "to be its support(s)")
    order = original_order(examples)
    rng = np.random.default_rng(seed)
    out = []
    for first in range(len(order)):
        position = first
        while True:
            q = order[position]
            c = ids[q]
            supports = _supports(rng, images_of[c], q, shots, f"FSS-1000 class {classes[c]}")
            if fits[q] and all(fits[i] for i in supports):
                break
            position = (position + 1) % len(order)
        out.append(Episode(c, q, supports))
    return out


def _size(data: bytes) -> tuple[int, int]:
    """(width, height) from an encoded image's header."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.size


def davis2017(source) -> list[int]:
    return list(range(len(source)))


class Item(NamedTuple):
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool, the class's pixels
    void: np.ndarray | None  # (H, W) bool, pixels that are not scored (label 255), or None
    name: str | None  # the class name, when the example records it


def decode_item(kind: str, example: dict, class_id: int) -> Item:
    """One image of an episode at its own resolution: pixels of the class (semantic), the union of
    its instances (LVIS, COCO 2017, synthetic, a user's dataset), or the mask read as grayscale >= 128 (FSS-1000, as
    the original reads it)."""
    if kind == "coco20i":
        data = decode_semantic(example)
        return Item(data["image"], data["label"] == class_id, data["label"] == 255, None)
    if kind in ("lvis92i", "coco2017", "synthetic", "custom"):
        objects = example["objects"]
        names = [text(n) for n, c in zip(objects["category_name"], objects["category_id"]) if int(c) == class_id]
        return Item(decode_image(example["image"]), class_mask(example, class_id), None, names[0] if names else None)
    if kind == "fss1000":
        mask = decode_gray(example["mask"]) >= 128
        name = example["class_name"]
        return Item(decode_image(example["image"]), mask, None, None if name is None else text(name))
    raise ValueError(f"unknown episode kind {kind!r}")


def query_and_supports(kind: str, source, episode: Episode) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(image uint8 (H, W, 3), mask bool (H, W))] for the query, then each support (`decode_item`)."""
    return [decode_item(kind, source[i], episode.class_id)[:2] for i in (episode.query, *episode.supports)]
