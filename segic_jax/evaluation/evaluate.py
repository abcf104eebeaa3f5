"""Benchmark evaluation: few-shot segmentation (COCO-20i, FSS-1000, LVIS-92i, the synthetic
held-out classes), in-context semantic segmentation (ADE20K-150), and video object segmentation
(DAVIS 2017, YouTube-VOS 2018: delegated to `segic_jax.evaluation.vos`). The benchmarks and their
protocols are `segic_jax.evaluation.benchmarks`; this module opens their episodes, schedules,
scores and records them.

    python main.py --mode eval --config configs/eval.py:paper \
        --config.checkpoint=ckpt/segic --config.data_dir=data --workdir out/eval

calls `run`, which writes results.json (every number, the config, the protocols), results.md and
one per-class IoU plot per benchmark to the workdir; configs/eval.py lists the fields. In process,
e.g. the training loop's periodic held-out evaluation with the predictor it has in memory:

    scores = evaluate(predictor, "synthetic", data_dir, episodes=200)   # scores["miou"], ...

Scoring (docs/original.md 5.1): predictions are compared with the ground truth at the original
resolution, foreground = logit > 0; per class, intersection and union are summed over all
episodes; mIoU = mean over the classes seen of sum(I) / max(sum(U), 1), x100; FB-IoU as HSNet
(foreground and background IoU over all episodes, averaged). Void pixels (label 255) are not
scored. Every few-shot number comes with the propagated-mask baseline
(`benchmarks.baseline_protocol`).

Resuming and sharding: with a workdir, each episode's counts are recorded (`records.py`); a rerun
skips the episodes already done, `shard_index`/`shard_count` take episodes i with
i % shard_count == shard_index, and the numbers are computed from the records of all shards once
every episode is done, so they do not depend on how the work was split or interrupted. A run
whose shards are not all done reports its progress and writes no results; a last run with any
shard settings (typically shard_count=1) then finds everything done and writes them. In a
multi-process job (`segic_jax.distributed`) with a workdir, the processes are the shards: process p
of P takes episodes i with i % P == p, and once all are done every process merges the records
(process 0 alone writes the results); without a workdir each process evaluates every episode.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from segic_jax import distributed
from segic_jax.data import eval_episodes
from segic_jax.data.sources import class_names, data_source, decode_semantic, episode_pools
from segic_jax.evaluation import records, report
from segic_jax.evaluation.benchmarks import (BENCHMARKS, KNOWN, QUERY_AS_SUPPORT, VIDEO, baseline_protocol,
                                             check_benchmark, folds, protocol, video_protocol)
from segic_jax.evaluation.metrics import IoUMeter, confusion
from segic_jax.inference.predictor import Context, Episode, Predictor
from segic_jax.models import bundle
from segic_jax.models.encoders import compute_dtype


@dataclasses.dataclass
class Options:
    """Settings shared by every unit of one evaluation."""

    episodes: int = 0  # 0: the protocol's count
    seed: int = 0
    baseline_threshold: float = 0.5
    reference_min_area: float = 0.05  # ADE20K reference rule
    chunk_size: int = 50  # episodes per record file
    model: Any = ""  # identifies the weights in the records' spec (a checkpoint path, a step)
    progress: bool = True
    query_as_support: bool = True  # lvis92i / coco2017: the original's reference choice (`protocol`)


@dataclasses.dataclass
class Unit:
    """One benchmark at one shot count and fold: one episode list, one records folder."""

    benchmark: str
    shots: int
    fold: int | None
    dataset: str
    source: Any  # the evaluated split (random access)
    train: Any = None  # ADE20K: where the references come from
    class_names: list[str] | None = None  # semantic datasets: class i + 1's name
    pools: str | None = None  # coco20i: what its episode pools were built from (sources.episode_pools)
    episodes: Any = None  # the episode list (`_make_episodes`), set by `prepare`
    store: records.UnitStore | None = None  # its records, when there is a workdir

    @property
    def key(self) -> str:
        fold = "" if self.fold is None else f"_fold{self.fold}"
        return f"{self.benchmark}/{self.shots}shot{fold}"

    def spec(self, options: Options) -> dict:
        b = BENCHMARKS[self.benchmark]
        spec = dict(benchmark=self.benchmark, dataset=self.dataset, split=b.split, fold=self.fold, shots=self.shots,
                    episodes=options.episodes, seed=options.seed, baseline_threshold=options.baseline_threshold,
                    model=options.model, format=2)
        if self.benchmark == "ade20k":
            spec["reference_min_area"] = options.reference_min_area
        if self.benchmark in QUERY_AS_SUPPORT:
            spec["query_as_support"] = options.query_as_support
        if self.pools is not None:
            spec["pools"] = self.pools
        return spec


def open_units(benchmark: str, data_dir: str, shots: int, asked_folds, dataset: str | None) -> list[Unit]:
    """The units of a benchmark (one per fold of `asked_folds`, `benchmarks.folds`), with their data
    opened (a missing dataset fails here, before any output is written)."""
    check_benchmark(benchmark)
    if shots < 1:
        raise ValueError(f"shots must be at least 1, got {shots}")
    b = BENCHMARKS[benchmark]
    if benchmark == "ade20k" and shots != 1:
        raise ValueError("ade20k uses one reference per class: shots must be 1")
    if benchmark == "custom" and not dataset:
        raise ValueError("the custom benchmark evaluates a dataset you built (python -m segic_jax.data.build "
                         "user_masks/NAME ...): set --config.custom_dataset=user_masks/NAME (or config.eval.dataset "
                         "in training)")
    dataset = dataset or b.dataset
    source = data_source(dataset, b.split, data_dir)
    train = data_source(dataset, "train", data_dir) if benchmark == "ade20k" else None
    names = class_names(dataset) if benchmark in ("coco20i", "ade20k") else None
    pools = episode_pools(dataset, data_dir) if benchmark == "coco20i" else None
    return [Unit(benchmark, shots, f, dataset, source, train, names, pools) for f in folds(benchmark, asked_folds)]


def _make_episodes(unit: Unit, options: Options):
    """The unit's seeded episode list, as JSON-able data."""
    src, n, seed, shots = unit.source, options.episodes, options.seed, unit.shots
    default = BENCHMARKS[unit.benchmark].episodes
    if unit.benchmark == "coco20i":
        episodes = eval_episodes.coco20i(src, unit.fold, shots, n or default, seed)
    elif unit.benchmark == "lvis92i":
        episodes = eval_episodes.lvis92i(src, unit.fold, shots, n or default, seed, options.query_as_support)
    elif unit.benchmark == "coco2017":
        every = eval_episodes.coco2017(src, shots, seed, options.query_as_support)
        episodes = [every[i] for i in eval_episodes.subset(len(every), n, seed)]
    elif unit.benchmark == "synthetic":
        episodes = eval_episodes.synthetic(src, shots, n or default, seed)
    elif unit.benchmark == "custom":
        episodes = eval_episodes.synthetic(src, shots, n or default, seed, f"the test split of {unit.dataset}")
    elif unit.benchmark == "fss1000":
        every = eval_episodes.fss1000(src, shots, seed)
        episodes = [every[i] for i in eval_episodes.subset(len(every), n, seed)]
    else:  # ade20k
        references = eval_episodes.ade20k_references(unit.train, seed, options.reference_min_area)
        return {"images": eval_episodes.subset(len(src), n, seed), "references": references}
    return [[e.class_id, e.query, list(e.supports)] for e in episodes]


