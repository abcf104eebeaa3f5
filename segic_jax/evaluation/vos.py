"""Zero-shot video object segmentation benchmarks (docs/original.md 5.2, docs/benchmarks.md): DAVIS 2017 val
scored with J&F, and YouTube-VOS 2018 valid written for the challenge server.

    scores = evaluate_davis2017(predictor, "data/", "out/davis2017")     # {"J&F": ..., "J": ..., ...}
    counts = write_youtube_vos(predictor, "data/", "out/youtube_vos")    # + out/youtube_vos/submission.zip

The inputs are the built datasets (`python -m segic_jax.data.build davis2017|youtube_vos ...`);
videos are segmented by `segic_jax.inference.video.VideoPropagator`. The outputs are palette PNGs,
one per frame, with the palette of the video's first annotation, in the official layouts:
  DAVIS 2017     <out>/<video>/<frame>.png
  YouTube-VOS    <out>/Annotations/<video>/<frame>.png, and <out>/submission.zip holding Annotations/
A video's folder is written under a temporary name and renamed once complete, so an interrupted run
leaves no partial video and a rerun skips the videos already written. With `shard_count` > 1 a call
segments videos shard_index, shard_index + shard_count, ...; whichever call finds every video
written scores them (DAVIS; `summarize_davis2017` does it alone) or writes the zip (YouTube-VOS).

DAVIS is semi-supervised from the first frame's masks only. YouTube-VOS gives each object's mask in
the frame where it first appears. SEGIC reads only each video's first annotation and never segments
objects that appear later: `late_objects=False` (the default) is that, the paper's protocol. With
`late_objects=True` an object that appears after the first annotation enters the memory at its
first mask and is propagated from then on, and each given mask is written as given.
"""

from __future__ import annotations

import glob
import io
import os
import shutil
import tempfile
import zipfile
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from segic_jax.data.sources import text
from segic_jax.evaluation.metrics import davis_summary, davis_video
from segic_jax.evaluation.records import check_shard
from segic_jax.inference.video import VideoPropagator

SUBMISSION_ZIP = "submission.zip"
VOID = 255  # DAVIS's void label; never an object


def evaluate_davis2017(
    predictor,
    data_dir: str,
    out_dir: str,
    *,
    videos: Sequence[str] | None = None,
    memory: str = "first_latest",
    shard_index: int = 0,
    shard_count: int = 1,
) -> dict:
    """Segment the DAVIS 2017 val videos (or `videos`) from their first frame and score them.

    Returns the `summarize_davis2017` scores once every selected video is written, with "written"
    and "skipped" (videos segmented by this call / found on disk); before that (other shards still
    running) {"complete": False, "written", "skipped", "missing": [videos]}.
    """
    check_shard(shard_index, shard_count)
    source = _source("davis2017", "val", data_dir)
    index = _video_index(source)
    selected = _select(index, videos)
    propagator = VideoPropagator(predictor, memory)
    written = skipped = 0
    for video in tqdm(selected[shard_index::shard_count], desc="DAVIS 2017", unit="video"):
        folder = os.path.join(out_dir, video)
        if os.path.isdir(folder):
            skipped += 1
            continue
        ex = source[index[video]]
        names = [text(n) for n in ex["frame_names"]]
        first = names.index(text(ex["mask_frames"][0]))
        labels, palette = read_label_png(ex["masks"][0], f"{video}/{names[first]}.png")
        ids = sorted(set(np.unique(labels).tolist()) - {0, VOID})
        frames = propagator.segment(ex["frames"], {first: labels}, ids, name=video)
        _write_video(folder, names, frames, palette)
        written += 1
    missing = [v for v in selected if not os.path.isdir(os.path.join(out_dir, v))]
    if missing:
        return {"complete": False, "written": written, "skipped": skipped, "missing": missing}
    return {**_score_davis(source, index, selected, out_dir, data_dir), "written": written, "skipped": skipped}


def summarize_davis2017(data_dir: str, out_dir: str, *, videos: Sequence[str] | None = None) -> dict:
    """J&F of the PNGs under out_dir against the DAVIS 2017 val ground truth (the davis2017-evaluation
    definitions, `metrics.davis_video`). Returns the global scores of `metrics.davis_summary` (x100),
    "complete": True, and "videos": {video: {object id: {"J", "F", "J-recall", ... per object}}}."""
    source = _source("davis2017", "val", data_dir)
    index = _video_index(source)
    selected = _select(index, videos)
    missing = [v for v in selected if not os.path.isdir(os.path.join(out_dir, v))]
    if missing:
        raise FileNotFoundError(
            f"no predictions under {out_dir} for videos {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
            "run evaluate_davis2017 (every shard) first"
        )
    return _score_davis(source, index, selected, out_dir, data_dir)


