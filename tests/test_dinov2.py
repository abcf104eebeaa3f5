"""DINOv2 port and conversion against PyTorch references on random weights.

Hugging Face layout: HF `Dinov2Model` / `Dinov2WithRegistersModel` saved with `save_pretrained`,
compared with the same HF model. Hub layout: the same weights renamed by hand to the official
`dinov2_vit*14*_pretrain.pth` keys, compared with the HF model whose positional-embedding
resampling is replaced by the hub's (scale factor (n + 0.1) / M, or size + antialias for the
register models).
"""

import copy
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from segic_jax import checkpoints
from segic_jax.conversion import dinov2 as dinov2_conversion
from segic_jax.models import dinov2
from segic_jax.models.dinov2 import Dinov2
from perturb import perturbed
from torch_reference import hf_dinov2, hf_folder_to_hub_state_dict, hub_interpolation

TOL = 1e-4
# Pretrained grid 5x5 (image_size 70); (70, 70) keeps it, the others resample it, one non-square,
# one shrinking and one growing.
SIZES = [(70, 70), (98, 42), (140, 126), (42, 42)]
VARIANTS = {
    "mlp": dict(),
    "swiglu": dict(swiglu=True),
    "reg4": dict(registers=4),
}


def _run_torch(model, images):
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).last_hidden_state.numpy()


