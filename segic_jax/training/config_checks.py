"""Every field of a training config checked before any work, each error naming its field.

`check(config)` runs at the start of `Trainer` (and of `main.py --mode train`, before a model is built):
a run that would do nothing, divide by zero or delete its checkpoints is refused with the field
named, instead of failing at step 1000 or exiting 0 with nothing useful written.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

def _int(low: int | None = None, high: int | None = None) -> Callable[[Any], str | None]:
    def rule(v):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            return f"must be an integer, got {v!r}"
        if low is not None and v < low:
            return f"must be >= {low}, got {v}"
        if high is not None and v > high:
            return f"must be <= {high}, got {v}"
        return None

    return rule


def _float(low: float | None = None, high: float | None = None, low_open: bool = False) -> Callable[[Any], str | None]:
    def rule(v):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            return f"must be a number, got {v!r}"
        if low is not None and (v <= low if low_open else v < low):
            return f"must be {'>' if low_open else '>='} {low}, got {v}"
        if high is not None and v > high:
            return f"must be <= {high}, got {v}"
        return None

    return rule


def _choice(options) -> Callable[[Any], str | None]:
    def rule(v):
        choices = options() if callable(options) else options
        return None if v in choices else f"must be one of {', '.join(sorted(choices))}, got {v!r}"

    return rule


def _bool(v):
    return None if isinstance(v, bool) else f"must be True or False, got {v!r}"


def _image_size(v):
    problem = _int(14)(v)
    return problem or (None if v % 14 == 0 else f"must be a multiple of 14 (DINOv2's patch), got {v}")


def _dtypes():
    from segic_jax.models.encoders import DTYPES

    return DTYPES


def _archs():
    from segic_jax.models.dinov2 import ARCHS

    return ARCHS


def _mixture(v):
    from segic_jax.data.mixture import problem

    return problem(v)


def _scale_range(v):
    ok = (isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
          and 0 < v[0] <= v[1])
    return None if ok else f"must be (low, high) with 0 < low <= high, got {v!r}"


def _few_shot_benchmarks():
    from segic_jax.evaluation.benchmarks import BENCHMARKS

    return [b for b in BENCHMARKS if b != "ade20k"]


PROBABILITY = _float(0.0, 1.0)
RULES: dict[str, Callable[[Any], str | None]] = {
    "seed": _int(),
    "image_size": _image_size,
    "dtype": _choice(_dtypes),
    "dinov2.arch": _choice(_archs),
    "dinov2.depth": _int(0),
    "clip.width": _int(1),
    "clip.depth": _int(1),
    "data.max_instances": _int(1),
    "data.workers": _int(0),
    "data.prefetch": _int(1),
    "data.threads": _int(1),
    "train.global_batch_size": _int(1),
    "train.samples_per_epoch": _int(1),
    "train.epochs": _int(1),
    "train.num_steps": _int(0),
    "train.learning_rate": _float(0.0, low_open=True),
    "train.weight_decay": _float(0.0),
    "train.lr_drop_epoch": _int(0),
    "train.lr_drop_factor": _float(0.0, 1.0, low_open=True),
    "train.box_prob": PROBABILITY,
    "train.cross_prob": PROBABILITY,
    "train.text_prob": PROBABILITY,
    "train.num_points": _int(1),
    "train.oversample": _float(1.0),
    "train.importance": PROBABILITY,
    "train.remat_rows": _int(0),
    "train.loss_group": _int(0),
    "train.head_init": _choice(("pytorch", "flax")),
    "data.square_reference": _bool,
    "data.mixture": _mixture,
    "data.semantic_scale_range": _scale_range,
    "mesh.fsdp": _int(1),
    "checkpoint.every_steps": _int(0),
    "checkpoint.keep": _int(1),
    "checkpoint.resume_without_config": _bool,
    "log.every_steps": _int(1),
    "eval.benchmark": _choice(_few_shot_benchmarks),
    "eval.episodes": _int(1),
    "eval.shots": _int(1),
    "eval.every_steps": _int(0),
}


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def check(config) -> None:
    """Raise ValueError naming the first field of `config` (configs/segic.py) that is out of range."""
    for field, rule in RULES.items():
        try:
            value = _get(config, field)
        except (KeyError, AttributeError):
            raise ValueError(f"config.{field} is missing; start from configs/segic.py") from None
        problem = rule(value)
        if problem:
            raise ValueError(f"config.{field} {problem}")
    c = config.train
    if c.loss_group and c.global_batch_size % c.loss_group:
        raise ValueError(f"config.train.global_batch_size {c.global_batch_size} is not a multiple of "
                         f"config.train.loss_group {c.loss_group} (episodes whose masks normalise the loss together)")
    if c.samples_per_epoch < c.global_batch_size:
        raise ValueError(f"config.train.samples_per_epoch {c.samples_per_epoch} is less than one global batch "
                         f"(config.train.global_batch_size {c.global_batch_size})")
