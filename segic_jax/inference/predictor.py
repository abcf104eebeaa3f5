"""Converted-checkpoint inference: encode a context once, segment many targets.

    predictor = Predictor.from_checkpoint("ckpt/segic")           # from `python -m segic_jax.convert segic`
    context = predictor.encode_context([ref_image], [ref_masks])  # ref_masks (K, H, W): K things to find
    for pred in predictor.segment_iter(frames, context):          # any iterable, e.g. images read in threads
        pred.masks      # (K, H, W) bool at the target's own resolution; also .logits, .similarity, .points
    preds = predictor.segment_episodes([Episode(ref, mask, target), ...])  # one-shot episodes, batched

How references are combined. A context holds K "concepts". Each reference image gives one mask per
concept (an empty mask when the concept is absent from that image); a concept's feature is the
masked mean of the DINOv2 features over all of its masks in all reference images (sums of features
over sums of areas), which for a single reference is exactly SEGIC's instance feature. With one
reference image and K masks this is SEGIC's instance mode (K instances, decoded jointly with
cross-instance tokens); with one reference per class and class names it is its semantic mode (all
classes decoded jointly, each with its own "a photo of a {class}" prompt); several reference images
for the same concepts are k-shot. `concept_stacks` makes those mask stacks from one mask per
reference image and optional class names (the predict command's and the page's inputs).

Throughput. Everything between reading an image and handing back its masks runs on the device:
the evaluation resize to the model size (from uint8 pixels padded to a multiple of 128 px, so the
host uploads a few hundred KB instead of a float32 model-size image), DINOv2, the decoder, and the
crop, resize to the original size and threshold of the outputs. Batch i + 1 is dispatched before
batch i is pulled (`prefetch` batches in flight), so the host's work (building the next batch,
copying results out) overlaps the device's. Shapes are static: the encoder and the decoder compile
once per batch size and concept bucket; the resize programs once per 128-px size bucket.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import os
from typing import Iterable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from segic_jax.data.prompts import INSTANCE_PROMPT, class_prompt
from segic_jax.models import bundle, clip_text, dinov2
from segic_jax.models.encoders import encode_prompts, matmul_precision
from segic_jax.models.segic import SegicHead
from segic_jax.ops.correspondence import masked_feature_sums
from segic_jax.ops.image import round_up
from segic_jax.ops.resize import interpolation_taps, resample_taps, scaled_size

__all__ = ["INSTANCE_PROMPT", "Context", "Episode", "Prediction", "Predictor", "class_prompt", "concept_stacks"]

CANVAS_MULTIPLE = 128  # images and outputs are padded to multiples of this on the device


@dataclasses.dataclass(frozen=True)
class Context:
    """Encoded references: K concepts."""

    features: jax.Array  # (K, C) masked-mean DINOv2 features
    text: jax.Array  # (K, Ct) CLIP pooled text, one prompt per concept
    prompts: tuple[str, ...]

    @property
    def size(self) -> int:
        return self.features.shape[0]

    @classmethod
    def concatenate(cls, contexts: Sequence["Context"]) -> "Context":
        """One context holding every concept of `contexts`, in order (encode each once, combine per
        target: the semantic evaluation decodes the classes present in each image)."""
        return cls(
            features=jnp.concatenate([c.features for c in contexts]),
            text=jnp.concatenate([c.text for c in contexts]),
            prompts=sum((c.prompts for c in contexts), ()),
        )


class Prediction(NamedTuple):
    logits: np.ndarray  # (K, H, W) float32 at the target's resolution; > 0 is foreground
    masks: np.ndarray  # (K, H, W) bool
    similarity: np.ndarray  # (K, H, W) propagated masks (cosine similarity), same resolution
    points: np.ndarray  # (K, 2) point prompts (x, y) in target pixels


class Episode(NamedTuple):
    """One-shot: a reference image with its K masks, and the target to segment them in."""

    reference: np.ndarray  # (H, W, 3) uint8
    masks: np.ndarray  # (K, H, W) or (H, W) bool
    target: np.ndarray  # (H', W', 3) uint8
    class_names: Sequence[str] | None = None  # K names, or None
    instance_prompt: bool = False


def concept_stacks(masks: Sequence[np.ndarray], class_names: Sequence[str] = ()) -> tuple[list[np.ndarray], list | None]:
    """One (H, W) mask per reference -> per-reference (K, H, W) stacks and the K concept names (None
    without names), as `Predictor.encode_context` takes them. References with the same class name
    are shots of one concept; without class names every reference is its own concept."""
    concepts = list(dict.fromkeys(class_names)) if class_names else list(range(len(masks)))
    keys = class_names if class_names else list(range(len(masks)))
    stacks = []
    for mask, key in zip(masks, keys):
        stack = np.zeros((len(concepts),) + mask.shape, bool)
        stack[concepts.index(key)] = mask
        stacks.append(stack)
    return stacks, (concepts if class_names else None)


def concept_slots(k: int, bucket: int) -> int:
    """Decoder rows for k concepts: the next power of two up to `bucket`, then multiples of it, so
    that one concept (the common case) is decoded once, not `bucket` times, and a handful of
    compiled decoders serve every count."""
    if k <= bucket:
        return min(bucket, 1 << max(0, k - 1).bit_length())
    return round_up(k, bucket)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


class _Resample(NamedTuple):
    """Gather taps of a batch of separable bilinear resizes, zero-padded (see `interpolation_taps`)."""

    row_index: np.ndarray  # (B, P, 2) int32
    row_weight: np.ndarray  # (B, P, 2) float32
    col_index: np.ndarray
    col_weight: np.ndarray


def _stack_taps(rows: list, cols: list) -> _Resample:
    return _Resample(*(np.stack([t[i] for t in taps]) for taps in (rows, cols) for i in (0, 1)))


class _Fitted(NamedTuple):
    """Host-built inputs of the evaluation resize of a batch (run on the device by `_fit`)."""

    canvas: np.ndarray  # (B, Hc, Wc, C) uint8 (or float32): the images, zero-padded to a common bucket
    taps: _Resample  # to (S, S): longer side to S by scale factor, zeros bottom/right
    valid_hw: np.ndarray  # (B, 2) int32, the resized extent
    sizes: list  # [(H, W)] the original sizes


def _canvas(arrays: Sequence[np.ndarray], channels: int, rows: int | None = None) -> np.ndarray:
    """(rows, Hc, Wc, channels): each (H, W, C <= channels) array at the top left of its row, zeros
    elsewhere (further rows, channels, and the padding to a multiple of CANVAS_MULTIPLE)."""
    hc = round_up(max(a.shape[0] for a in arrays), CANVAS_MULTIPLE)
    wc = round_up(max(a.shape[1] for a in arrays), CANVAS_MULTIPLE)
    # uint8 pixels travel as uint8 (a quarter of float32); anything else keeps its values exactly
    dtype = np.uint8 if all(np.asarray(a).dtype == np.uint8 for a in arrays) else np.float32
    canvas = np.zeros((rows or len(arrays), hc, wc, channels), dtype)
    for i, a in enumerate(arrays):
        canvas[i, : a.shape[0], : a.shape[1], : a.shape[2]] = a
    return canvas


def _fit_inputs(images: Sequence[np.ndarray], size: int) -> _Fitted:
    """The reference's evaluation transform (`data.images.fit_to_model`) as device inputs."""
    rows, cols, valid = [], [], []
    for image in images:
        if np.ndim(image) != 3 or image.shape[2] != 3:
            raise ValueError(f"images must be (H, W, 3) RGB arrays, got one of shape {np.shape(image)}")
        h, w = image.shape[:2]
        scale = size / max(h, w)
        # the reference's transform would give a very thin image no rows (or columns): keep one
        hv, wv = max(1, scaled_size(h, scale)), max(1, scaled_size(w, scale))
        rows.append(interpolation_taps(h, hv, size, scale_factor=scale))
        cols.append(interpolation_taps(w, wv, size, scale_factor=scale))
        valid.append((hv, wv))
    return _Fitted(_canvas(images, 3), _stack_taps(rows, cols), np.asarray(valid, np.int32), [i.shape[:2] for i in images])


