"""In-context training episodes as grain pipelines: deterministic by seed, sharded per process,
with fixed shapes and a checkpointable iterator.

As in the reference's training mixture (docs/original.md 4.1), every episode picks a dataset by
weight and then a random item of it; the stream is `samples_per_epoch` long per epoch (which
datasets, as which episodes: `data.mixture`). Episode i
draws everything from a generator seeded by (seed, i), and row r of global batch b is episode
b * batch_size + r whichever process reads it: in a multi-process job each process produces the
rows its devices hold, so the global batch, row for row, is the single-process one, whatever the
number of processes or workers.

Instance episodes (4.4): two independently augmented views of one image (random resized crop,
colour jitter, horizontal flip); instances visible in both views are matched by index; a random
number of them (uniform in 0..max_instances, falling back to the first annotation when none) is
kept; the original draws randint(0, 19), i.e. max_instances 19.
Semantic episodes (4.3): a target and a reference image containing the same class (sampled
class-first as for COCO, or image-first as for ADE20K), each flipped (p 0.5) and scale-jittered
(0.1-2.0, crop and pad) independently; one mask, the class name as text. `InstanceClassSampler`
makes the same episodes from an instance dataset, a class's mask being the union of its
instances (kind "class" in a mixture).

Episode fields (a batch adds a leading B): target_image / reference_image (S, S, 3) float32 in
[0, 255]; target_masks / reference_masks (K, S, S) bool; valid (K,) bool (a prefix);
target_hw / reference_hw (2,) the valid extent before padding; is_instance bool;
class_name str ("" for instances); image_id int64 (the target's source example).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import grain
import numpy as np
from tqdm.auto import tqdm

from segic_jax.data import augment
from segic_jax.data.sources import class_mask, decode_image, decode_instances, decode_semantic, text
from segic_jax.ops.resize import resize


@dataclasses.dataclass(frozen=True)
class InstanceAugment:
    scale: tuple[float, float] = (0.3, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter_p: float = 0.2
    flip_p: float = 0.1


@dataclasses.dataclass(frozen=True)
class SemanticAugment:
    flip_p: float = 0.5
    scale_range: tuple[float, float] = (0.1, 2.0)
    # The original resizes the reference view to an s x s square, ignoring its aspect ratio
    # (docs/original.md 4.2): config data.square_reference, on in the paper recipe.
    square_reference: bool = False


class Sampler(Protocol):
    def sample(self, rng: np.random.Generator) -> dict: ...


def _pad(masks: np.ndarray, k: int, size: int) -> np.ndarray:
    return np.concatenate([masks, np.zeros((k - len(masks), size, size), bool)])


class InstanceSampler:
    """Instance episodes from a decoded-on-read instance source (COCO, LVIS, synthetic)."""

    prompt_names: list[str] = []  # instance episodes always use the instance prompt

    def __init__(self, source, size: int, max_instances: int, aug: InstanceAugment = InstanceAugment()):
        if len(source) == 0:
            raise ValueError("the instance source is empty")
        self.source, self.size, self.k, self.aug = source, size, max_instances, aug

    def _view(self, rng, image, masks):
        aug = self.aug
        box = augment.random_resized_crop_box(rng, *image.shape[:2], aug.scale, aug.ratio)
        image, masks = augment.resized_crop(image.astype(np.float32), masks, box, self.size)
        if rng.random() < aug.jitter_p:
            image = augment.color_jitter(rng, image)
        if rng.random() < aug.flip_p:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(masks)

    def episode(self, example: dict, rng: np.random.Generator) -> dict:
        data = decode_instances(example)
        target, target_masks = self._view(rng, data["image"], data["masks"])
        reference, reference_masks = self._view(rng, data["image"], data["masks"])
        visible = np.flatnonzero(target_masks.any((1, 2)) & reference_masks.any((1, 2)))
        m = int(rng.integers(0, self.k + 1))
        chosen = np.sort(rng.choice(visible, size=min(m, len(visible)), replace=False)) if len(visible) else visible
        if not len(chosen):
            chosen = np.array([0])  # the reference falls back to the first annotation, even if empty
        full = np.array([self.size, self.size], np.int32)
        return {
            "target_image": target,
            "reference_image": reference,
            "target_masks": _pad(target_masks[chosen], self.k, self.size),
            "reference_masks": _pad(reference_masks[chosen], self.k, self.size),
            "valid": np.arange(self.k) < len(chosen),
            "target_hw": full,
            "reference_hw": full.copy(),
            "is_instance": np.bool_(True),
            "class_name": "",
            "image_id": np.int64(example["image_id"]),
        }

    def sample(self, rng: np.random.Generator) -> dict:
        index = int(rng.integers(len(self.source)))
        return self.episode(self.source[index], rng)


def large_scale_jitter(rng, image, mask, size: int, scale_range, square: bool = False):
    """Resize so the long side is round(r * size), r ~ U[scale_range) (or to an s x s square),
    bilinearly for image and 0-255 mask, crop to at most size x size at a random offset, pad
    bottom/right. -> image (S, S, 3), mask (S, S) float 0-255, valid (h, w)."""
    s = int(round(rng.uniform(*scale_range) * size))
    h, w = image.shape[:2]
    if square:
        nh = nw = s
    else:
        scale = min(s / h, s / w)
        nh, nw = int(round(h * scale)), int(round(w * scale))
    nh, nw = max(nh, 1), max(nw, 1)
    image = resize(np.ascontiguousarray(image, np.float32), size=(nh, nw), axes=(0, 1))
    mask = resize(np.ascontiguousarray(mask, np.float32), size=(nh, nw), axes=(0, 1))
    ch, cw = min(size, nh), min(size, nw)
    top, left = int(rng.integers(0, nh - ch + 1)), int(rng.integers(0, nw - cw + 1))
    out_image = np.zeros((size, size, 3), np.float32)
    out_mask = np.zeros((size, size), np.float32)
    out_image[:ch, :cw] = image[top : top + ch, left : left + cw]
    out_mask[:ch, :cw] = mask[top : top + ch, left : left + cw]
    return out_image, out_mask, np.array([ch, cw], np.int32)


class SemanticSampler:
    """Semantic episodes from a semantic source (ADE20K, COCO-20i).

    rule "class": class uniform over classes, then two of its images (COCO-semantic);
    rule "image": image uniform, class uniform among its classes, then another image with it
    (ADE20K). A reference must differ from the target unless the class occurs in one image only.
    An image counts for the classes of its `pool_classes` (COCO: HSNet's training lists, the union
    of their four folds, when the dataset was built with them).
    """

    def __init__(self, source, class_names: Sequence[str], size: int, max_instances: int, rule: str,
                 aug: SemanticAugment = SemanticAugment(), classes: Sequence[int] | None = None):
        if rule not in ("class", "image"):
            raise ValueError(f"rule must be 'class' or 'image', got {rule!r}")
        self.source, self.names, self.size, self.k, self.rule, self.aug = source, list(class_names), size, max_instances, rule, aug
        wanted = None if classes is None else set(classes)
        self.images_of: dict[int, list[int]] = {}
        self.classes_of: list[list[int]] = []
        for i in tqdm(range(len(source)), desc="indexing classes", leave=False):
            present = [c for c in self._classes(source[i]) if wanted is None or c in wanted]
            self.classes_of.append(present)
            for c in present:
                self.images_of.setdefault(c, []).append(i)
        self.class_ids = sorted(self.images_of)
        self.with_classes = [i for i, cs in enumerate(self.classes_of) if cs]
        if not self.class_ids:
            raise ValueError("no image of the semantic source contains a usable class")

    def _classes(self, example) -> list[int]:
        return [int(c) for c in example["pool_classes"]]  # HSNet's lists for COCO when built with them

    def _image_and_mask(self, example, cls) -> tuple[np.ndarray, np.ndarray]:
        data = decode_semantic(example)
        return data["image"], data["label"] == cls

    def name(self, cls: int) -> str:
        return self.names[cls - 1]

    @property
    def prompt_names(self) -> list[str]:
        """Every class name an episode can carry (for the text-feature table)."""
        return [self.name(c) for c in self.class_ids]

    def _pick(self, rng):
        if self.rule == "class":
            cls = self.class_ids[int(rng.integers(len(self.class_ids)))]
            target = self.images_of[cls][int(rng.integers(len(self.images_of[cls])))]
        else:
            target = self.with_classes[int(rng.integers(len(self.with_classes)))]
            cls = self.classes_of[target][int(rng.integers(len(self.classes_of[target])))]
        pool = self.images_of[cls]
        reference = target
        if len(pool) > 1:
            while reference == target:
                reference = pool[int(rng.integers(len(pool)))]
        return target, reference, cls

    def _view(self, rng, example, cls, square=False):
        image, mask = self._image_and_mask(example, cls)
        image, mask = image.astype(np.float32), mask.astype(np.float32) * 255
        if rng.random() < self.aug.flip_p:
            image, mask = image[:, ::-1], mask[:, ::-1]
        image, mask, hw = large_scale_jitter(rng, image, mask, self.size, self.aug.scale_range, square)
        return image, mask > 127.5, hw

    def sample(self, rng: np.random.Generator) -> dict:
        t, r, cls = self._pick(rng)
        target, target_mask, target_hw = self._view(rng, self.source[t], cls)
        reference, reference_mask, reference_hw = self._view(rng, self.source[r], cls, self.aug.square_reference)
        return {
            "target_image": target,
            "reference_image": reference,
            "target_masks": _pad(target_mask[None], self.k, self.size),
            "reference_masks": _pad(reference_mask[None], self.k, self.size),
            "valid": np.arange(self.k) < 1,
            "target_hw": target_hw,
            "reference_hw": reference_hw,
            "is_instance": np.bool_(False),
            "class_name": self.name(cls),
            "image_id": np.int64(t),
        }


class InstanceClassSampler(SemanticSampler):
    """Semantic episodes from an instance source (the synthetic set, COCO, LVIS): the mask of a
    class is the union of its instances, and its name is the annotations' category name."""

    def __init__(self, source, size: int, max_instances: int, rule: str = "class",
                 aug: SemanticAugment = SemanticAugment(), classes: Sequence[int] | None = None):
        self._names: dict[int, str] = {}
        super().__init__(source, [], size, max_instances, rule, aug, classes)

    def _classes(self, example) -> list[int]:
        objects = example["objects"]
        ids = [int(c) for c in objects["category_id"]]
        for c, n in zip(ids, objects["category_name"]):
            self._names.setdefault(c, text(n))
        return sorted(set(ids))

    def _image_and_mask(self, example, cls) -> tuple[np.ndarray, np.ndarray]:
        return decode_image(example["image"]), class_mask(example, cls)

    def name(self, cls: int) -> str:
        return self._names[cls]


