"""Converted-checkpoint inference: encode a context once, segment many targets.

    predictor = Predictor.from_checkpoint("ckpt/segic")           # from `python -m segic_jax.convert segic`
    context = predictor.encode_context([ref_image], [ref_masks])  # ref_masks (K, H, W): K things to find
    for pred in predictor.segment([target_a, target_b], context):
        pred.masks      # (K, H, W) bool at the target's own resolution; also .logits, .similarity, .points

How references are combined. A context holds K "concepts". Each reference image gives one mask per
concept (an empty mask when the concept is absent from that image); a concept's feature is the
masked mean of the DINOv2 features over all of its masks in all reference images (sums of features
over sums of areas), which for a single reference is exactly SEGIC's instance feature. With one
reference image and K masks this is SEGIC's instance mode (K instances, decoded jointly with
cross-instance tokens); with one reference per class and class names it is its semantic mode (all
classes decoded jointly, each with its own "a photo of a {class}" prompt); several reference images
for the same concepts are k-shot.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from segic_jax import checkpoints
from segic_jax.data.images import fit_to_model
from segic_jax.models import clip_text, dinov2
from segic_jax.models.segic import SegicHead
from segic_jax.ops.correspondence import masked_feature_sums
from segic_jax.ops.resize import resize

INSTANCE_PROMPT = "please segment the instances"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str, field: str = "dtype"):
    """The jnp dtype called `name` (see DTYPES); an unknown name is a ValueError naming `field`."""
    if name not in DTYPES:
        raise ValueError(f"{field} must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def class_prompt(name: str) -> str:
    """SEGIC's meta prompt for a class name ("" for no name)."""
    return f"a photo of a {name}" if name else ""


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


def check_checkpoint(path: str) -> None:
    """Raise FileNotFoundError unless `path` looks like a converted SEGIC checkpoint directory."""
    for part in ("head", "dinov2", "clip_text"):
        if not os.path.isdir(os.path.join(path, part)):
            raise FileNotFoundError(
                f"{path} is not a converted SEGIC checkpoint: it has no {part}/ "
                "(write one with `python -m segic_jax.convert segic ...`)"
            )