def _items(unit: Unit) -> list:
    """What the unit's episodes are: [class, query, supports] triples, or ADE20K val images."""
    return unit.episodes["images"] if unit.benchmark == "ade20k" else unit.episodes


class _Scorer:
    """Evaluates one unit's episodes with a predictor: rows of per-class confusion counts."""

    def __init__(self, unit: Unit, predictor, threshold: float):
        self.unit, self.predictor, self.threshold = unit, predictor, threshold
        self.items = _items(unit)
        if unit.benchmark == "ade20k":
            self.references = {int(c): i for c, i in unit.episodes["references"].items()}
            self._contexts: dict[int, Any] = {}

    def __call__(self, index: int) -> list[tuple[int, str, np.ndarray, np.ndarray]]:
        if self.unit.benchmark == "ade20k":
            return self._semantic(self.items[index])
        return self._few_shot(*self.items[index])

    def _row(self, pred, k, class_id, name, gt, void):
        return (class_id, name, confusion(pred.masks[k], gt, void), confusion(pred.similarity[k] > self.threshold, gt, void))

    def score(self, indices: Sequence[int]) -> Iterator[list]:
        """`self(i)` for each index, in order. One-shot episodes go through the predictor in batches
        (`Predictor.segment_episodes`: references and queries encoded batch_size at a time, the next
        batch dispatched before the last is copied back), with the same result as one at a time."""
        if self.unit.benchmark == "ade20k" or self.unit.shots != 1:
            yield from (self(i) for i in indices)
            return
        pending = collections.deque()

        def episodes():
            for i in indices:
                class_id, name, q, (r,) = self._decode(*self.items[i])
                pending.append((class_id, name, q))
                yield Episode(r.image, r.mask, q.image, class_names=[name])

        for pred in self.predictor.segment_episodes(episodes()):
            class_id, name, q = pending.popleft()
            yield [self._row(pred, 0, class_id, name, q.mask, q.void)]

    def _decode(self, class_id: int, query: int, supports: list[int]):
        kind, src = self.unit.benchmark, self.unit.source
        q = eval_episodes.decode_item(kind, src[query], class_id)
        refs = [eval_episodes.decode_item(kind, src[i], class_id) for i in supports]
        return class_id, q.name or self.unit.class_names[class_id - 1], q, refs

    def _few_shot(self, class_id: int, query: int, supports: list[int]):
        class_id, name, q, refs = self._decode(class_id, query, supports)
        context = self.predictor.encode_context([r.image for r in refs], [r.mask for r in refs], class_names=[name])
        (pred,) = self.predictor.segment([q.image], context)
        return [self._row(pred, 0, class_id, name, q.mask, q.void)]

    def _reference(self, class_id: int):
        """The context of one class, encoded once per evaluation."""
        if class_id not in self._contexts:
            if class_id not in self.references:
                raise ValueError(f"ADE20K class {class_id} ({self.unit.class_names[class_id - 1]}) is in a val image "
                                 "but in no training image, so it has no reference")
            data = decode_semantic(self.unit.train[self.references[class_id]])
            # the reference's semantic path resizes the soft mask (docs/original.md 2.5)
            self._contexts[class_id] = self.predictor.encode_context(
                [data["image"]], [data["label"] == class_id], class_names=[self.unit.class_names[class_id - 1]], binarize=False
            )
        return self._contexts[class_id]

    def _semantic(self, index: int):
        data = decode_semantic(self.unit.source[index])
        label, classes = data["label"], [int(c) for c in data["classes"]]
        if not classes:
            return []
        context = Context.concatenate([self._reference(c) for c in classes])
        (pred,) = self.predictor.segment([data["image"]], context)
        void = label == 255
        return [self._row(pred, k, c, self.unit.class_names[c - 1], label == c, void) for k, c in enumerate(classes)]