def episode_stream(
    samplers: Sequence[Sampler],
    *,
    batch_size: int | None,
    seed: int,
    samples_per_epoch: int,
    weights: Sequence[float] | None = None,
    rows: Sequence[int] | None = None,
    num_epochs: int | None = None,
) -> grain.MapDataset:
    """Episodes from `samplers` chosen by `weights` (uniform by default), `samples_per_epoch`
    per epoch, batched (drop remainder) unless batch_size is None.

    rows: this process's rows of each batch of `batch_size` (a multi-process job, where each process
    holds part of the global batch); its batches are those rows, in this order. None: every row."""
    weights = np.full(len(samplers), 1.0 / len(samplers)) if weights is None else np.asarray(weights, np.float64)
    if len(weights) != len(samplers) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"need one non-negative weight per sampler, got {list(weights)} for {len(samplers)}")
    p = weights / weights.sum()

    def make(_, rng):
        return samplers[int(rng.choice(len(samplers), p=p))].sample(rng)

    # seeded before anything picks elements, so that episode i's generator depends on i alone
    ds = grain.MapDataset.range(samples_per_epoch).repeat(num_epochs).seed(seed).random_map(make)
    if batch_size is None:
        return ds
    rows = np.arange(batch_size) if rows is None else np.asarray(rows, np.int64)
    if not len(rows) or rows.min() < 0 or rows.max() >= batch_size or len(set(rows.tolist())) != len(rows):
        raise ValueError(f"rows must be distinct positions in a batch of {batch_size}, got {rows.tolist()}")
    if not np.array_equal(rows, np.arange(batch_size)):
        whole, n = ds, len(rows)
        ds = grain.MapDataset.range(len(whole) // batch_size * n).map(
            lambda j: whole[j // n * batch_size + int(rows[j % n])]
        )
    return ds.batch(len(rows), drop_remainder=True)


def iterator(dataset: grain.MapDataset, workers: int = 0, prefetch: int = 4, threads: int = 2):
    """A checkpointable iterator (`get_state` / `set_state`), with `workers` processes if > 0.

    Each process reads ahead `prefetch` elements with `threads` threads (grain's default, 500
    elements with 16 threads, holds gigabytes of 896-px episodes and starves the training step
    of CPU)."""
    it_ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))
    if workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside an absl app, use defaults
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return iter(it_ds)
