"""Shared behaviour of the model configs: JSON round trip with a clear error on unknown fields."""

from __future__ import annotations

import dataclasses
from typing import Any


class ModelConfig:
    """Mixin for the frozen dataclass configs stored in checkpoint descriptions."""

    NAME = "model"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.NAME} config fields {unknown}; known fields: {sorted(known)}")
        # JSON has no tuples: restore them where the field's default is one
        tuples = {f.name for f in dataclasses.fields(cls) if isinstance(f.default, tuple)}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in values.items()})