def _output_taps(fitted: _Fitted) -> _Resample:
    """Crop each image's valid extent out of the model frame and resize it to the original size,
    padded to a common bucket (the host slices each image's (H, W) out)."""
    hp = round_up(max(h for h, _ in fitted.sizes), CANVAS_MULTIPLE)
    wp = round_up(max(w for _, w in fitted.sizes), CANVAS_MULTIPLE)
    rows = [interpolation_taps(int(v[0]), hw[0], hp) for v, hw in zip(fitted.valid_hw, fitted.sizes)]
    cols = [interpolation_taps(int(v[1]), hw[1], wp) for v, hw in zip(fitted.valid_hw, fitted.sizes)]
    return _stack_taps(rows, cols)


class _Pending(NamedTuple):
    """A dispatched batch: device arrays still being computed, and how to slice them."""

    outputs: tuple  # logits (B, k, Hp, Wp), masks, similarity, points (B, k, 2)
    sizes: list  # (H, W) of the real images (the padding is dropped)
    concepts: list  # K of each real image


class Predictor:
    """SEGIC inference with fixed shapes: targets in batches of `batch_size`, concepts padded to 1,
    2, 4, ... up to `concept_bucket`, then to its multiples (`concept_slots`), so a handful of
    compiled programs serve every call; `prefetch` batches are dispatched ahead of the one being
    copied back."""

    def __init__(
        self,
        head: SegicHead,
        encoder: dinov2.Dinov2,
        text_model: clip_text.ClipTextModel,
        tokenizer: clip_text.ClipTokenizer,
        *,
        batch_size: int = 2,
        concept_bucket: int = 4,
        prefetch: int = 1,
    ):
        if batch_size < 1 or concept_bucket < 1 or prefetch < 0:
            raise ValueError(f"batch_size and concept_bucket must be >= 1 and prefetch >= 0, got "
                             f"{batch_size}, {concept_bucket}, {prefetch}")
        self.head, self.encoder, self.text_model, self.tokenizer = head, encoder, text_model, tokenizer
        self.checkpoint: str | None = None  # the directory it was loaded from (from_checkpoint / from_pretrained)
        self.precision = matmul_precision(head.dtype)  # of its programs, the video step's (`VideoPropagator`) too
        # Programs bound to the modules' parameters once: calling an nnx.jit function walks the
        # module graph on every call (it cost more than DINOv2-L's forward pass itself), and even a
        # (graphdef, state) pair costs ~10 ms per call in hashing the state's structure.
        self._encode = _bind(_encode, encoder, self.precision)
        self._decode_rows = _bind(_decode, head, self.precision)
        self.head_graphdef, self.head_state = nnx.split(head)  # for the video step
        self.image_size = head.cfg.image_size
        self.batch_size = batch_size
        self.concept_bucket = concept_bucket
        self.prefetch = prefetch
        self._text_cache: dict[str, np.ndarray] = {}

    @classmethod
    def from_pretrained(cls, name: str = "segic_dinov2_l_80kx12e", *, cache_dir: str | None = None,
                        image_size: int | None = None, dtype: str = "bfloat16", **kwargs) -> "Predictor":
        """The released SEGIC (`segic_dinov2_l_80kx12e` or `segic_dinov2_l_160kx12e`): its head from
        Hugging Face `menglc/SEGIC`, the hub DINOv2-L/14 and `openai/clip-vit-large-patch14`, fetched
        and converted once into the cache (`segic_jax.pretrained`), then loaded like `from_checkpoint`.
        Needs PyTorch the first time, to read the .pth files."""
        from segic_jax import pretrained

        path = pretrained.pretrained_dir(name, cache_dir=cache_dir, image_size=image_size)
        return cls.from_checkpoint(path, dtype=dtype, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str, *, dtype: str = "float32", fp8: bool = False, **kwargs) -> "Predictor":
        """Load a directory written by `python -m segic_jax.convert segic` (head/, dinov2/, clip_text/).

        fp8: DINOv2's linear layers in FP8 e4m3 (per-tensor scaling; with dtype bfloat16), for
        Hopper-class GPUs (`dinov2.use_fp8_matmuls`); its effect is in benchmarks/RESULTS.md."""
        predictor = cls(*bundle.load(path, dtype=dtype, fp8=fp8), **kwargs)
        predictor.checkpoint = os.path.abspath(path)
        return predictor

    # --- encoders -------------------------------------------------------------------------

    def _encode_fitted(self, fitted: _Fitted) -> jax.Array:
        """One batch of `_fit_inputs` -> patch features (B, h, w, C) on the device."""
        pixels = _fit(fitted.canvas, *fitted.taps)
        return self._encode(pixels, jnp.asarray(fitted.valid_hw))

    def _padded(self, items: list) -> list:
        """A short batch padded with copies of its last item, so that it reuses the compiled programs."""
        return items + [items[-1]] * (-len(items) % self.batch_size)

    def encode_images(self, images: Sequence[np.ndarray]) -> tuple[jax.Array, np.ndarray]:
        """uint8 (H, W, 3) images -> patch features (N', h, w, C) and valid extents (N', 2) at the
        model size, N' = N rounded up to whole batches (callers keep the first N)."""
        feats, valid = [], []
        for chunk in _chunks(images, self.batch_size):
            fitted = _fit_inputs(self._padded(chunk), self.image_size)
            feats.append(self._encode_fitted(fitted))
            valid.append(fitted.valid_hw)
        return jnp.concatenate(feats), np.concatenate(valid)

    def text_features(self, prompts: Sequence[str]) -> np.ndarray:
        """(N, Ct) pooled CLIP features of the prompts (cached per prompt)."""
        missing = sorted({p for p in prompts if p not in self._text_cache})
        if missing:
            self._text_cache.update(zip(missing, encode_prompts(self.text_model, self.tokenizer, missing)))
        return np.stack([self._text_cache[p] for p in prompts])

    # --- public API -----------------------------------------------------------------------

    def encode_context(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        class_names: Sequence[str] | None = None,
        instance_prompt: bool = False,
        binarize: bool = True,
    ) -> Context:
        """images: N uint8 (H, W, 3); masks: N bool arrays (K, H, W) (or (H, W) for K = 1), the same
        K concepts in every image. class_names (K,) gives each concept the prompt
        "a photo of a {name}"; instance_prompt uses "please segment the instances" for all;
        otherwise the prompt is empty, as in the reference's custom evaluation.

        The resized masks are binarised at the model size before the feature-grid resize, as the
        reference's one-shot path does (`binarize=True`); its custom-evaluation and semantic paths
        resize the soft masks directly (`binarize=False`). The two differ only along mask edges."""
        if len(images) != len(masks) or not images:
            raise ValueError(f"need one mask array per reference image, got {len(images)} images and {len(masks)}")
        masks = _mask_stacks(images, masks)
        k = masks[0].shape[0]
        if any(m.shape[0] != k for m in masks):
            i = next(i for i, m in enumerate(masks) if m.shape[0] != k)
            raise ValueError(f"reference {i} has {masks[i].shape[0]} masks, reference 0 has {k}: give each image one mask per concept")
        area = np.stack([m.reshape(k, -1).sum(1) for m in masks]).sum(0)
        if (area == 0).any():
            raise ValueError(f"concepts {np.flatnonzero(area == 0).tolist()} are empty in every reference mask")
        prompts = _prompts(k, class_names, instance_prompt)

        kp = concept_slots(k, self.concept_bucket)
        sums = areas = 0.0
        for chunk in _chunks(range(len(images)), self.batch_size):
            fitted = _fit_inputs(self._padded([images[i] for i in chunk]), self.image_size)
            feats = self._encode_fitted(fitted)
            canvas = _mask_canvas([masks[i] for i in chunk], kp, self.batch_size)  # padding rows: no mask
            s, a = _mask_sums(feats, canvas, *fitted.taps, binarize)
            sums, areas = sums + s.sum(0), areas + a.sum(0)
        features = (sums / jnp.maximum(areas, 1.0)[:, None])[:k]
        return Context(features=features, text=jnp.asarray(self.text_features(prompts)), prompts=tuple(prompts))

    def segment(self, targets: Sequence[np.ndarray], context: Context) -> list[Prediction]:
        """Segment every concept of `context` in each target image (uint8 (H, W, 3), any size)."""
        return list(self.segment_iter(targets, context))

    def segment_iter(self, targets: Iterable[np.ndarray], context: Context) -> Iterator[Prediction]:
        """`segment` over any iterable of targets (a generator reading files, a video), yielding each
        prediction in order while later batches are already on the device."""
        k = context.size
        kp = concept_slots(k, self.concept_bucket)
        rows = _context_rows(context.features, context.text, kp, self.batch_size)

        def dispatch(batch: list) -> _Pending:
            fitted = _fit_inputs(self._padded(batch), self.image_size)
            return self._decode(fitted, *rows, k, [k] * len(batch))

        return self._pipelined(_chunks(targets, self.batch_size), dispatch)

    def segment_episodes(self, episodes: Iterable[Episode], binarize: bool = True) -> Iterator[Prediction]:
        """One-shot episodes, each with its own reference, batched: `batch_size` references and
        `batch_size` targets per encoder call, one decoder call for the batch. Equals
        `segment([e.target], encode_context([e.reference], [e.masks], ...))` episode by episode."""
        s = self.image_size

        def dispatch(batch: list) -> _Pending:
            padded = self._padded(batch)  # (index, episode) pairs, the last repeated
            stacks = [_mask_stacks([e.reference], [e.masks])[0] for _, e in padded]
            for (n, _), m in zip(batch, stacks):
                if not m.reshape(m.shape[0], -1).any(1).all():
                    raise ValueError(f"episode {n} has an empty reference mask")
            ks = [m.shape[0] for m in stacks]
            kp = concept_slots(max(ks), self.concept_bucket)
            refs = _fit_inputs([e.reference for _, e in padded], s)
            canvas = _mask_canvas(stacks, kp, self.batch_size)
            ref_sums, ref_areas = _mask_sums(self._encode_fitted(refs), canvas, *refs.taps, binarize)
            text = np.zeros((len(padded), kp, self._text_width), np.float32)
            for i, ((_, e), k) in enumerate(zip(padded, ks)):
                text[i, :k] = self.text_features(_prompts(k, e.class_names, e.instance_prompt))
            valid = np.arange(kp)[None] < np.asarray(ks)[:, None]
            targets = _fit_inputs([e.target for _, e in padded], s)
            ref_feats = ref_sums / jnp.maximum(ref_areas, 1.0)[..., None]
            return self._decode(targets, ref_feats, valid, text, max(ks), ks[: len(batch)])

        return self._pipelined(_chunks(enumerate(episodes), self.batch_size), dispatch)

    # --- the pipeline -----------------------------------------------------------------------

    @property
    def _text_width(self) -> int:
        return self.text_model.cfg.width

    def _decode(self, fitted: _Fitted, ref_feats, valid, text, k: int, concepts: list) -> _Pending:
        """Dispatch encoder, decoder and output resize of one batch; nothing waits for the device."""
        feats = self._encode_fitted(fitted)
        logits, sim, points = self._decode_rows(feats, ref_feats, valid, text)
        scale = np.asarray([(w / v[1], h / v[0]) for (h, w), v in zip(fitted.sizes, fitted.valid_hw)], np.float32)
        outputs = _to_original(k, logits, sim, points, *_output_taps(fitted), scale)
        for x in outputs:
            x.copy_to_host_async()
        return _Pending(outputs, fitted.sizes[: len(concepts)], concepts)

    def _collect(self, pending: _Pending) -> list[Prediction]:
        """Copy a dispatched batch back and cut each image's (K, H, W) out of the padded bucket."""
        logits, masks, sim, points = (np.asarray(x) for x in pending.outputs)
        return [
            Prediction(
                logits=np.ascontiguousarray(logits[i, :k, :h, :w]),
                masks=np.ascontiguousarray(masks[i, :k, :h, :w]),
                similarity=np.ascontiguousarray(sim[i, :k, :h, :w]),
                points=points[i, :k],
            )
            for i, ((h, w), k) in enumerate(zip(pending.sizes, pending.concepts))
        ]

    def _pipelined(self, batches: Iterable, dispatch) -> Iterator[Prediction]:
        in_flight: collections.deque[_Pending] = collections.deque()
        for batch in batches:
            in_flight.append(dispatch(batch))
            if len(in_flight) > self.prefetch:
                yield from self._collect(in_flight.popleft())
        while in_flight:
            yield from self._collect(in_flight.popleft())