def _as_rows(episodes: list[int], scored: list[list]) -> records.Rows:
    flat = [(e, *row) for e, rows in zip(episodes, scored) for row in rows]
    if not flat:
        return records.Rows.empty()
    return records.Rows(
        episode=np.array([r[0] for r in flat], np.int64),
        class_id=np.array([r[1] for r in flat], np.int64),
        name=np.array([r[2] for r in flat], str),
        model=np.stack([r[3] for r in flat]).astype(np.int64),
        baseline=np.stack([r[4] for r in flat]).astype(np.int64),
    )


@dataclasses.dataclass
class UnitResult:
    unit: Unit
    total: int  # episodes in the unit
    done: int  # episodes recorded (all shards)
    rows: records.Rows

    @property
    def complete(self) -> bool:
        return self.done == self.total


def prepare(unit: Unit, options: Options, workdir: str | None) -> Unit:
    """Give the unit its episode list, and its records folder when there is a workdir (refusing
    records of another spec)."""
    if workdir:
        unit.store = records.UnitStore(os.path.join(workdir, "records", unit.key))
        unit.store.open(unit.spec(options))
        unit.episodes = unit.store.episodes(lambda: _make_episodes(unit, options))
    else:
        unit.episodes = records.canonical(_make_episodes(unit, options))
    return unit


