"""Video object segmentation datasets as TFDS datasets (array_record), one example per video.

Layouts read from --manual_dir:
  davis2017     JPEGImages/480p/<video>/*.jpg, Annotations/480p/<video>/*.png (palette, object
                ids per pixel), ImageSets/2017/{train,val}.txt.
  youtube_vos   {train,valid}/JPEGImages/<video>/*.jpg, {train,valid}/Annotations/<video>/*.png
                (every 5th frame in train; the frames where objects first appear in valid),
                {train,valid}/meta.json.
Each example: the video name, its frames (encoded bytes, sorted by name) and frame names, and
its masks as the palette PNGs on disk with the names of the frames they belong to; YouTube-VOS
adds its objects (id, category, first annotated frame) from meta.json.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from segic_jax.data.builders.common import LayoutError, load_json, read_bytes, require_dir, require_file, check_same_size, image_size, pick_splits

_LAYOUT = __doc__  # the module's layout text (inside a class body, __doc__ is the class's)


def _video_features(extra=None):
    return tfds.features.FeaturesDict(
        {
            "video": tfds.features.Text(),
            "frames": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
            "frame_names": tfds.features.Sequence(tfds.features.Text()),
            "masks": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
            "mask_frames": tfds.features.Sequence(tfds.features.Text()),
            **(extra or {}),
        }
    )


def _read_video(frames_dir: str, masks_dir: str, require_all_masks: bool):
    frames = sorted(f for f in os.listdir(frames_dir) if f.lower().endswith(".jpg"))
    if not frames:
        raise LayoutError(f"{frames_dir} has no .jpg frames")
    stems = [os.path.splitext(f)[0] for f in frames]
    masks = sorted(f for f in os.listdir(masks_dir) if f.lower().endswith(".png")) if os.path.isdir(masks_dir) else []
    mask_stems = [os.path.splitext(f)[0] for f in masks]
    unknown = sorted(set(mask_stems) - set(stems))
    if unknown:
        raise LayoutError(f"{masks_dir} has masks for frames that do not exist: {unknown[:5]}")
    if require_all_masks and mask_stems != stems:
        missing = sorted(set(stems) - set(mask_stems))
        raise LayoutError(f"{masks_dir} lacks the masks of frames {missing[:5]}")
    if not masks:
        raise LayoutError(f"no masks for the frames of {frames_dir} (expected them in {masks_dir})")
    frame_bytes = [read_bytes(os.path.join(frames_dir, f)) for f in frames]
    mask_bytes = [read_bytes(os.path.join(masks_dir, f)) for f in masks]
    sizes = {stem: image_size(b, os.path.join(frames_dir, f)) for stem, f, b in zip(stems, frames, frame_bytes)}
    for stem, f, b in zip(mask_stems, masks, mask_bytes):
        check_same_size(os.path.join(masks_dir, f), image_size(b, os.path.join(masks_dir, f)),
                        os.path.join(frames_dir, frames[stems.index(stem)]), sizes[stem])
    return {"frames": frame_bytes, "frame_names": stems, "masks": mask_bytes, "mask_frames": mask_stems}


class Davis2017(tfds.core.GeneratorBasedBuilder):
    """DAVIS 2017 (480p)."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, description=__doc__, features=_video_features())

    def _split_generators(self, dl_manager):
        root = require_dir(os.fspath(dl_manager.manual_dir), "--manual_dir of davis2017")
        expected = {split: os.path.join(root, "ImageSets", "2017", f"{split}.txt") for split in ("train", "val")}
        present = {s: p for s, p in expected.items() if os.path.isfile(p)}
        out = {}
        for split, path in pick_splits(self, present, expected).items():
            with open(path) as f:
                out[split] = self._generate_examples(root, [v.strip() for v in f if v.strip()])
        return out

    def _generate_examples(self, root: str, videos: list[str]):
        for video in videos:
            frames_dir = require_dir(os.path.join(root, "JPEGImages", "480p", video), f"frames of {video}")
            masks_dir = require_dir(os.path.join(root, "Annotations", "480p", video), f"masks of {video}")
            yield video, {"video": video, **_read_video(frames_dir, masks_dir, require_all_masks=True)}


class YoutubeVos(tfds.core.GeneratorBasedBuilder):
    """YouTube-VOS 2018."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT

    def _info(self):
        objects = tfds.features.Sequence(
            {"object_id": np.int32, "category": tfds.features.Text(), "first_frame": tfds.features.Text()}
        )
        return tfds.core.DatasetInfo(builder=self, description=__doc__, features=_video_features({"objects": objects}))

    def _split_generators(self, dl_manager):
        root = require_dir(os.fspath(dl_manager.manual_dir), "--manual_dir of youtube_vos")
        expected = {split: os.path.join(root, split) for split in ("train", "valid")}
        present = {s: p for s, p in expected.items() if os.path.isdir(p)}
        return {split: self._generate_examples(path) for split, path in pick_splits(self, present, expected).items()}

    def _generate_examples(self, split_dir: str):
        meta = load_json(require_file(os.path.join(split_dir, "meta.json"), "YouTube-VOS meta"))
        if "videos" not in meta:
            raise LayoutError(f"{os.path.join(split_dir, 'meta.json')} has no 'videos'")
        for video, info in sorted(meta["videos"].items()):
            frames_dir = require_dir(os.path.join(split_dir, "JPEGImages", video), f"frames of {video}")
            data = _read_video(frames_dir, os.path.join(split_dir, "Annotations", video), require_all_masks=False)
            objects = [
                {"object_id": int(k), "category": o.get("category", ""), "first_frame": (o.get("frames") or [""])[0]}
                for k, o in sorted(info.get("objects", {}).items(), key=lambda kv: int(kv[0]))
            ]
            yield video, {"video": video, **data, "objects": objects}
