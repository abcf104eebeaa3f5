"""The training mixture: which built datasets training episodes come from, as which kind of
episode, and how often; and the complete training batches drawn from it.

A mixture is a tuple of entries (dataset, split, episodes, weight), as configs/segic.py holds it:

    ("coco20i_semantic", "train", "semantic_by_class", 1.0)

episodes is one of
    semantic_by_class   a semantic dataset, class first, then two of its images (COCO-20i)
    semantic_by_image   a semantic dataset, image first, then a class in it (ADE20K)
    instance            two augmented views of one image, its instances matched (COCO, LVIS)
    class               semantic episodes of an instance dataset, a class's mask the union of its
                        instances, class first
and weight the dataset's relative sampling weight (docs/original.md 4.1: the paper's is uniform).
"""

from __future__ import annotations

import numbers
from typing import NamedTuple, Sequence

from segic_jax.data.prompts import PromptTable, prompt_draws

EPISODES = ("semantic_by_class", "semantic_by_image", "instance", "class")

# The reference's training mixture (docs/original.md 4.1)
PAPER = (
    ("coco20i_semantic", "train", "semantic_by_class", 1.0),
    ("ade20k_semantic", "train", "semantic_by_image", 1.0),
    ("coco_instances", "train", "instance", 1.0),
    ("lvis_instances", "train", "instance", 1.0),
)


class Part(NamedTuple):
    dataset: str  # a built dataset, optionally with its config: synthetic_incontext/tiny
    split: str
    episodes: str  # one of EPISODES
    weight: float = 1.0


def problem(mixture) -> str | None:
    """What is wrong with a config's mixture value (None when nothing is), for `config.data.mixture ...`."""
    if not isinstance(mixture, (tuple, list)) or not mixture:
        return f"must be a non-empty tuple of (dataset, split, episodes, weight) entries, got {mixture!r}"
    for entry in mixture:
        if (not isinstance(entry, (tuple, list)) or len(entry) != 4 or not all(isinstance(x, str) for x in entry[:3])
                or entry[2] not in EPISODES or isinstance(entry[3], bool) or not isinstance(entry[3], numbers.Real)
                or entry[3] < 0):
            return (f"entry {entry!r}: expected (dataset, split, episodes, weight) with episodes one of "
                    f"{', '.join(EPISODES)} and a weight >= 0")
    if not sum(entry[3] for entry in mixture) > 0:
        return f"has no positive weight: {mixture!r}"
    return None


def parts(mixture) -> tuple[Part, ...]:
    """The config's mixture as `Part`s; a ValueError names the entry at fault."""
    wrong = problem(mixture)
    if wrong:
        raise ValueError(f"config.data.mixture {wrong}")
    return tuple(Part(str(d), str(s), e, float(w)) for d, s, e, w in mixture)


def samplers(data_dir: str, size: int, max_instances: int, mixture: Sequence[Part], *, semantic_aug=None,
             instance_aug=None) -> list:
    """One episode sampler per part, from datasets built in `data_dir` (their order is the mixture's)."""
    from segic_jax.data import episodes
    from segic_jax.data.sources import class_names, data_source

    semantic_aug = semantic_aug or episodes.SemanticAugment()
    instance_aug = instance_aug or episodes.InstanceAugment()
    out = []
    for part in mixture:
        source = data_source(part.dataset, part.split, data_dir)
        if part.episodes == "instance":
            out.append(episodes.InstanceSampler(source, size, max_instances, instance_aug))
        elif part.episodes == "class":
            out.append(episodes.InstanceClassSampler(source, size, max_instances, "class", semantic_aug))
        else:
            rule = part.episodes.rpartition("_")[2]  # semantic_by_class / semantic_by_image
            out.append(episodes.SemanticSampler(source, class_names(part.dataset), size, max_instances, rule, semantic_aug))
    return out


class Batch(NamedTuple):
    """One step's episodes (this process's rows of the global batch)."""

    arrays: dict  # what the step reads, device-ready (training/step.py), prompts as table indices
    info: dict  # host-side: class_name, image_id, is_instance per row


# the fields of an episode that stay on the host (strings, source ids, the episode kind)
HOST_FIELDS = ("class_name", "image_id", "is_instance")


class _WithPrompts:
    """Batch b of the stream -> a `Batch` with each row's target and reference prompt drawn."""

    def __init__(self, table, seed: int, rows: Sequence[int], text_prob: float):
        self.table, self.seed, self.rows, self.text_prob = table, seed, list(rows), text_prob

    def __call__(self, batch_index: int, episodes: dict) -> Batch:
        draws = prompt_draws(self.seed, batch_index, self.rows)
        info = {k: episodes[k] for k in HOST_FIELDS}
        arrays = {k: v for k, v in episodes.items() if k not in HOST_FIELDS}
        # the reference of a semantic episode carries the same class name, its prompt drawn independently
        for field, column in (("target_prompt", 0), ("reference_prompt", 1)):
            arrays[field] = self.table.choose(draws[:, column], info["is_instance"], info["class_name"], self.text_prob)
        return Batch(arrays, info)


class TrainingData(NamedTuple):
    batches: object  # grain.MapDataset of `Batch`es; batch s is step s's
    prompts: list  # the prompt table: the texts that target_prompt / reference_prompt index


def training_data(mixture: Sequence[Part], data_dir: str, size: int, max_instances: int, *, batch_size: int, seed: int,
                  samples_per_epoch: int, text_prob: float, rows: Sequence[int] | None = None,
                  semantic_aug=None, instance_aug=None) -> TrainingData:
    """Complete training batches: episodes of the mixture chosen by weight (`episodes.episode_stream`),
    `rows` of each global batch of `batch_size` (None: all), with their prompts drawn."""
    from segic_jax.data import episodes

    sources = samplers(data_dir, size, max_instances, mixture, semantic_aug=semantic_aug, instance_aug=instance_aug)
    table = PromptTable([n for s in sources for n in s.prompt_names])
    rows = list(range(batch_size)) if rows is None else [int(r) for r in rows]
    stream = episodes.episode_stream(sources, batch_size=batch_size, seed=seed, samples_per_epoch=samples_per_epoch,
                                     weights=[p.weight for p in mixture], rows=rows)
    return TrainingData(stream.map_with_index(_WithPrompts(table, seed, rows, text_prob)), table.prompts)