def _run_unit(unit: Unit, options: Options, get_predictor: Callable, shard: tuple[int, int]) -> UnitResult:
    """Evaluate this shard's episodes that are not recorded yet; the result covers all shards."""
    store = unit.store
    total = len(_items(unit))
    done, rows = store.load() if store else (set(), records.Rows.empty())
    mine = list(range(shard[0], total, shard[1]))
    todo = [i for i in mine if i not in done]
    if todo:
        scorer = _Scorer(unit, get_predictor(), options.baseline_threshold)
        parts = []
        with tqdm(total=len(mine), initial=len(mine) - len(todo), desc=unit.key, disable=not options.progress) as bar:
            for start in range(0, len(todo), options.chunk_size):
                chunk = todo[start : start + options.chunk_size]
                scored = []
                for rows in scorer.score(chunk):
                    scored.append(rows)
                    bar.update()
                part = _as_rows(chunk, scored)
                if store:
                    store.write(chunk, part, shard)
                parts.append(part)
        if store:
            done, rows = store.load()
        else:
            done, rows = set(todo), records.Rows.concatenate(parts)
    return UnitResult(unit, total, len(done), rows)


# --- scores -----------------------------------------------------------------------------------


def _scores(rows: records.Rows) -> dict:
    """mIoU, FB-IoU and per-class IoU of the prediction and of the baseline."""
    order = np.lexsort((rows.class_id, rows.episode))
    model, baseline, names = IoUMeter(), IoUMeter(), {}
    for r in order:
        c = int(rows.class_id[r])
        model.add_counts(c, rows.model[r])
        baseline.add_counts(c, rows.baseline[r])
        names.setdefault(c, str(rows.name[r]))
    base_iou = baseline.class_iou()
    return {
        "miou": model.miou(), "fb_iou": model.fb_iou(),
        "baseline_miou": baseline.miou(), "baseline_fb_iou": baseline.fb_iou(),
        "classes": {str(c): {"name": names[c], "iou": 100.0 * iou, "baseline_iou": 100.0 * base_iou[c]}
                    for c, iou in model.class_iou().items()},
    }


HEADLINE = ("miou", "fb_iou", "baseline_miou", "baseline_fb_iou")


def _summary(results: list[UnitResult]) -> dict:
    """One benchmark at one shot count: its scores, or for folded benchmarks each fold's scores and
    their means."""
    if not all(r.complete for r in results):
        return {"complete": False, "episodes_done": sum(r.done for r in results), "episodes_total": sum(r.total for r in results)}
    if results[0].unit.fold is None:
        (r,) = results
        return {"complete": True, "episodes": r.total, **_scores(r.rows)}
    folds = {str(r.unit.fold): {"episodes": r.total, **_scores(r.rows)} for r in results}
    means = {k: float(np.mean([f[k] for f in folds.values()])) for k in HEADLINE}
    return {"complete": True, "episodes": sum(r.total for r in results), **means, "folds": folds}


def _job_shard(shard: tuple[int, int], workdir: str | None) -> tuple[tuple[int, int], bool]:
    """(the shard this process evaluates, whether the processes of a multi-process job share the work)."""
    if jax.process_count() == 1 or not workdir:
        return shard, False
    if shard != (0, 1):
        raise ValueError(
            f"shard_index/shard_count ({shard[0]} of {shard[1]}) split the work between separate runs; the "
            f"{jax.process_count()} processes of this job take their shares themselves: leave them at 0 and 1"
        )
    return (jax.process_index(), jax.process_count()), True


def _after_every_shard(work: Callable[[], Any], joint: bool, everyone: bool = True):
    """`work()` for this process's shard. In a job whose processes share the work, once they are all
    done, `work()` again (on every process, or on process 0 alone): it then finds every shard's
    records (or videos) on disk and only merges them."""
    result = work()
    if joint:
        distributed.sync("evaluation: every shard done")
        if everyone or distributed.is_main():
            result = work()
    return result