def _score_davis(source, index: dict[str, int], selected: Sequence[str], out_dir: str, data_dir: str) -> dict:
    """summarize_davis2017 on an open source whose `selected` videos all have predictions."""
    per_video = {}
    for video in tqdm(selected, desc="DAVIS 2017 J&F", unit="video"):
        ex = source[index[video]]
        names = [text(n) for n in ex["frame_names"]]
        if [text(n) for n in ex["mask_frames"]] != names:
            raise ValueError(f"DAVIS video {video} in {data_dir} lacks the ground truth of some frames: cannot score it")
        gt = np.stack([read_label_png(m, f"{video}/{n}.png")[0] for m, n in zip(ex["masks"], names)])
        pred = np.stack([_read_prediction(os.path.join(out_dir, video, f"{n}.png"), gt.shape[1:]) for n in names])
        per_video[video] = davis_video(gt, pred)
    details = {
        video: {
            obj: {
                "J": 100 * j.mean, "J-recall": 100 * j.recall, "J-decay": 100 * j.decay,
                "F": 100 * f.mean, "F-recall": 100 * f.recall, "F-decay": 100 * f.decay,
            }
            for obj, (j, f) in objects.items()
        }
        for video, objects in per_video.items()
    }
    return {**davis_summary(per_video), "complete": True, "videos": details}


def write_youtube_vos(
    predictor,
    data_dir: str,
    out_dir: str,
    *,
    memory: str = "first_latest",
    shard_index: int = 0,
    shard_count: int = 1,
    late_objects: bool = False,
) -> dict:
    """Segment the YouTube-VOS 2018 valid videos into the submission layout.

    Returns counts for the videos this call segmented: "videos", "frames", "objects" and
    "late_objects" (objects first annotated after the video's first annotation; segmented only
    with `late_objects=True`, not by the paper's protocol), "skipped" (found on disk), "complete"
    (every video written) and "zip" (the submission's path once complete, else None). The setting
    is recorded in <out_dir>/late_objects.json: a rerun with the other one is refused, since the
    videos already written would be skipped and the submission would mix both.
    """
    check_shard(shard_index, shard_count)
    source = _source("youtube_vos", "valid", data_dir)
    _check_late_objects(out_dir, late_objects)
    root = os.path.join(out_dir, "Annotations")
    propagator = VideoPropagator(predictor, memory)
    counts = {"videos": 0, "frames": 0, "objects": 0, "late_objects": 0, "skipped": 0}
    for i in tqdm(range(shard_index, len(source), shard_count), desc="YouTube-VOS", unit="video"):
        ex = source[i]
        video = text(ex["video"])
        folder = os.path.join(root, video)
        if os.path.isdir(folder):
            counts["skipped"] += 1
            continue
        names = [text(n) for n in ex["frame_names"]]
        position = {n: t for t, n in enumerate(names)}
        annotations, palette = {}, None
        given = sorted(zip((text(f) for f in ex["mask_frames"]), ex["masks"]), key=lambda fm: position[fm[0]])
        for frame, data in given:
            labels, pal = read_label_png(data, f"{video}/{frame}.png")
            annotations[position[frame]] = labels
            palette = palette or pal
        first = min(annotations)
        first_ids = set(np.unique(annotations[first]).tolist()) - {0}
        all_ids = set().union(*(np.unique(a).tolist() for a in annotations.values())) - {0}
        if not late_objects:
            annotations = {first: annotations[first]}
        ids = sorted(all_ids if late_objects else first_ids)
        _write_video(folder, names, propagator.segment(ex["frames"], annotations, ids, name=video), palette)
        counts["videos"] += 1
        counts["frames"] += len(names)
        counts["objects"] += len(ids)
        counts["late_objects"] += len(all_ids - first_ids)
    zip_path = _finish_submission(source, out_dir, rewrite=counts["videos"] > 0)
    return {**counts, "complete": zip_path is not None, "zip": zip_path}


# --- files ------------------------------------------------------------------------------------


