"""One SEGIC training step (docs/original.md 1, 2.3, 2.4, 3): frozen encoders, two
decoding passes with reverse context, point-sampled loss, AdamW on the head only.

The encoders run without gradients (in their own compute dtype, bf16 for speed); text features
come from a table computed once for every prompt the episodes can use (`text_table`), so CLIP
does not run in the step. Per target, with probability 0.5 each, the ground-truth box is given as
a prompt and the cross-instance tokens are used. Pass B swaps roles: the reference image becomes
the target, and the pass-A prediction (> 0) on the original target becomes the reference mask.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from segic_jax.models.dinov2 import patch_features
from segic_jax.models.segic import SegicHead
from segic_jax.ops.boxes import mask_boxes
from segic_jax.ops.correspondence import masked_mean_features
from segic_jax.ops.resize import resize
from segic_jax.training import losses

# The single-mask head never reads these outputs, and the dense prompt is always given, so SAM's
# "no mask" embedding is never used: they get no gradient in the reference and AdamW leaves them
# untouched there (no weight decay either); the same here.
NO_GRADIENT = ("mask_decoder.output_hypernetworks_mlps.1", "mask_decoder.output_hypernetworks_mlps.2",
               "mask_decoder.output_hypernetworks_mlps.3", "mask_decoder.iou_prediction_head",
               "prompt_encoder.no_mask_embed")


def optimizer(learning_rate, weight_decay: float = 1e-4) -> optax.GradientTransformation:
    """AdamW (betas 0.9/0.999, eps 1e-8) over every trainable parameter except NO_GRADIENT ones."""
    adamw = optax.adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)

    def labels(params):
        def label(path, _):
            name = ".".join(str(getattr(k, "key", k)) for k in path)
            return "fixed" if name.startswith(NO_GRADIENT) else "trained"

        return jax.tree_util.tree_map_with_path(label, params)

    return optax.multi_transform({"trained": adamw, "fixed": optax.set_to_zero()}, labels)


def step_decay_schedule(base: float, steps_per_epoch: int, drop_epoch: int = 10, factor: float = 0.1):
    """The reference's StepLR(step_size=10, gamma=0.1), stepped per epoch."""
    return optax.piecewise_constant_schedule(base, {steps_per_epoch * drop_epoch: factor})


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """What the reference fixes in its training forward (docs/original.md 2.4, 3); static under jit."""

    box_prob: float = 0.5  # per target, give the ground-truth box as a prompt
    cross_prob: float = 0.5  # per target, use the cross-instance tokens
    reverse_context: bool = True  # second pass with target and reference swapped (3.3)
    num_points: int = losses.NUM_POINTS
    oversample: float = losses.OVERSAMPLE
    importance: float = losses.IMPORTANCE
    remat_rows: int = 0  # > 0: decode in chunks of this many rows, recomputed in the backward pass
    # episodes whose masks are counted together to normalise the loss (the reference: each GPU's
    # 4; the groups' losses are then averaged, as DDP averages the GPUs' gradients); 0: the batch
    loss_group: int = 0
    # matmul precision of the step ("highest": PyTorch's float32, no TF32 on GPUs; "default": XLA's)
    precision: str = "default"


class StepOutput(NamedTuple):
    loss: jax.Array  # what is minimised: the mean of the passes' losses
    loss_mask: jax.Array  # pass A (the forward context) cross-entropy
    loss_dice: jax.Array  # pass A dice
    loss_reverse: jax.Array  # pass B total (0 without reverse context)
    iou: jax.Array  # pass A mask IoU at the model size, mean over valid masks
    masks: jax.Array  # number of valid masks in the batch (the IoU's weight)


def _features(encoder, images, hw):
    return jax.lax.stop_gradient(patch_features(encoder, images, hw))


