"""Zero-shot video object segmentation: propagate first-frame masks through a video (SEGIC's
`forward_vos`, docs/original.md 5.2).

    propagator = VideoPropagator(predictor)                       # memory="first_latest"
    for frame in propagator.segment(frames, {0: first_labels}, object_ids=[1, 2]):
        frame.labels    # (H, W) uint8 object ids at the frame's resolution, 0 = background

How a frame is segmented. Every object keeps a memory of instance features (masked means of the
DINOv2 features under its mask): the ground truth where it is given, otherwise its own binarised
prediction (logit > 0 over the whole model frame, padding included, as the reference does). A
frame is decoded from that memory (`SegicHead.decode_video_frame`): the propagated mask and the
point prompt from each object's oldest reference, all objects' points as positive/negative
prompts, all objects' references as cross-instance tokens. The label of a pixel is
argmax_k[(logit_k > 0) * sigmoid(logit_k)] over the objects (first object on ties), 0 where no
logit is positive; labels are the objects' own ids.

Memory policies (`memory=`), R slots per object:
  first_latest   the first entry and the latest (SEGIC: [first, latest] once there are more than two)
  first          the first entry only (one-shot segmentation of every frame)
  first_last<N>  the first entry and the N latest (first_last1 is first_latest)
  last<N>        the N latest; the oldest of them gives the propagated mask and the point

Objects that appear later (YouTube-VOS): `annotations` maps frame index -> ground-truth label map;
an object enters the memory at the first frame where its id is in an annotation and is propagated
from the next frame on. A frame's annotated objects are written as annotated (their pixels take
their id); the other objects of that frame are predicted. SEGIC itself reads only the first
annotation; pass just that one to reproduce it.

Static shapes: the frames' DINOv2 features are computed `predictor.batch_size` at a time, objects
are padded to a multiple of `predictor.concept_bucket`, and one compiled step (decode and memory
update) serves every frame of every video with the same padded object count.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Iterator, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from segic_jax.data.images import fit_to_model
from segic_jax.data.sources import decode_image
from segic_jax.inference.predictor import INSTANCE_PROMPT, Predictor
from segic_jax.ops.correspondence import masked_mean_features
from segic_jax.ops.image import round_up
from segic_jax.ops.resize import resize


@dataclasses.dataclass(frozen=True)
class MemoryPolicy:
    """Which earlier frames an object is decoded from: its first entry (if `keep_first`) and the
    `recent` latest ones."""

    keep_first: bool
    recent: int

    @property
    def slots(self) -> int:
        return int(self.keep_first) + self.recent

    @classmethod
    def parse(cls, spec: str) -> "MemoryPolicy":
        if spec == "first_latest":
            return cls(True, 1)
        if spec == "first":
            return cls(True, 0)
        match = re.fullmatch(r"(first_)?last([1-9][0-9]*)", spec)
        if not match:
            raise ValueError(
                f"unknown memory policy {spec!r}; use first_latest (SEGIC), first, first_last<N> or last<N>"
            )
        return cls(match.group(1) is not None, int(match.group(2)))


class VideoMemory(NamedTuple):
    features: jax.Array  # (K, R, C) instance features, oldest slot first
    valid: jax.Array  # (K, R) bool: filled slots


def remember(memory: VideoMemory, new: jax.Array, write: jax.Array, policy: MemoryPolicy) -> VideoMemory:
    """Add `new` (K, C) to the memory of the objects where `write` (K,) is set. An object's first
    entry goes to slot 0 when the policy keeps it; later entries shift through the recent slots."""
    feats, valid = memory
    if policy.keep_first:
        to_first = write & ~valid[:, 0]
        first_f = jnp.where(to_first[:, None], new, feats[:, 0])[:, None]
        first_v = (valid[:, 0] | to_first)[:, None]
        feats, valid, write = feats[:, 1:], valid[:, 1:], write & ~to_first
    if policy.recent:
        shifted_f = jnp.concatenate([feats[:, 1:], new[:, None]], axis=1)
        shifted_v = jnp.concatenate([valid[:, 1:], jnp.ones_like(valid[:, :1])], axis=1)
        feats = jnp.where(write[:, None, None], shifted_f, feats)
        valid = jnp.where(write[:, None], shifted_v, valid)
    if policy.keep_first:
        feats, valid = jnp.concatenate([first_f, feats], axis=1), jnp.concatenate([first_v, valid], axis=1)
    return VideoMemory(feats, valid)


class VideoFrame(NamedTuple):
    labels: np.ndarray  # (H, W) uint8 object ids, 0 = background
    propagated: tuple[int, ...]  # ids predicted in this frame
    annotated: tuple[int, ...]  # ids taken from the frame's annotation


class VideoPropagator:
    """SEGIC's video object segmentation with a converted predictor's encoders and head."""

    def __init__(self, predictor: Predictor, memory: str = "first_latest"):
        self.predictor = predictor
        self.policy = MemoryPolicy.parse(memory)
        self._unannotated: dict[int, tuple[jax.Array, jax.Array]] = {}

    def start(self, num_objects: int, channels: int) -> VideoMemory:
        """An empty memory for `num_objects`, padded to the predictor's bucket."""
        kp = round_up(num_objects, self.predictor.concept_bucket)
        return VideoMemory(
            jnp.zeros((kp, self.policy.slots, channels), jnp.float32), jnp.zeros((kp, self.policy.slots), bool)
        )

    def step(
        self, memory: VideoMemory, features: jax.Array, text: jax.Array, annotated=None, annotated_masks=None
    ) -> tuple[jax.Array, VideoMemory]:
        """Decode one frame from the memory and add the frame to it.

        features (h, w, C): the frame's DINOv2 patch tokens; text (Ct,): CLIP pooled instance prompt.
        annotated (K,) bool: objects whose mask is given in this frame, annotated_masks (K, S, S)
        bool at the model input size; they enter the memory with that mask, the other objects with
        their prediction. K may be less than the memory's padded count.
        -> logits (Kp, S, S) at the model input size (rows without memory are meaningless), memory.
        """
        kp, s = memory.features.shape[0], self.predictor.image_size
        if annotated is None or not np.any(annotated):
            if kp not in self._unannotated:  # kept on the device: most frames have no annotation
                self._unannotated[kp] = (jnp.zeros(kp, bool), jnp.zeros((kp, s, s), bool))
            given, masks = self._unannotated[kp]
        else:
            given = np.zeros(kp, bool)
            masks = np.zeros((kp, s, s), bool)
            given[: len(annotated)] = annotated
            masks[: len(annotated)] = annotated_masks
        p = self.predictor
        return _step(
            p.head_graphdef, p.precision, self.policy, p.head_state, features, text, memory,
            jnp.asarray(given), jnp.asarray(masks),
        )

    def segment(
        self,
        frames: Sequence[bytes | np.ndarray],
        annotations: Mapping[int, np.ndarray],
        object_ids: Sequence[int],
        name: str = "video",
    ) -> Iterator[VideoFrame]:
        """Segment `object_ids` in every frame (encoded bytes or uint8 (H, W, 3)).

        annotations: frame index -> (H, W) integer label map; an object is annotated in a frame
        when its id occurs in that frame's map. Yields one `VideoFrame` per frame, in order.
        """
        p = self.predictor
        ids = np.asarray(sorted(int(i) for i in object_ids), np.int64)
        if len(set(ids.tolist())) != len(ids) or (ids <= 0).any() or (ids > 255).any():
            raise ValueError(f"{name}: object ids must be distinct and in 1..255, got {ids.tolist()}")
        for t in annotations:
            if not 0 <= t < len(frames):
                raise ValueError(f"{name}: annotation for frame {t}, but the video has {len(frames)} frames")
        k, kp = len(ids), round_up(len(ids), p.concept_bucket)
        text = jnp.asarray(p.text_features([INSTANCE_PROMPT])[0])
        lut = np.zeros(kp + 1, np.uint8)  # rank label -> object id
        lut[1 : k + 1] = ids
        tracked = np.zeros(k, bool)  # objects in the memory
        memory = None
        for start in range(0, len(frames), p.batch_size):
            chunk = frames[start : start + p.batch_size]
            images = [decode_image(f) if isinstance(f, bytes) else np.asarray(f) for f in chunk]
            feats, valid_hw = p.encode_images(images)
            if memory is None:
                memory = self.start(k, feats.shape[-1])
            for i, image in enumerate(images):
                t = start + i
                labels_gt = annotations.get(t)
                annotated = np.zeros(k, bool)
                if labels_gt is not None:
                    labels_gt = np.asarray(labels_gt)
                    if labels_gt.shape != image.shape[:2]:
                        raise ValueError(f"{name}: the annotation of frame {t} is {labels_gt.shape} "
                                         f"but the frame is {image.shape[:2]}")
                    annotated = np.isin(ids, labels_gt)
                propagated = tracked & ~annotated
                if tracked.any() or annotated.any():
                    fitted = None
                    if annotated.any():
                        fitted = np.zeros((k, p.image_size, p.image_size), bool)
                        for j in np.flatnonzero(annotated):
                            fitted[j] = _fit_mask(labels_gt == ids[j], p.image_size)
                    logits, memory = self.step(memory, feats[i], text, annotated, fitted)
                rank = np.zeros(image.shape[:2], np.int64)
                if propagated.any():
                    decoded = np.zeros(kp, bool)
                    decoded[:k] = propagated
                    valid = tuple(int(x) for x in valid_hw[i])
                    rank = np.asarray(_labels(valid, image.shape[:2], logits, jnp.asarray(decoded)))
                labels = lut[rank]
                for obj in ids[annotated]:
                    labels[labels_gt == obj] = obj
                tracked |= annotated
                yield VideoFrame(labels, tuple(ids[propagated].tolist()), tuple(ids[annotated].tolist()))