def read_label_png(data: bytes, what: str) -> tuple[np.ndarray, list[int] | None]:
    """An annotation PNG's (H, W) integer labels and its palette (None for a grayscale PNG)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("P", "L"):
            raise ValueError(
                f"annotation {what} is a {img.mode} image; expected a palette (P) or grayscale (L) PNG of object ids"
            )
        return np.asarray(img).astype(np.int64), (img.getpalette() if img.mode == "P" else None)


def davis_palette() -> list[int]:
    """The DAVIS / PASCAL VOC colour map (256 RGB entries), for annotations without a palette."""
    palette = []
    for i in range(256):
        r = g = b = 0
        for bit in range(8):
            r |= ((i >> (3 * bit)) & 1) << (7 - bit)
            g |= ((i >> (3 * bit + 1)) & 1) << (7 - bit)
            b |= ((i >> (3 * bit + 2)) & 1) << (7 - bit)
        palette += [r, g, b]
    return palette


def _check_late_objects(out_dir: str, late_objects: bool) -> None:
    """Record `late_objects` in out_dir, or refuse a setting other than the one recorded there."""
    import json

    path = os.path.join(out_dir, "late_objects.json")
    if os.path.isfile(path):
        with open(path) as f:
            recorded = json.load(f).get("late_objects")
        if recorded != late_objects:
            raise ValueError(f"{out_dir} holds YouTube-VOS videos segmented with late_objects={recorded}; this run has "
                             f"late_objects={late_objects}: use another output folder (workdir)")
        return
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"late_objects": late_objects}, f)


def _write_video(folder: str, names: Sequence[str], frames, palette: list[int] | None) -> None:
    """One palette PNG per frame into `folder`, which appears only once every frame is written."""
    from PIL import Image

    from segic_jax import atomic_files

    parent, base = os.path.split(os.path.abspath(folder))
    for stale in glob.glob(os.path.join(parent, f".{glob.escape(base)}.partial-*")):  # from a killed run
        shutil.rmtree(stale, ignore_errors=True)
    palette = palette or davis_palette()
    with atomic_files.atomic_directory(folder) as tmp:
        for name, frame in zip(names, frames):
            img = Image.fromarray(frame.labels, "P")
            img.putpalette(palette)
            img.save(os.path.join(tmp, f"{name}.png"))


def _read_prediction(path: str, shape) -> np.ndarray:
    from PIL import Image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing prediction {path}")
    with Image.open(path) as img:
        labels = np.asarray(img).astype(np.int64)
    if labels.shape != tuple(shape):
        raise ValueError(f"prediction {path} is {labels.shape} but the ground truth is {tuple(shape)}")
    return labels


def _finish_submission(source, out_dir: str, rewrite: bool) -> str | None:
    """Zip Annotations/ into the submission once every video of `source` is written; keep an
    existing zip unless this call wrote videos. Returns the zip's path, or None if incomplete."""
    root = os.path.join(out_dir, "Annotations")
    path = os.path.join(out_dir, SUBMISSION_ZIP)
    done = {d for d in os.listdir(root) if not d.startswith(".")} if os.path.isdir(root) else set()
    if len(done) < len(source):
        return None
    videos = sorted(text(source[i]["video"]) for i in range(len(source)))
    if not set(videos) <= done:
        return None
    if os.path.isfile(path) and not rewrite:
        return path
    fd, tmp = tempfile.mkstemp(prefix=f".{SUBMISSION_ZIP}.", dir=out_dir)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for video in videos:
                for png in sorted(os.listdir(os.path.join(root, video))):
                    z.write(os.path.join(root, video, png), f"Annotations/{video}/{png}")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


# --- datasets ---------------------------------------------------------------------------------


def _source(name: str, split: str, data_dir: str):
    from segic_jax.data.sources import data_source

    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"data_dir {data_dir} does not exist; build {name} into it with "
            f"`python -m segic_jax.data.build {name} --manual_dir ... --data_dir {data_dir}`"
        )
    return data_source(name, split, data_dir)


def _video_index(source) -> dict[str, int]:
    return {text(source[i]["video"]): i for i in range(len(source))}


def _select(index: dict[str, int], videos: Sequence[str] | None) -> list[str]:
    if videos is None:
        return sorted(index)
    unknown = [v for v in videos if v not in index]
    if unknown:
        more = " ..." if len(index) > 10 else ""
        raise ValueError(f"unknown videos {unknown}; the dataset has {sorted(index)[:10]}{more}")
    return list(dict.fromkeys(videos))