def _pad_to(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


class Predictor:
    """SEGIC inference with fixed shapes: targets in batches of `batch_size`, concepts padded to a
    multiple of `concept_bucket`, so a handful of compiled programs serve every call."""

    def __init__(
        self,
        head: SegicHead,
        encoder: dinov2.Dinov2,
        text_model: clip_text.ClipTextModel,
        tokenizer: clip_text.ClipTokenizer,
        *,
        batch_size: int = 2,
        concept_bucket: int = 4,
    ):
        self.head, self.encoder, self.text_model, self.tokenizer = head, encoder, text_model, tokenizer
        # Split once: calling an nnx.jit function walks the module graph on every call, which
        # cost more than DINOv2-L's forward pass itself; a (graphdef, state) pair does not.
        self._head = nnx.split(head)
        self._encoder = nnx.split(encoder)
        self._text_model = nnx.split(text_model)
        # float32 means PyTorch's float32: full-precision matmuls (XLA uses TF32 on GPUs by default)
        self._precision = "highest" if head.dtype == jnp.float32 else "default"
        self.image_size = head.cfg.image_size
        self.batch_size = batch_size
        self.concept_bucket = concept_bucket
        self._text_cache: dict[str, np.ndarray] = {}

    @classmethod
    def from_checkpoint(cls, path: str, *, dtype: str = "float32", **kwargs) -> "Predictor":
        """Load a directory written by `python -m segic_jax.convert segic` (head/, dinov2/, clip_text/)."""
        compute = compute_dtype(dtype)
        check_checkpoint(path)
        head = checkpoints.load_model(os.path.join(path, "head"), "segic_head", dtype=compute)
        encoder = dinov2.load(os.path.join(path, "dinov2"), dtype=compute)
        text_model = clip_text.load(os.path.join(path, "clip_text"), dtype=compute)
        tokenizer = clip_text.ClipTokenizer.from_folder(os.path.join(path, "clip_text"))
        return cls(head, encoder, text_model, tokenizer, **kwargs)

    # --- encoders -------------------------------------------------------------------------

    def _prepare(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        batch, valid = [], []
        for image in images:
            fitted, hw = fit_to_model(image, self.image_size)
            batch.append(fitted)
            valid.append(hw)
        return np.stack(batch), np.asarray(valid, np.int32)

    def _features(self, images: np.ndarray, valid_hw: np.ndarray) -> jax.Array:
        """(N, S, S, 3) float pixels -> patch features (N', h, w, C), N' = N rounded up to whole
        batches: the last batch is padded with copies of its last image so that it reuses the
        compiled program, and the padding is returned too (callers keep the first N)."""
        pad = -len(images) % self.batch_size
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, 0)])
            valid_hw = np.concatenate([valid_hw, np.repeat(valid_hw[-1:], pad, 0)])
        graphdef, state = self._encoder
        return jnp.concatenate([
            _encode(graphdef, self._precision, state, jnp.asarray(images[i : i + self.batch_size]),
                    jnp.asarray(valid_hw[i : i + self.batch_size]))
            for i in range(0, len(images), self.batch_size)
        ])

    def text_features(self, prompts: Sequence[str]) -> np.ndarray:
        """(N, Ct) pooled CLIP features of the prompts (cached per prompt)."""
        missing = sorted({p for p in prompts if p not in self._text_cache})
        if missing:
            pooled = _encode_text(self._text_model[0], self._precision, self._text_model[1], jnp.asarray(self.tokenizer(missing)))
            self._text_cache.update(zip(missing, np.asarray(pooled)))
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
        masks = [np.asarray(m)[None] if np.ndim(m) == 2 else np.asarray(m) for m in masks]
        k = masks[0].shape[0]
        for i, (image, m) in enumerate(zip(images, masks)):
            if m.shape[0] != k:
                raise ValueError(f"reference {i} has {m.shape[0]} masks, reference 0 has {k}: give each image one mask per concept")
            if m.shape[1:] != image.shape[:2]:
                raise ValueError(f"reference {i}: masks are {m.shape[1:]} but the image is {image.shape[:2]}")
        area = np.stack([m.reshape(k, -1).sum(1) for m in masks]).sum(0)
        if (area == 0).any():
            raise ValueError(f"concepts {np.flatnonzero(area == 0).tolist()} are empty in every reference mask")
        if class_names is not None and len(class_names) != k:
            raise ValueError(f"{len(class_names)} class names for {k} concepts")

        pixels, valid_hw = self._prepare(images)
        feats = self._features(pixels, valid_hw)[: len(images)]
        # The reference resizes masks as 0-255 floats and binarises them at the model size.
        fitted = np.stack([np.stack([fit_to_model(mm.astype(np.float32) * 255, self.image_size)[0] for mm in m]) for m in masks])
        fitted = (fitted > 127.5).astype(np.float32) if binarize else fitted / 255.0  # (N, K, S, S)
        sums, areas = _feature_sums(feats, jnp.asarray(fitted))
        features = sums.sum(0) / jnp.maximum(areas.sum(0), 1.0)[:, None]

        if instance_prompt:
            prompts = [INSTANCE_PROMPT] * k
        elif class_names is not None:
            prompts = [class_prompt(n) for n in class_names]
        else:
            prompts = [""] * k
        return Context(features=features, text=jnp.asarray(self.text_features(prompts)), prompts=tuple(prompts))

    def segment(self, targets: Sequence[np.ndarray], context: Context) -> list[Prediction]:
        """Segment every concept of `context` in each target image (uint8 (H, W, 3), any size)."""
        k = context.size
        kp = _pad_to(k, self.concept_bucket)
        feats_ctx = jnp.zeros((kp, context.features.shape[1]), jnp.float32).at[:k].set(context.features)
        text_ctx = jnp.zeros((kp, context.text.shape[1]), jnp.float32).at[:k].set(context.text)
        valid = jnp.arange(kp) < k
        results = []
        for start in range(0, len(targets), self.batch_size):
            batch = list(targets[start : start + self.batch_size])
            pixels, valid_hw = self._prepare(batch)
            feats = self._features(pixels, valid_hw)  # a whole batch, padded if short
            b = feats.shape[0]
            out = _decode(
                self._head[0],
                self._precision,
                self._head[1],
                feats,
                jnp.broadcast_to(feats_ctx, (b, kp, feats_ctx.shape[1])),
                jnp.broadcast_to(valid, (b, kp)),
                jnp.broadcast_to(text_ctx, (b, kp, text_ctx.shape[1])),
            )
            logits, sim, points = (np.asarray(x) for x in out)
            for i, image in enumerate(batch):
                results.append(self._to_original(logits[i, :k], sim[i, :k], points[i, :k], valid_hw[i], image.shape[:2]))
        return results

    def _to_original(self, logits, sim, points, valid_hw, hw) -> Prediction:
        """Crop the model frame to the valid extent and resize to the original image size."""
        h, w = valid_hw
        logits = resize(np.ascontiguousarray(logits[:, :h, :w]), size=hw, axes=(-2, -1))
        sim = resize(np.ascontiguousarray(sim[:, :h, :w]), size=hw, axes=(-2, -1))
        scale = np.array([hw[1] / w, hw[0] / h], np.float32)
        return Prediction(logits=logits, masks=logits > 0, similarity=sim, points=(points + 0.5) * scale - 0.5)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _encode(graphdef, precision, state, pixels: jax.Array, valid_hw: jax.Array) -> jax.Array:
    with jax.default_matmul_precision(precision):
        encoder = nnx.merge(graphdef, state)
        return dinov2.patch_features(encoder, pixels, valid_hw)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _encode_text(graphdef, precision, state, ids: jax.Array) -> jax.Array:
    with jax.default_matmul_precision(precision):
        return nnx.merge(graphdef, state)(ids).pooled


_feature_sums = jax.jit(masked_feature_sums)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _decode(graphdef, precision, state, feats, ref_feats, valid, text):
    with jax.default_matmul_precision(precision):
        out = nnx.merge(graphdef, state).decode(feats, ref_feats, valid, text)
    return out.logits, out.similarity, out.points