def _fit_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A ground-truth mask at the model input size, as the reference's loader makes it: resized as
    0-255 values and binarised at half."""
    return fit_to_model(mask.astype(np.float32) * 255, size)[0] > 127.5


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _step(graphdef, precision, policy, state, features, text, memory, annotated, annotated_masks):
    with jax.default_matmul_precision(precision):
        head = nnx.merge(graphdef, state)
        out = head.decode_video_frame(features[None], memory.features[None], memory.valid[None], text[None])
    logits = out.logits[0]
    masks = jnp.where(annotated[:, None, None], annotated_masks, logits > 0)
    new = masked_mean_features(features[None], masks[None])[0]
    return logits, remember(memory, new, memory.valid.any(axis=1) | annotated, policy)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _labels(valid_hw, out_hw, logits, decoded):
    """(H, W) rank labels: 1 + the index of the object with the highest probability among those
    with a positive logit, 0 where none is positive. logits (Kp, S, S) at the model input size are
    cropped to the valid extent and resized to the frame first."""
    h, w = valid_hw
    x = resize(logits[:, :h, :w], size=out_hw, method="bilinear", axes=(-2, -1))
    fg = (x > 0) & decoded[:, None, None]
    score = jnp.where(fg, jax.nn.sigmoid(x), 0.0)
    return jnp.where(fg.any(axis=0), jnp.argmax(score, axis=0) + 1, 0).astype(jnp.int32)
