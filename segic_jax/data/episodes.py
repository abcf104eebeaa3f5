"""In-context training episodes as grain pipelines: deterministic by seed, sharded per process,
with fixed shapes and a checkpointable iterator.

Instance episodes (SEGIC_SPEC.md 4.4): two independently augmented views of one image (random
resized crop, colour jitter, horizontal flip); instances visible in both views are matched by
index; a random number of them (0..max_instances, falling back to the first annotation) is kept
and padded to `max_instances` with a validity mask.

Batch fields: target_image / reference_image (B, S, S, 3) float32 in [0, 255]; target_masks /
reference_masks (B, K, S, S) bool; valid (B, K) bool; target_hw / reference_hw (B, 2) the valid
extent (the full frame for instance views); is_instance (B,) bool; image_id (B,) the source example.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from segic_jax.data import augment
from segic_jax.data.sources import decode_instances


@dataclasses.dataclass(frozen=True)
class InstanceAugment:
    scale: tuple[float, float] = (0.3, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter_p: float = 0.2
    flip_p: float = 0.1


def _view(rng, image, masks, size, aug: InstanceAugment):
    box = augment.random_resized_crop_box(rng, *image.shape[:2], aug.scale, aug.ratio)
    image, masks = augment.resized_crop(image.astype(np.float32), masks, box, size)
    if rng.random() < aug.jitter_p:
        image = augment.color_jitter(rng, image)
    if rng.random() < aug.flip_p:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(masks)


def instance_episode(example: dict, rng: np.random.Generator, size: int, max_instances: int,
                     aug: InstanceAugment = InstanceAugment()) -> dict:
    """One decoded TFDS instance example -> a fixed-shape (target, reference) episode."""
    data = decode_instances(example)
    target, target_masks = _view(rng, data["image"], data["masks"], size, aug)
    reference, reference_masks = _view(rng, data["image"], data["masks"], size, aug)
    visible = np.flatnonzero(target_masks.any((1, 2)) & reference_masks.any((1, 2)))
    m = int(rng.integers(0, max_instances + 1))
    chosen = np.sort(rng.choice(visible, size=min(m, len(visible)), replace=False)) if len(visible) else visible
    if not len(chosen):
        chosen = np.array([0])  # the reference falls back to the first annotation, even if empty
    k = len(chosen)
    pad = lambda masks: np.concatenate([masks[chosen], np.zeros((max_instances - k, size, size), bool)])
    full = np.array([size, size], np.int32)
    return {
        "target_image": target,
        "reference_image": reference,
        "target_masks": pad(target_masks),
        "reference_masks": pad(reference_masks),
        "valid": np.arange(max_instances) < k,
        "target_hw": full,
        "reference_hw": full.copy(),
        "is_instance": np.bool_(True),
        "image_id": np.int64(example["image_id"]),
    }


def instance_episodes(
    source,
    *,
    size: int,
    max_instances: int,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
    aug: InstanceAugment = InstanceAugment(),
) -> grain.MapDataset:
    """Batches of instance episodes from a random-access source (e.g. `sources.data_source`).

    Each process reads its own shard (`shard_index` of `shard_count`, e.g. jax.process_index()
    and jax.process_count()); the order is reshuffled every epoch; every random draw derives
    from `seed` and the example's position, so the stream does not depend on worker counts.
    """
    if len(source) < shard_count:
        raise ValueError(f"{len(source)} examples cannot be split into {shard_count} shards")
    ds = grain.MapDataset.source(source).slice(slice(shard_index, None, shard_count))
    ds = ds.repeat(num_epochs).seed(seed).shuffle()
    ds = ds.random_map(lambda ex, rng: instance_episode(ex, rng, size, max_instances, aug))
    return ds.batch(batch_size, drop_remainder=True)


def iterator(dataset: grain.MapDataset, workers: int = 0):
    """A checkpointable iterator (`get_state` / `set_state`), with `workers` processes if > 0."""
    it_ds = dataset.to_iter_dataset()
    if workers > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return iter(it_ds)