def _pass(head: SegicHead, options: StepOptions, key, target_feats, ref_inst, valid, text, target_masks):
    b = target_feats.shape[0]
    k_box, k_cross, k_loss = jax.random.split(key, 3)
    use_box = jax.random.uniform(k_box, (b,)) < options.box_prob
    cross = jax.random.uniform(k_cross, (b,)) < options.cross_prob
    out = head.decode(target_feats, ref_inst, valid, text, mask_boxes(target_masks), use_box, cross, options.remat_rows)
    n = out.low_res.shape[0] * out.low_res.shape[1]
    if options.loss_group and b % options.loss_group:
        raise ValueError(f"a batch of {b} episodes does not split into loss groups of {options.loss_group}")
    loss = losses.mask_loss(
        k_loss, out.low_res.reshape((n,) + out.low_res.shape[2:]),
        target_masks.reshape((n,) + target_masks.shape[2:]), valid.reshape(n),
        groups=b // options.loss_group if options.loss_group else 1,
        num_points=options.num_points, oversample=options.oversample, importance=options.importance,
    )
    return loss, out.low_res


def _mask_iou(low_res, masks, valid):
    """Mean IoU over valid masks of (low_res upsampled > 0) against the (B, K, S, S) masks."""
    size = masks.shape[-1]
    pred = resize(jax.lax.stop_gradient(low_res), size=(size, size), axes=(-2, -1)) > 0
    inter = (pred & masks).sum((-2, -1))
    union = (pred | masks).sum((-2, -1))
    iou = jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)
    count = valid.sum()
    return (iou * valid).sum() / jnp.maximum(count, 1), pred, count


def loss_fn(head: SegicHead, encoder, text_table, batch: dict, key, options: StepOptions = StepOptions()) -> StepOutput:
    """batch: an episode batch (segic_jax.data.episodes) plus `target_prompt` / `reference_prompt`
    (B,) int indices into `text_table` (V, Ct)."""
    t_feats = _features(encoder, batch["target_image"], batch["target_hw"])
    r_feats = _features(encoder, batch["reference_image"], batch["reference_hw"])
    valid = batch["valid"]
    k = valid.shape[1]
    text_a = jnp.repeat(text_table[batch["target_prompt"]][:, None], k, axis=1)
    text_b = jnp.repeat(text_table[batch["reference_prompt"]][:, None], k, axis=1)
    key_a, key_b = jax.random.split(key)

    ref_inst = masked_mean_features(r_feats, batch["reference_masks"])
    loss_a, low_res = _pass(head, options, key_a, t_feats, ref_inst, valid, text_a, batch["target_masks"])
    iou, predicted, count = _mask_iou(low_res, batch["target_masks"], valid)
    if not options.reverse_context:
        return StepOutput(loss=loss_a.total, loss_mask=loss_a.loss_mask, loss_dice=loss_a.loss_dice,
                          loss_reverse=jnp.zeros(()), iou=iou, masks=count)
    pseudo_inst = masked_mean_features(t_feats, predicted)
    loss_b, _ = _pass(head, options, key_b, r_feats, pseudo_inst, valid, text_b, batch["reference_masks"])
    return StepOutput(
        loss=(loss_a.total + loss_b.total) / 2, loss_mask=loss_a.loss_mask, loss_dice=loss_a.loss_dice,
        loss_reverse=loss_b.total, iou=iou, masks=count,
    )


def train_step(head_graph, encoder_graph, tx: optax.GradientTransformation, params, rest, opt_state,
               encoder_state, text_table, batch, key, options: StepOptions = StepOptions()):
    """One update of the head's trainable parameters. Pure: (params, opt_state) in and out, so
    jit can donate them. `rest` holds the head's non-trained variables (the PE buffer)."""
    encoder = nnx.merge(encoder_graph, encoder_state)

    def objective(p):
        out = loss_fn(nnx.merge(head_graph, p, rest), encoder, text_table, batch, key, options)
        return out.loss, out

    with jax.default_matmul_precision(options.precision):
        (_, out), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, out