def _video(benchmark: str, predictor, data_dir: str, out_dir: str, memory: str, shard: tuple[int, int],
           late_objects: bool = False) -> dict:
    from segic_jax.evaluation import vos  # written separately; imported only when a video benchmark runs

    if benchmark == "davis2017":  # the first frame's objects, as the original (late_objects does not apply)
        return vos.evaluate_davis2017(predictor, data_dir, out_dir, memory=memory, shard_index=shard[0], shard_count=shard[1])
    return vos.write_youtube_vos(predictor, data_dir, out_dir, memory=memory, shard_index=shard[0], shard_count=shard[1],
                                 late_objects=late_objects)


def evaluate(
    predictor,
    benchmark: str,
    data_dir: str,
    *,
    shots: int = 1,
    fold: int | Sequence[int] | None = None,
    episodes: int = 0,
    seed: int = 0,
    workdir: str | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    baseline_threshold: float = 0.5,
    dataset: str | None = None,
    reference_min_area: float = 0.05,
    memory: str = "first_latest",
    chunk_size: int = 50,
    model: Any = "",
    progress: bool = True,
    query_as_support: bool = True,
    late_objects: bool = False,
) -> dict:
    """Evaluate an in-memory predictor on one benchmark; returns its scores.

    fold: a fold of coco20i / lvis92i, or several, or None for all; several are scored separately
    and averaged ("folds" holds each). episodes: per fold, 0 for
    the protocol's count (for fss1000 / ade20k, a seeded subset of the images). dataset: another
    build of the benchmark's dataset (e.g. "synthetic_incontext/tiny"). query_as_support: lvis92i and
    coco2017 reference choice (`benchmarks.protocol`; True is the original's). late_objects:
    youtube_vos also segments objects first annotated after a video's first annotation
    (`benchmarks.video_protocol`; False, only the first annotation's objects, is the original's). workdir: where
    per-episode records go (needed to resume or shard; records of other weights must not share it, and
    `model` is stored with them to catch that). Few-shot results hold "miou", "fb_iou",
    "baseline_miou", "baseline_fb_iou", "episodes", per-class "classes" (or "folds"), and
    "complete" (False, with the progress, while other shards are not done); video benchmarks
    return what `segic_jax.evaluation.vos` returns.
    """
    shard = records.check_shard(shard_index, shard_count)
    check_benchmark(benchmark)
    if shard_count > 1 and not workdir:
        raise ValueError("sharding needs a workdir shared by the shards, where their records are merged")
    shard, joint = _job_shard(shard, workdir)
    if benchmark in VIDEO:
        if not workdir:
            raise ValueError(f"{benchmark} writes its predicted masks: give a workdir")
        out_dir = os.path.join(workdir, benchmark)
        return _after_every_shard(lambda: _video(benchmark, predictor, data_dir, out_dir, memory, shard, late_objects),
                                  joint, everyone=False)
    options = Options(episodes, seed, baseline_threshold, reference_min_area, chunk_size, model, progress,
                      query_as_support)
    asked_folds = [fold] if isinstance(fold, int) else fold
    units = [prepare(u, options, workdir) for u in open_units(benchmark, data_dir, shots, asked_folds, dataset)]
    results = _after_every_shard(lambda: [_run_unit(u, options, lambda: predictor, shard) for u in units], joint)
    return {"benchmark": benchmark, "shots": shots, **_summary(results)}


def model_predictor(head, encoder, text_model, tokenizer) -> Predictor:
    """A Predictor over models in memory (training's held-out evaluation): one query per episode,
    so batches of one image."""
    return Predictor(head, encoder, text_model, tokenizer, batch_size=1)


