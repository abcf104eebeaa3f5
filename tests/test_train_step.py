"""The training step on a tiny random model and a fixed synthetic batch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from segic_jax.models import dinov2
from segic_jax.models.segic import SegicConfig, SegicHead
from segic_jax.training import step


def _batch(rng, b=2, k=3, size=112):
    images = rng.uniform(0, 255, (2, b, size, size, 3)).astype(np.float32)
    masks = np.zeros((2, b, k, size, size), bool)
    for v in range(2):
        for i in range(b):
            for j in range(k):
                y, x = rng.integers(0, size - 40, 2)
                masks[v, i, j, y : y + 40, x : x + 30] = True
                images[v, i, y : y + 40, x : x + 30] = 40.0 * (j + 1)  # each instance its own colour
    valid = np.array([[True, True, True], [True, True, False]])
    return {
        "target_image": images[0], "reference_image": images[1], "target_masks": masks[0], "reference_masks": masks[1],
        "valid": valid, "target_hw": np.full((b, 2), size, np.int32), "reference_hw": np.full((b, 2), size, np.int32),
        "target_prompt": np.array([0, 1]), "reference_prompt": np.array([0, 1]),
    }


def _setup():
    encoder = dinov2.Dinov2(dinov2.dinov2_config("vits14", depth=2, embed_dim=64, num_heads=2, pos_grid=8), rngs=nnx.Rngs(0))
    head = SegicHead(SegicConfig(vision_dim=64, text_dim=16, image_size=112), rngs=nnx.Rngs(1))
    return encoder, head


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(rng):
    encoder, head = _setup()
    head_graph, params, rest = nnx.split(head, nnx.Param, ...)
    enc_graph, enc_state = nnx.split(encoder)
    tx = step.optimizer(3e-4)
    opt_state = tx.init(params)
    text = jnp.asarray(rng.standard_normal((2, 16)), jnp.float32)
    batch = {k: jnp.asarray(v) for k, v in _batch(rng).items()}
    train = jax.jit(functools.partial(step.train_step, head_graph, enc_graph, tx), donate_argnums=(0, 2))
    key = jax.random.key(0)
    losses = []
    for _ in range(12):
        params, opt_state, out = train(params, rest, opt_state, enc_state, text, batch, key)  # same key: same points
        losses.append(float(out.loss))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def test_untrained_outputs_get_no_update_and_no_weight_decay(rng):
    encoder, head = _setup()
    head_graph, params, rest = nnx.split(head, nnx.Param, ...)
    enc_graph, enc_state = nnx.split(encoder)
    tx = step.optimizer(1e-2, weight_decay=0.5)
    opt_state = tx.init(params)
    text = jnp.asarray(rng.standard_normal((2, 16)), jnp.float32)
    batch = {k: jnp.asarray(v) for k, v in _batch(rng).items()}
    train = jax.jit(functools.partial(step.train_step, head_graph, enc_graph, tx))
    new, _, _ = train(params, rest, opt_state, enc_state, text, batch, jax.random.key(0))
    before, after = nnx.to_pure_dict(params), nnx.to_pure_dict(new)
    md_b, md_a = before["mask_decoder"], after["mask_decoder"]
    for i in (1, 2, 3):
        np.testing.assert_array_equal(md_a["output_hypernetworks_mlps"][i]["layers"][0]["kernel"],
                                      md_b["output_hypernetworks_mlps"][i]["layers"][0]["kernel"])
    np.testing.assert_array_equal(md_a["iou_prediction_head"]["layers"][2]["bias"], md_b["iou_prediction_head"]["layers"][2]["bias"])
    # SAM's "no mask" embedding is never used (the dense prompt is always given): not decayed either
    np.testing.assert_array_equal(after["prompt_encoder"]["no_mask_embed"]["embedding"],
                                  before["prompt_encoder"]["no_mask_embed"]["embedding"])
    # a parameter that is used, with or without a gradient this step, is decayed
    assert not np.array_equal(after["prompt_encoder"]["not_a_point_embed"]["embedding"],
                              before["prompt_encoder"]["not_a_point_embed"]["embedding"])
    assert not np.array_equal(md_a["output_hypernetworks_mlps"][0]["layers"][0]["kernel"],
                              md_b["output_hypernetworks_mlps"][0]["layers"][0]["kernel"])
    # the fixed positional-encoding matrix is not a parameter at all
    assert "positional_encoding_gaussian_matrix" not in str(jax.tree_util.tree_structure(nnx.to_pure_dict(params)))


def test_step_decay_schedule():
    schedule = step.step_decay_schedule(1e-4, steps_per_epoch=100)
    assert np.isclose(float(schedule(999)), 1e-4) and np.isclose(float(schedule(1000)), 1e-5)


def test_remat_gives_the_same_gradients_and_keeps_less_for_the_backward_pass(rng):
    encoder, head = _setup()
    head_graph, params, rest = nnx.split(head, nnx.Param, ...)
    text = jnp.asarray(rng.standard_normal((2, 16)), jnp.float32)
    batch = {k: jnp.asarray(v) for k, v in _batch(rng).items()}

    def objective(remat, p):
        options = step.StepOptions(remat_rows=4 if remat else 0)  # 6 rows: a chunk of 4, one padded
        return step.loss_fn(nnx.merge(head_graph, p, rest), encoder, text, batch, jax.random.key(3), options).loss

    grads = {r: jax.jit(jax.grad(functools.partial(objective, r)))(params) for r in (False, True)}
    # chunks sum the gradients in another order: rounding, on the scale of the largest gradient
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads[False]))
    for a, b in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(grads[False])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6 * scale)

    def residual_bytes(remat):  # what the backward pass holds on to: the leaves of the VJP closure (traced, not run)
        backward = jax.eval_shape(lambda p: jax.vjp(functools.partial(objective, remat), p)[1], params)
        return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(backward))

    assert residual_bytes(True) < 0.5 * residual_bytes(False), (residual_bytes(True), residual_bytes(False))
