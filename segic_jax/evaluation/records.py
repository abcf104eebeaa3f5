"""Per-episode evaluation records on disk: what makes an evaluation resumable and shardable.

One folder per evaluation unit (a benchmark, fold and shot count) under the workdir:
    spec.json          what is evaluated (benchmark, dataset, episodes, seed, model, ...); a later
                       run with a different spec is refused rather than mixed in
    episodes.json      the seeded episode list, written once so that reruns and other hosts
                       evaluate exactly the same episodes without indexing the dataset again
    chunk-*.npz        records of a run of episodes, each file written atomically: the episodes
                       it covers and one row per (episode, class) with the pixel counts of the
                       prediction and of the propagated-mask baseline (`metrics.confusion`)
Counts are integers, so summing them in any order (any sharding, any resume point) gives exactly
the same totals, hence the same scores.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile

import numpy as np

from segic_jax import atomic_files


def check_shard(shard_index: int, shard_count: int) -> tuple[int, int]:
    """(shard_index, shard_count), or a ValueError unless 0 <= shard_index < shard_count."""
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in 0..shard_count-1 and shard_count >= 1, got {shard_index} of {shard_count}")
    return shard_index, shard_count

SPEC_FILE = "spec.json"
EPISODES_FILE = "episodes.json"


@dataclasses.dataclass
class Rows:
    """Records of many (episode, class) pairs."""

    episode: np.ndarray  # (R,) int64
    class_id: np.ndarray  # (R,) int64
    name: np.ndarray  # (R,) str, the class name
    model: np.ndarray  # (R, 4) int64 confusion counts of the prediction
    baseline: np.ndarray  # (R, 4) int64 confusion counts of the propagated-mask baseline

    @classmethod
    def empty(cls) -> "Rows":
        z = np.zeros((0,), np.int64)
        return cls(z, z, np.zeros((0,), str), np.zeros((0, 4), np.int64), np.zeros((0, 4), np.int64))

    @classmethod
    def concatenate(cls, parts: list["Rows"]) -> "Rows":
        parts = [cls.empty()] + parts
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)))


def canonical(obj):
    return json.loads(json.dumps(obj))


class UnitStore:
    """The records folder of one evaluation unit."""

    def __init__(self, folder: str):
        self.folder = folder

    def open(self, spec: dict) -> None:
        """Create the folder for `spec`, or check that it already holds records of the same spec."""
        path = os.path.join(self.folder, SPEC_FILE)
        spec = canonical(spec)
        if os.path.isfile(path):
            with open(path) as f:
                old = json.load(f)
            if old != spec:
                diff = ", ".join(f"{k}: {old.get(k)!r} there, {spec.get(k)!r} now"
                                 for k in sorted(set(old) | set(spec)) if old.get(k) != spec.get(k))
                raise ValueError(f"{self.folder} holds records of a different evaluation ({diff}); "
                                 "use another workdir, or delete that folder to start it again")
            return
        atomic_files.write_json(path, spec)

    def episodes(self, make):
        """The stored episode list, or `make()`'s (JSON-serialisable), stored for next time."""
        path = os.path.join(self.folder, EPISODES_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
        value = canonical(make())
        atomic_files.write_json(path, value)
        return value

    def _chunks(self) -> list[str]:
        if not os.path.isdir(self.folder):
            return []
        return sorted(f for f in os.listdir(self.folder) if f.startswith("chunk-") and f.endswith(".npz"))

    def load(self) -> tuple[set[int], Rows]:
        """(episodes done, their rows). An episode recorded twice (two hosts given overlapping
        shards) counts once, from the first file in name order."""
        done: set[int] = set()
        parts = []
        for name in self._chunks():
            path = os.path.join(self.folder, name)
            try:
                with np.load(path) as data:
                    covered = set(int(e) for e in data["done"]) - done
                    keep = np.isin(data["episode"], sorted(covered))
                    parts.append(Rows(*(data[f.name][keep] for f in dataclasses.fields(Rows))))
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
                raise ValueError(f"the records file {path} is damaged ({type(e).__name__}: {e}); delete it and run "
                                 "again to redo its episodes (the other records are kept)") from None
            done |= covered
        return done, Rows.concatenate(parts)

    def write(self, episodes: list[int], rows: Rows, shard: tuple[int, int]) -> None:
        """Record that `episodes` are done, with their rows, in one atomically written file."""
        buf = io.BytesIO()
        np.savez(buf, done=np.asarray(episodes, np.int64), **dataclasses.asdict(rows))
        name = f"chunk-{min(episodes):07d}-{max(episodes):07d}-shard{shard[0]}of{shard[1]}.npz"
        atomic_files.atomic_write_bytes(os.path.join(self.folder, name), buf.getvalue())