def _check_config(config) -> None:
    for b in config.benchmarks:
        check_benchmark(b)
    if not config.benchmarks:
        raise ValueError("config.benchmarks is empty; choose from " + ", ".join(KNOWN))
    if not config.shots or any(int(s) < 1 for s in config.shots):
        raise ValueError(f"config.shots must list shot counts >= 1, got {tuple(config.shots)}")
    records.check_shard(config.shard_index, config.shard_count)
    if not isinstance(config.query_as_support, bool):
        raise ValueError(f"config.query_as_support must be True or False, got {config.query_as_support!r}")
    if not isinstance(config.late_objects, bool):
        raise ValueError(f"config.late_objects must be True or False, got {config.late_objects!r}")
    if not config.checkpoint:
        raise ValueError("set --config.checkpoint to a converted SEGIC directory (python -m segic_jax.convert segic ...)")


def run(config, workdir: str) -> dict:
    """Evaluate the checkpoint of `config` (configs/eval.py) on its benchmarks; write results.json,
    results.md and plots to `workdir` once every shard's episodes are done. Returns the results
    (with "complete": False and the progress while shards are missing)."""
    _check_config(config)
    compute_dtype(config.dtype, "config.dtype")  # a bad name fails before any work
    checkpoint = os.path.abspath(config.checkpoint)
    image_size = bundle.head_config(checkpoint).image_size
    if config.image_size and config.image_size != image_size:
        raise ValueError(f"config.image_size is {config.image_size} but {checkpoint} was converted for {image_size} px; "
                         "convert it again with --image-size, or set --config.image_size=0")
    shard, joint = _job_shard((config.shard_index, config.shard_count), workdir)
    options = Options(config.episodes, config.seed, config.baseline_threshold, config.ade20k_reference_min_area,
                      config.chunk_size, model=dict(checkpoint=checkpoint, dtype=config.dtype, image_size=image_size),
                      query_as_support=config.query_as_support)
    few_shot = [b for b in config.benchmarks if b in BENCHMARKS]
    # open every dataset first: a missing one fails before anything is written
    plan = {}
    for b in few_shot:
        dataset = {"synthetic": config.synthetic_dataset, "custom": config.custom_dataset}.get(b)
        for shots in (1,) if b == "ade20k" else config.shots:
            plan[b, int(shots)] = open_units(b, config.data_dir, int(shots), list(config.folds), dataset)
    plan = {k: [prepare(u, options, workdir) for u in units] for k, units in plan.items()}
    pools = {b: units[0].pools for (b, _), units in plan.items()}

    loaded = []

    def get_predictor():
        if not loaded:
            loaded.append(Predictor.from_checkpoint(checkpoint, dtype=config.dtype, batch_size=config.batch_size))
        return loaded[0]

    def few_shot_results():
        benchmarks: dict[str, dict] = {}
        for (b, shots), units in plan.items():
            results = [_run_unit(u, options, get_predictor, shard) for u in units]
            benchmarks.setdefault(b, {})[f"{shots}-shot"] = _summary(results)
        return benchmarks

    benchmarks = _after_every_shard(few_shot_results, joint)
    video = _after_every_shard(lambda: {
        b: _video(b, get_predictor(), config.data_dir, os.path.join(workdir, b), config.vos_memory, shard,
                  config.late_objects)
        for b in config.benchmarks if b in VIDEO
    }, joint, everyone=False)

    pending = {f"{b} {s}": v for b, by_shots in benchmarks.items() for s, v in by_shots.items() if not v["complete"]}
    if pending:
        done = ", ".join(f"{k}: {v['episodes_done']}/{v['episodes_total']}" for k, v in pending.items())
        print(f"shard {shard[0]} of {shard[1]} is done; waiting for the other shards' episodes ({done}). "
              "Run again (e.g. with --config.shard_count=1) once they are all done to write the results.")
        return {"complete": False, "benchmarks": benchmarks, "video": video}
    results = {
        "complete": True,
        "model": options.model,
        "config": config.to_dict(),
        "protocols": {**{b: protocol(b, query_as_support=options.query_as_support, pools=pools[b]) for b in few_shot}, **{b: video_protocol(b, late_objects=config.late_objects) for b in video},
                      "baseline": baseline_protocol(config.baseline_threshold)},
        "benchmarks": benchmarks,
        "video": video,
    }
    if distributed.is_main():
        report.write(workdir, results, plot=config.plot)
    return results

