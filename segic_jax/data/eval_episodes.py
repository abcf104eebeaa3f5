"""Fixed, seeded evaluation episode lists (BENCHMARKS.md protocols) and their materialisation.

An episode is (class_id, query index, support indices) into a built dataset's split; the same
seed always gives the same list, so runs and hosts agree on what is evaluated.

  coco20i   COCO-20i fold f (0..3) on coco20i_semantic val: classes {f + 4v + 1 : v = 0..19}
            (1-based ids in the 80-class order), 1000 episodes: class uniform over the fold's
            classes present, query uniform among its images, supports other images of it.
  fss1000   every fss1000 test image is a query once (2400); supports other images of its class.
  lvis92i   LVIS-92i fold f (0..9) on lvis_instances val: categories annotated in more than one
            image, sorted by id, fold = categories[f::10]; 2300 episodes chosen as the SEGIC code
            does (class uniform, then a query image of it, then supports), except that a support
            is never the query (the reference's `_get_ref_cid` bug is not reproduced).
  davis2017 every val video once (the first frame is the context).
k-shot: `shots` supports, all different and different from the query.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from tqdm.auto import tqdm

from segic_jax.data.sources import decode_image, decode_instances, decode_semantic


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


def _supports(rng, pool: list[int], query: int, shots: int, what: str) -> tuple[int, ...]:
    others = [i for i in pool if i != query]
    if len(others) < shots:
        raise ValueError(f"{what} has {len(others)} other images, fewer than the {shots} shots asked for")
    return tuple(int(i) for i in rng.choice(others, size=shots, replace=False))


def _class_first(images_of, classes, episodes, shots, seed, what):
    rng = np.random.default_rng(seed)
    usable = [c for c in classes if len(images_of.get(c, [])) > shots]
    if not usable:
        raise ValueError(f"no class of {what} has {shots + 1} images")
    out = []
    for _ in range(episodes):
        c = usable[int(rng.integers(len(usable)))]
        q = images_of[c][int(rng.integers(len(images_of[c])))]
        out.append(Episode(c, int(q), _supports(rng, images_of[c], q, shots, f"class {c} of {what}")))
    return out


def coco20i(source, fold: int, shots: int = 1, episodes: int = 1000, seed: int = 0) -> list[Episode]:
    if fold not in range(4):
        raise ValueError(f"COCO-20i fold must be 0..3, got {fold}")
    classes = [fold + 4 * v + 1 for v in range(20)]
    images_of = _index([source[i]["classes"] for i in tqdm(range(len(source)), desc="indexing", leave=False)])
    return _class_first(images_of, classes, episodes, shots, seed + fold, f"COCO-20i fold {fold}")


def lvis92i(source, fold: int, shots: int = 1, episodes: int = 2300, seed: int = 0) -> list[Episode]:
    if fold not in range(10):
        raise ValueError(f"LVIS-92i fold must be 0..9, got {fold}")
    images_of = _index([source[i]["objects"]["category_id"] for i in tqdm(range(len(source)), desc="indexing", leave=False)])
    categories = sorted(c for c, images in images_of.items() if len(images) > 1)
    return _class_first(images_of, categories[fold::10], episodes, shots, seed + fold, f"LVIS-92i fold {fold}")


def fss1000(source, shots: int = 1, seed: int = 0) -> list[Episode]:
    names = [source[i]["class_name"] for i in range(len(source))]
    classes = sorted(set(names))
    ids = [classes.index(n) for n in names]
    images_of = _index([[c] for c in ids])
    rng = np.random.default_rng(seed)
    return [Episode(c, q, _supports(rng, images_of[c], q, shots, f"FSS-1000 class {classes[c]}")) for q, c in enumerate(ids)]


def davis2017(source) -> list[int]:
    return list(range(len(source)))


def query_and_supports(kind: str, source, episode: Episode) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(image uint8 (H, W, 3), mask bool (H, W))] for the query, then each support, at their own
    resolution: pixels of the class (semantic), the union of its instances (LVIS), or mask > 128
    (FSS-1000)."""
    out = []
    for index in (episode.query, *episode.supports):
        ex = source[index]
        if kind == "coco20i":
            data = decode_semantic(ex)
            out.append((data["image"], data["label"] == episode.class_id))
        elif kind == "lvis92i":
            data = decode_instances(ex)
            out.append((data["image"], data["masks"][data["category_ids"] == episode.class_id].any(0)))
        elif kind == "fss1000":
            mask = decode_image(ex["mask"])[..., 0] > 128
            out.append((decode_image(ex["image"]), mask))
        else:
            raise ValueError(f"unknown episode kind {kind!r}")
    return out
