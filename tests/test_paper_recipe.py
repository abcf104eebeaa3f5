"""configs/segic.py:paper is the original's training recipe (docs/original.md 1, 3, 4): its
initialisation, loss normalisation, instance count, precision and reference resizing, each compared
with what the original (PyTorch) does and failing on this port's earlier behaviour."""

import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from PIL import Image

from segic_jax import checkpoints
from segic_jax.conversion import segic as segic_conversion
from segic_jax.data import episodes, rle
from segic_jax.models import dinov2
from segic_jax.models.layers import pytorch_default_init
from segic_jax.models.segic import SegicConfig, SegicHead
from segic_jax.training import config_checks, losses, step
from torch_reference import TorchSegicHead, sam_modeling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(variant):
    spec = importlib.util.spec_from_file_location("segic_config", os.path.join(ROOT, "configs", "segic.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def test_paper_config_is_the_original_recipe():
    c = _config("paper")
    assert c.data.max_instances == 19 and c.data.square_reference
    assert c.train.loss_group == 4 and c.train.global_batch_size == 32 and c.train.head_init == "pytorch"
    assert c.dtype == "float32"
    bf16 = _config("paper_bf16")
    assert bf16.dtype == "bfloat16" and {k: v for k, v in bf16.items() if k != "dtype"} == {
        k: v for k, v in c.items() if k != "dtype"}
    config_checks.check(c)
    c.train.global_batch_size = 30
    with pytest.raises(ValueError, match="config.train.global_batch_size 30 is not a multiple of config.train.loss_group 4"):
        config_checks.check(c)


# --- initialisation ----------------------------------------------------------------------------


def _torch_rules(module: torch.nn.Module) -> dict[str, tuple[str, float]]:
    """What PyTorch's default initialisers draw for each tensor of `module`, from torch itself."""
    layer_norm_2d = sam_modeling().common.LayerNorm2d
    rules = {}
    for name, m in module.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(m.weight)
            rules[prefix + "weight"] = rules[prefix + "bias"] = ("uniform", 1 / np.sqrt(fan_in))
        elif isinstance(m, torch.nn.Embedding):
            rules[prefix + "weight"] = ("normal", 1.0)
        elif isinstance(m, (torch.nn.LayerNorm, layer_norm_2d)):
            rules[prefix + "weight"], rules[prefix + "bias"] = ("constant", 1.0), ("constant", 0.0)
    return rules


def _check_drawn_like(name, values, rule):
    kind, scale = rule
    values = np.asarray(values, np.float64)
    if kind == "constant":
        np.testing.assert_array_equal(values, scale, err_msg=name)
    elif kind == "uniform":
        assert np.abs(values).max() <= scale * (1 + 1e-6), name
        assert np.any(values != 0), name
        if values.size >= 64:
            assert np.abs(values).max() >= 0.9 * scale, name
        if values.size >= 1024:
            assert abs(values.std() / (scale / np.sqrt(3)) - 1) < 0.1, name
    else:
        assert abs(values.mean()) < 0.25 and abs(values.std() - scale) < 0.15 * scale, name


def test_head_init_is_pytorchs_default_init(tmp_path):
    reference = TorchSegicHead(randomize=False)  # the original's head as PyTorch initialises it
    state = reference.state_dict()
    rules = _torch_rules(reference)
    # which released tensor each of this port's parameters is: convert tensors filled with their index
    names = list(state)
    path = str(tmp_path / "tagged.pth")
    torch.save({k: torch.full_like(v, float(i)) for i, (k, v) in enumerate(state.items())}, path)
    _, tagged = segic_conversion.convert_head(path, progress=False)
    source = {k: names[int(np.asarray(v).flat[0])] for k, v in tagged.items()}
    # the checks hold for the original's own draws (converted to this port's layout) ...
    torch.save(state, path)
    _, torch_params = segic_conversion.convert_head(path, progress=False)
    for k, v in torch_params.items():
        if source[k] in rules:
            _check_drawn_like(f"torch {source[k]}", v, rules[source[k]])
    # ... and for this port's
    head = pytorch_default_init(SegicHead(SegicConfig(), rngs=nnx.Rngs(0)), jax.random.key(1))
    ours = checkpoints.flatten_params(nnx.to_pure_dict(nnx.state(head, nnx.Param)))
    assert set(ours) <= set(source)
    checked = 0
    for k, v in ours.items():
        assert source[k] in rules, source[k]
        _check_drawn_like(f"{k} ({source[k]})", v, rules[source[k]])
        checked += 1
    assert checked == 147  # every trainable tensor (the 148th, the positional matrix, is a buffer)
    # independent draws: no two tensors start with the same values relative to their scale
    starts = {tuple(np.round(np.asarray(v, np.float64).ravel()[:8] / rules[source[k]][1], 5))
              for k, v in ours.items() if rules[source[k]][0] != "constant" and np.size(v) >= 8}
    assert len(starts) == sum(rules[source[k]][0] != "constant" and np.size(v) >= 8 for k, v in ours.items())


# --- loss normalisation ----------------------------------------------------------------------------


def _original_loss(point_logits, point_labels):
    """The original's loss on one GPU: cross-entropy (mean over points) summed over the GPU's masks
    and divided by their number, plus the mean dice."""
    x, y = torch.tensor(point_logits), torch.tensor(point_labels)
    n = x.shape[0]
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none").mean(1).sum() / n
    p = x.sigmoid()
    dice = (1 - (2 * (p * y).sum(-1) + 1) / (p.sum(-1) + y.sum(-1) + 1)).sum() / n
    return float(ce), float(dice)


def test_loss_is_normalised_per_group_of_four_episodes_as_per_gpu(rng):
    k, p = 3, 50  # 8 episodes of up to 3 masks; the first 4 have one mask each, the last 4 three
    valid = np.zeros((8, k), bool)
    valid[:4, 0] = True
    valid[4:] = True
    logits = rng.normal(0, 2, (8 * k, p)).astype(np.float32)
    labels = rng.uniform(0, 1, (8 * k, p)).astype(np.float32)
    grouped = losses.point_losses(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(valid.reshape(-1)), groups=2)
    # the original: two GPUs of 4 episodes, each normalised by its own masks; DDP averages them
    per_gpu = []
    for g in range(2):
        rows = np.flatnonzero(valid.reshape(-1)[g * 4 * k : (g + 1) * 4 * k]) + g * 4 * k
        per_gpu.append(_original_loss(logits[rows], labels[rows]))
    np.testing.assert_allclose(float(grouped.loss_mask), np.mean([c for c, _ in per_gpu]), rtol=1e-5)
    np.testing.assert_allclose(float(grouped.loss_dice), np.mean([d for _, d in per_gpu]), rtol=1e-5)
    one_count = losses.point_losses(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(valid.reshape(-1)))
    assert abs(float(one_count.loss_mask) - float(grouped.loss_mask)) > 1e-3  # one count over the batch differs


# --- instances per episode -----------------------------------------------------------------------


def test_instance_episodes_draw_up_to_19_instances_as_randint_0_19():
    size, n = 16, 25  # 25 instances that stay visible in any crop
    buf = __import__("io").BytesIO()
    Image.fromarray(np.full((size, size, 3), 90, np.uint8)).save(buf, format="PNG")
    full = rle.from_mask(np.ones((size, size), bool))
    example = {"image": buf.getvalue(), "height": size, "width": size, "image_id": 1,
               "objects": {"rle": [full] * n, "category_id": np.arange(n), "category_name": [b"x"] * n,
                           "iscrowd": np.zeros(n, bool)}}
    sampler = episodes.InstanceSampler([example], size, _config("paper").data.max_instances)
    rng = np.random.default_rng(0)
    counts = np.array([int(sampler.episode(example, rng)["valid"].sum()) for _ in range(2000)])
    # the original: m = randint(0, 19), m = 0 falling back to one instance: 1 with p 2/20, 2..19 with p 1/20
    assert counts.min() == 1 and counts.max() == 19
    assert abs(np.mean(counts == 1) - 0.1) < 0.025 and abs(np.mean(counts == 19) - 0.05) < 0.02


# --- precision ------------------------------------------------------------------------------------


def _dot_precisions(precision):
    encoder = dinov2.Dinov2(dinov2.dinov2_config("vits14", depth=1, embed_dim=32, num_heads=2, pos_grid=4), rngs=nnx.Rngs(0))
    head = SegicHead(SegicConfig(vision_dim=32, text_dim=8, image_size=56), rngs=nnx.Rngs(1))
    head_graph, params, rest = nnx.split(head, nnx.Param, ...)
    enc_graph, enc_state = nnx.split(encoder)
    tx = step.optimizer(1e-4)
    b, k, s = 2, 2, 56
    batch = {"target_image": jnp.zeros((b, s, s, 3)), "reference_image": jnp.zeros((b, s, s, 3)),
             "target_masks": jnp.ones((b, k, s, s), bool), "reference_masks": jnp.ones((b, k, s, s), bool),
             "valid": jnp.ones((b, k), bool), "target_hw": jnp.full((b, 2), s), "reference_hw": jnp.full((b, 2), s),
             "target_prompt": jnp.zeros(b, int), "reference_prompt": jnp.zeros(b, int)}
    options = step.StepOptions(num_points=16, precision=precision, loss_group=1)
    fn = functools.partial(step.train_step, head_graph, enc_graph, tx, options=options)
    jaxpr = jax.make_jaxpr(fn)(params, rest, tx.init(params), enc_state, jnp.zeros((1, 8)), batch, jax.random.key(0))
    found = []

    def walk(jx):  # into every sub-program: pjit, remat, scan, custom_vjp, and cond's branches (a tuple)
        for eqn in jx.eqns:
            if eqn.primitive.name == "dot_general":
                found.append(eqn.params["precision"])
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
                    if hasattr(sub, "eqns"):
                        walk(sub)

    walk(jaxpr.jaxpr)
    return found


def test_float32_steps_use_full_precision_matmuls_as_pytorch():
    highest = jax.lax.Precision.HIGHEST
    full = _dot_precisions("highest")
    assert len(full) > 20
    assert all(p is not None and all(x == highest for x in p) for p in full)
    default = _dot_precisions("default")  # bfloat16 encoders: XLA's default (TF32 on GPUs)
    assert any(p is None or any(x != highest for x in p) for p in default)


# --- semantic references ------------------------------------------------------------------------------


def test_paper_semantic_references_are_resized_to_a_square():
    """The original resizes a semantic reference to s x s whatever its aspect ratio (docs/original.md 4.2)."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (20, 60, 3)).astype(np.float32)
    mask = np.zeros((20, 60), np.float32)
    mask[:, :30] = 255
    c = _config("paper")
    aug = episodes.SemanticAugment(scale_range=(0.5, 0.5), square_reference=c.data.square_reference)
    assert aug.square_reference
    _, out_mask, hw = episodes.large_scale_jitter(np.random.default_rng(1), image, mask, 64, aug.scale_range, aug.square_reference)
    assert tuple(hw) == (32, 32)  # 0.5 x 64 on both sides, not 11 x 32
    assert (out_mask[:32, :14] > 127.5).all() and (out_mask[:32, 18:32] <= 127.5).all()