def _mask_stacks(images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Masks as (K, H, W) bool stacks, each checked against its image."""
    stacks = [np.asarray(m, bool)[None] if np.ndim(m) == 2 else np.asarray(m, bool) for m in masks]
    for i, (image, m) in enumerate(zip(images, stacks)):
        if m.ndim != 3 or m.shape[1:] != image.shape[:2]:
            raise ValueError(f"reference {i}: masks are {m.shape[-2:]} but the image is {image.shape[:2]}")
    return stacks


def _mask_canvas(stacks: Sequence[np.ndarray], kp: int, rows: int) -> np.ndarray:
    """(rows, Hc, Wc, kp) uint8 0/255: (K, H, W) masks as channels, laid out as `_canvas` lays out
    their images (the reference resizes 0-255 values)."""
    return _canvas([np.moveaxis(m, 0, -1).astype(np.uint8) * np.uint8(255) for m in stacks], kp, rows)


def _prompts(k: int, class_names: Sequence[str] | None, instance_prompt: bool) -> list[str]:
    if instance_prompt:
        return [INSTANCE_PROMPT] * k
    if class_names is not None:
        if len(class_names) != k:
            raise ValueError(f"{len(class_names)} class names for {k} concepts")
        return [class_prompt(n) for n in class_names]
    return [""] * k


def _resize_image(image: jax.Array, taps) -> jax.Array:
    """(H, W, ...) float32 -> (P, Q, ...) with one image's row and column taps."""
    row_index, row_weight, col_index, col_weight = taps
    return resample_taps(resample_taps(image, row_index, row_weight, 0), col_index, col_weight, 1)


@jax.jit
def _fit(canvas, row_index, row_weight, col_index, col_weight) -> jax.Array:
    """(B, Hc, Wc, C) uint8 -> (B, S, S, C) float32: `data.images.fit_to_model` on the device."""
    return jax.vmap(_resize_image)(canvas.astype(jnp.float32), (row_index, row_weight, col_index, col_weight))


@functools.partial(jax.jit, static_argnums=(6,))
def _mask_sums(feats, canvas, row_index, row_weight, col_index, col_weight, binarize: bool):
    """Masked feature sums (B, Kp, C) and areas (B, Kp) of 0/255 mask canvases at the model size."""
    fitted = jnp.moveaxis(_fit(canvas, row_index, row_weight, col_index, col_weight), -1, 1)  # (B, Kp, S, S)
    fitted = (fitted > 127.5).astype(jnp.float32) if binarize else fitted / 255.0
    return masked_feature_sums(feats, fitted)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _context_rows(features, text, kp: int, b: int):
    """A context's (K, C) features and (K, Ct) text as the decoder's (B, Kp, ...) rows and validity."""
    k = features.shape[0]
    pad = lambda x: jnp.broadcast_to(jnp.zeros((kp, x.shape[1]), jnp.float32).at[:k].set(x), (b, kp, x.shape[1]))
    return pad(features), jnp.broadcast_to(jnp.arange(kp) < k, (b, kp)), pad(text)


def _bind(fn, module: nnx.Module, precision: str):
    """`fn(module, *args)` jitted, with the module's parameters flattened once: a call passes only a
    flat list of arrays. Modules of the same structure (a new predictor over the same models, the
    trainer's head at each evaluation) share the compiled program."""
    graphdef, state = nnx.split(module)
    leaves, treedef = jax.tree.flatten(state)
    jitted = _program(fn, graphdef, treedef, precision)
    return lambda *args: jitted(leaves, *args)


@functools.lru_cache(maxsize=64)
def _program(fn, graphdef, treedef, precision: str):
    def program(leaves, *args):
        with jax.default_matmul_precision(precision):
            return fn(nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves)), *args)

    program.__name__ = fn.__name__
    return jax.jit(program)


def _encode(encoder: dinov2.Dinov2, pixels: jax.Array, valid_hw: jax.Array) -> jax.Array:
    return dinov2.patch_features(encoder, pixels, valid_hw)


def _decode(head: SegicHead, feats, ref_feats, valid, text):
    out = head.decode(feats, ref_feats, valid, text)
    return out.logits, out.similarity, out.points


@functools.partial(jax.jit, static_argnums=(0,))
def _to_original(k: int, logits, sim, points, row_index, row_weight, col_index, col_weight, scale):
    """Model-frame outputs of the first k concepts -> original resolution (padded bucket), masks
    thresholded at 0, points in original pixels (pixel centres scaled)."""
    taps = (row_index, row_weight, col_index, col_weight)
    resize = jax.vmap(lambda x, t: _resize_image(jnp.moveaxis(x[:k], 0, -1), t))
    logits_out = jnp.moveaxis(resize(logits, taps), -1, 1)
    sim_out = jnp.moveaxis(resize(sim, taps), -1, 1)
    return logits_out, logits_out > 0, sim_out, (points[:, :k] + 0.5) * scale[:, None] - 0.5