def _max_diff(ours: dinov2.Dinov2, ref_model, images, registers):
    ref = _run_torch(ref_model, images)
    out = ours(jnp.asarray(images))
    b = images.shape[0]
    c = ref.shape[-1]
    patches = np.asarray(out.patch_tokens).reshape(b, -1, c)
    assert out.patch_tokens.shape == (b, images.shape[1] // 14, images.shape[2] // 14, c)
    assert out.register_tokens.shape == (b, registers, c)
    return max(
        np.abs(patches - ref[:, 1 + registers :]).max(),
        np.abs(np.asarray(out.cls_token) - ref[:, 0]).max(),
        np.abs(np.asarray(out.register_tokens) - ref[:, 1 : 1 + registers]).max() if registers else 0.0,
    )


@pytest.fixture(scope="module", params=list(VARIANTS))
def converted(request, tmp_path_factory):
    """One random model per variant, converted from both layouts."""
    kw = VARIANTS[request.param]
    registers = kw.get("registers", 0)
    hf = hf_dinov2(seed=len(request.param), **kw)
    root = tmp_path_factory.mktemp(request.param)
    hf_dir = str(root / "hf")
    hf.save_pretrained(hf_dir)
    hub_path = str(root / "dinov2_vits14_pretrain.pth")
    torch.save(hf_folder_to_hub_state_dict(hf_dir), hub_path)
    loaded = {}
    for layout, src in (("hf", hf_dir), ("hub", hub_path)):
        config, params = dinov2_conversion.convert(src, progress=False)
        out = checkpoints.save_model(str(root / f"ckpt_{layout}"), Dinov2, config, params)
        loaded[layout] = dinov2.load(out)
    hub_ref = hub_interpolation(copy.deepcopy(hf), 0.0 if registers else 0.1, bool(registers))
    return dict(hf=(loaded["hf"], hf), hub=(loaded["hub"], hub_ref), registers=registers, hf_dir=hf_dir)


@pytest.mark.parametrize("layout", ["hf", "hub"])
@pytest.mark.parametrize("size", SIZES)
def test_matches_pytorch(converted, layout, size, rng):
    ours, ref = converted[layout]
    images = rng.standard_normal((2, *size, 3)).astype(np.float32)
    assert _max_diff(ours, ref, images, converted["registers"]) <= TOL


def test_resampling_choice_is_visible_in_the_output(converted, rng):
    # Guards the hub-layout tests above: plain size-based, non-antialiased resampling (what HF's
    # Dinov2Model does) must give measurably different tokens than the hub's offset (ViTs) or
    # antialiasing (register models), or those tests would not be checking them.
    ours_hub, _ = converted["hub"]
    _, hf = converted["hf"]
    plain = hub_interpolation(copy.deepcopy(hf), offset=0.0, antialias=False)
    images = rng.standard_normal((1, 98, 42, 3)).astype(np.float32)
    assert _max_diff(ours_hub, plain, images, converted["registers"]) > 10 * TOL


@pytest.mark.parametrize(
    "param", ["pos_embed", "blocks.1.attn.qkv.kernel", "blocks.0.ls2.gamma", "norm.bias", "patch_embed.proj.kernel"]
)
def test_parity_check_catches_one_perturbed_weight(converted, param, rng):
    ours, ref = converted["hub"]
    images = rng.standard_normal((1, 98, 42, 3)).astype(np.float32)
    assert _max_diff(perturbed(ours, param), ref, images, converted["registers"]) > TOL


def test_hf_in_memory_naming_converts(tmp_path, rng):
    # transformers >= 5 names the projections q/k/v/o_proj and gate/up/down_proj in memory, while
    # files on the Hub say query/key/value/dense and weights_in/weights_out. A state dict saved
    # straight from memory must convert too; it is written here by renaming the file's keys.
    from safetensors.torch import load_file

    hf = hf_dinov2(swiglu=True, seed=3)
    hf.save_pretrained(str(tmp_path))
    renamed = {}
    for key, value in load_file(str(tmp_path / "model.safetensors")).items():
        for old, new in (("attention.attention.query", "attention.q_proj"), ("attention.attention.key", "attention.k_proj"),
                         ("attention.attention.value", "attention.v_proj"), ("attention.output.dense", "attention.o_proj"),
                         ("mlp.weights_out", "mlp.down_proj")):
            key = key.replace(old, new)
        if "mlp.weights_in" in key:
            gate, up = value.chunk(2)
            renamed[key.replace("weights_in", "gate_proj")] = gate.contiguous()
            renamed[key.replace("weights_in", "up_proj")] = up.contiguous()
        else:
            renamed[key] = value
    assert any("attention.q_proj" in k for k in renamed) and any("gate_proj" in k for k in renamed)
    save_file(renamed, str(tmp_path / "model.safetensors"))
    config, params = dinov2_conversion.convert(str(tmp_path), progress=False)
    model = checkpoints.build_model(Dinov2, config, params)
    images = rng.standard_normal((1, 98, 42, 3)).astype(np.float32)
    assert _max_diff(model, hf, images, 0) <= TOL


def test_arch_read_from_hub_tensors(converted):
    config = checkpoints.load_config(os.path.join(os.path.dirname(converted["hf_dir"]), "ckpt_hub"), Dinov2)
    assert (config.embed_dim, config.depth, config.num_heads, config.pos_grid) == (128, 2, 2, 5)


def test_bf16_compute_stays_close_to_fp32(converted, rng):
    ours, _ = converted["hub"]
    from flax import nnx

    graphdef, state = nnx.split(ours)
    bf16 = dinov2.Dinov2(ours.cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    nnx.update(bf16, nnx.state(ours))
    images = jnp.asarray(rng.standard_normal((1, 70, 70, 3)).astype(np.float32))
    a, b = ours(images).patch_tokens, bf16(images).patch_tokens
    assert b.dtype == jnp.float32
    rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
    assert 0 < rel < 0.05


def test_input_size_must_be_a_multiple_of_the_patch(converted):
    ours, _ = converted["hf"]
    with pytest.raises(ValueError, match="multiple of the patch size"):
        ours(jnp.zeros((1, 71, 70, 3)))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        ours(jnp.zeros((1, 3, 70, 70)))


def test_named_architectures():
    assert dinov2.dinov2_config("vitl14").embed_dim == 1024
    g = dinov2.dinov2_config("vitg14")
    assert g.ffn == "swiglu" and g.mlp_hidden == 4096 and g.depth == 40
    reg = dinov2.dinov2_config("vits14_reg")
    assert reg.num_register_tokens == 4 and reg.interpolate_offset == 0.0 and reg.interpolate_antialias
    with pytest.raises(ValueError, match="unknown DINOv2 architecture"):
        dinov2.dinov2_config("vitx14")
