"""Converted-checkpoint SEGIC inference: episodes/s of this port against the original PyTorch
implementation, measured in the same run on random weights of the released architecture.

    python benchmarks/segic_inference.py --original ~/src/SEGIC --dinov2-repo ~/src/dinov2 \
        --arch vits14 --image-size 448                                  # CPU, small backbone
    python benchmarks/segic_inference.py --original ~/src/SEGIC --dinov2-repo ~/src/dinov2 \
        --arch vitl14 --image-size 896 --dtypes float32 bfloat16        # GPU, as released

--original is a checkout of MengLcool/SEGIC and --dinov2-repo one of facebookresearch/dinov2 (the
original loads DINOv2 with torch.hub; here from that checkout, pretrained=False). Neither is part
of this project. The original's imports of packages its inference path never uses (detectron2,
torchvision, cv2, diffusers, ...) are satisfied with empty stand-ins.

The original model gets random weights; its head, its DINOv2 and its CLIP text tower are saved in
the released formats and converted with `python -m segic_jax.convert segic`. An episode is one
reference image with its mask and one target image (640x480) -> the target's mask at its
resolution, including the evaluation resize. "uncached" encodes the reference in every episode
(the original's one-shot forward); "cached" encodes it once (the original's custom-evaluation
path, forward_cls_extraction then semseg forward). The original runs in float32, as released
(and under bf16 autocast with --original-autocast on a GPU), at batch 1. Also prints the largest
logit difference between the two and the share of pixels whose mask agrees, as a check that both
computed the same, and for batch 1 the
host overhead: the share of an episode's wall time spent outside the device programs. With
--batch-sizes, this port's throughput at larger batches: uncached episodes through
`Predictor.segment_episodes` (a different reference per episode) and cached targets through
`Predictor.segment`, 4 batches per call; rates there are per episode / target.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # torch_reference: CLIP vocabulary and weight noise
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))  # dinov2_forward: FLOP count and datasheet peaks

ARCH_DIMS = {"vits14": 384, "vitb14": 768, "vitl14": 1024, "vitg14": 1536}


def load_original(path: str):
    """Import the original's model code from a checkout, with stand-ins for unused imports."""
    import importlib

    importlib.import_module("transformers")  # must see the real torchvision state before the stand-ins
    import transformers.models.vit_mae.modeling_vit_mae as mae

    class Unused:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("not used on SEGIC's DINOv2 inference path")

    def stub(name, **attrs):
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        module.__path__ = []
        sys.modules.setdefault(name, module)

    for name in ("ViTMAEEmbeddings", "ViTMAEEncoder", "ViTMAEPatchEmbeddings", "ViTMAEModel"):
        setattr(mae, name, getattr(mae, name, Unused))  # renamed in transformers 5
    if "torchvision" not in sys.modules:
        stub("torchvision.ops.boxes", box_area=None)
        stub("torchvision.ops")
        stub("torchvision.transforms.functional", normalize=None)
        stub("torchvision.transforms", PILToTensor=Unused)
        stub("torchvision.utils")
        stub("torchvision", transforms=sys.modules["torchvision.transforms"], utils=sys.modules["torchvision.utils"])
    for name, attrs in {
        "detectron2": {}, "detectron2.layers": dict(ROIAlign=Unused), "detectron2.modeling": {},
        "detectron2.modeling.poolers": dict(ROIPooler=Unused), "detectron2.structures": dict(Boxes=Unused),
        "cv2": {}, "skimage": dict(io=None), "model.backbone.src_dift": {}, "model.backbone.src_dift.models": {},
        "model.backbone.src_dift.models.dift_sd": dict(SDFeaturizer=Unused),
        "model.backbone.custom_clip": dict(CustomCLIPVisionModel=Unused, CLIPModel=Unused, CLIPModelConv=Unused,
                                           DeCLIPModel=Unused, PyramidCLIPModel=Unused),
        "model.backbone.custom_deit": dict(CustomDeiT=Unused),
    }.items():
        stub(name, **attrs)
    sys.path.insert(0, path)
    import model.backbone as backbone
    import model.segic as segic
    from model.backbone.custom_dino import CustomDINOv2
    from utils.dataloader import Resize

    return backbone, segic, CustomDINOv2, Resize


def build_original(args, workdir, device):
    """The original SEGIC with random weights, and its parts saved in the released formats."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizerFast

    from torch_reference import randomize_, write_clip_vocab

    backbone, segic, CustomDINOv2, Resize = load_original(args.original)
    dim = ARCH_DIMS[args.arch]
    size, grid = args.image_size, args.image_size // 14
    backbone.MODEL_CONFIG["dinov2_l"].update(vision_dim=dim, text_dim=768, img_size=size)
    options = dict(
        encoder_model="dinov2", dinov2_model="l", reverse_context=False, use_cross_inst_prompt=True,
        no_sim_prompt=False, no_text=False, use_inst_proj=True, diff_text_prompt_ratio=0.75, use_keypoint=False,
        num_keypoint=1, add_neg_prompt=False, use_aug_inst=False, use_neg_aug_inst=False, que_len=128,
        max_inst_used=10, use_task_indicator=False, inst_for_simm=0, tau_simm=1.0, n_point=1, no_text_eval=False,
        force_input_size=None,
    )
    encoder = CustomDINOv2.__new__(CustomDINOv2)
    torch.nn.Module.__init__(encoder)
    encoder.dinov2 = torch.hub.load(args.dinov2_repo, f"dinov2_{args.arch}", source="local", pretrained=False)
    clip_dir = write_clip_vocab(os.path.join(workdir, "clip"))
    encoder.text_model = CLIPTextModel(CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, vocab_size=49408, eos_token_id=49407, bos_token_id=49406, pad_token_id=49407,
    ))
    encoder.tokenizer = CLIPTokenizerFast.from_pretrained(clip_dir)
    encoder.tokenizer.model_max_length = 77
    prompt_encoder = backbone.CustomPromptEncoder(
        embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(size, size), mask_in_chans=16,
        mask_down_stride=[7, 2],
    )
    neck = torch.nn.Sequential(
        torch.nn.Conv2d(dim, 256, 1, bias=False), backbone.LayerNorm2d(256),
        torch.nn.Conv2d(256, 256, 3, padding=1, bias=False), backbone.LayerNorm2d(256),
    )
    decoder = segic.MaskDecoder(
        num_multimask_outputs=3,
        transformer=segic.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
    )
    model = segic.SEGIC(encoder, neck, prompt_encoder, decoder, types.SimpleNamespace(**options))
    for p in encoder.parameters():
        p.requires_grad = False
    randomize_(model, 0, scale=0.02)
    torch.save(model.state_dict(), os.path.join(workdir, "segic.pth"))
    torch.save(encoder.dinov2.state_dict(), os.path.join(workdir, "dinov2.pth"))
    encoder.text_model.save_pretrained(clip_dir)
    model.to(device)
    model.eval()  # the original's train() override returns None, so no chaining
    return model, Resize([size, size])


def scene(seed, h=480, w=640):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - h * 0.5) / (h * 0.3)) ** 2 + ((xx - w * 0.4) / (w * 0.25)) ** 2 < 1
    return image, mask


def median_time(fn, episodes):
    fn()  # warm-up / compile
    times = []
    for _ in range(episodes):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--original", required=True, help="checkout of MengLcool/SEGIC")
    parser.add_argument("--dinov2-repo", required=True, help="checkout of facebookresearch/dinov2")
    parser.add_argument("--arch", default="vits14", choices=sorted(ARCH_DIMS))
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "fp8"],
                        help="this port's compute: fp8 is bfloat16 with DINOv2's linear layers in FP8 e4m3")
    parser.add_argument("--episodes", type=int, default=5, help="timed repetitions (median)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1], help="segic-jax batch sizes (1 is always run)")
    parser.add_argument("--original-autocast", action="store_true", help="also time the original under bf16 autocast (GPU)")
    parser.add_argument("--profile", default="", help="write a jax.profiler trace of this port's batched calls here")
    parser.add_argument("--attention", nargs="+", default=["auto"], choices=["auto", "xla", "chunked", "cudnn", "splash"],
                        help="this port's attention: auto (the device's choice, ops.attention) or a pinned implementation; "
                             "several give a row each, e.g. auto xla for the effect of the choice")
    args = parser.parse_args()

    import jax
    import torch
    import torch.nn.functional as F

    from segic_jax import convert
    from segic_jax.inference.predictor import Predictor
    from segic_jax.ops.attention import force_implementation

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":  # the original calls .cuda() unconditionally
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.cuda.empty_cache = lambda: None
    workdir = tempfile.mkdtemp(prefix="segic_bench_")
    original, resize = build_original(args, workdir, device)
    out = os.path.join(workdir, "converted")
    assert convert.main([
        "segic", "--src", os.path.join(workdir, "segic.pth"), "--dinov2", os.path.join(workdir, "dinov2.pth"),
        "--clip", os.path.join(workdir, "clip"), "--out", out, "--image-size", str(args.image_size),
    ]) == 0

    ref_image, ref_mask = scene(1)
    target, _ = scene(2)

    def original_sample(image, mask):
        t = torch.from_numpy(image).permute(2, 0, 1).float()
        m = torch.from_numpy(mask.astype(np.float32) * 255)[None]
        s = resize(dict(imidx="x", image=t, label=m, shape=t.shape[-2:]))
        return {k: (v[None] if torch.is_tensor(v) else v) for k, v in s.items()}

    @torch.no_grad()
    def original_uncached():
        t, r = original_sample(target, ref_mask), original_sample(ref_image, ref_mask)
        data = dict(
            image=t["image"].to(device), ori_size=t["ori_size"], label=[r["label"][0].to(device)],
            image_dual=r["image"].to(device), ori_size_dual=r["ori_size"], label_dual=[r["label"][0].to(device)],
            class_name=["object"], is_inst=torch.tensor([False]),
        )
        logits, *_ = original(data, inference=True)
        result = F.interpolate(logits, target.shape[:2], mode="bilinear")[:, 0].float().cpu().numpy()
        return result

    meta_holder = {}

    @torch.no_grad()
    def original_cached():
        if "meta" not in meta_holder:
            r = original_sample(ref_image, ref_mask)
            r["image"], r["label"], r["class_name"] = r["image"].to(device), [r["label"][0].to(device)], [""]
            meta_holder["meta"] = original.forward_cls_extraction(r, 16)
        t = original_sample(target, np.zeros(target.shape[:2], bool))
        t["image"] = t["image"].to(device)
        logits, *_ = original(t, inference=True, semseg_meta=meta_holder["meta"])
        return F.interpolate(logits, target.shape[:2], mode="bilinear")[:, 0].float().cpu().numpy()

    if device == "cuda":
        sync = torch.cuda.synchronize
        wrap = lambda fn: (lambda: (fn(), sync())[0])
        original_uncached, original_cached = wrap(original_uncached), wrap(original_cached)

    print(f"SEGIC one-shot episodes, DINOv2 {args.arch} at {args.image_size} px, 640x480 images, on "
          f"{jax.devices()[0].device_kind} (JAX {jax.__version__}) / {device} (torch {torch.__version__})")
    print("host overhead: the share of an episode's time outside the device programs (encoder, mask sums, "
          "decoder on inputs already on the device)")
    from dinov2_forward import PEAKS, forward_flops
    from segic_jax.models.dinov2 import dinov2_config

    image_flops = forward_flops(dinov2_config(args.arch), args.image_size)
    peaks = next((p for k, p in PEAKS.items() if k in jax.devices()[0].device_kind), {})
    print(f"TFLOP/s: DINOv2's {image_flops / 1e9:.1f} GFLOP per image (2 images per uncached episode, 1 cached; the "
          "decoder's few % are not counted) at the measured rate; MFU against the datasheet's dense peak "
          "(float32 rows: full-precision fp32)")
    header = (f"{'implementation':>15} {'dtype':>9} {'context':>9} {'batch':>6} {'episodes/s':>11} {'vs original':>12} "
              f"{'host overhead':>14} {'TFLOP/s':>8} {'MFU':>6} {'max |logit diff|':>17} {'masks agree':>12}")
    print(header)

    def report(name, dtype, ctx, batch, t, base, diff=None, overhead=None, ours=None, ref=None):
        diff = "" if diff is None else f"{diff:.2e}"
        agree = "" if ours is None else f"{100 * np.mean((ours > 0) == (ref > 0)):.3f} %"
        overhead = "" if overhead is None else f"{100 * overhead:.1f} %"
        tflops = image_flops * (2 if ctx == "uncached" else 1) / t / 1e12
        peak = peaks.get({"float32": "fp32", "bfloat16": "bf16", "fp8": "fp8"}.get(dtype, ""))
        mfu = f"{100 * tflops / peak:.1f}%" if peak else ""
        print(f"{name:>15} {dtype:>9} {ctx:>9} {batch:>6} {1 / t:>11.2f} {base / t:>11.2f}x {overhead:>14} "
              f"{tflops:>8.2f} {mfu:>6} {diff:>17} {agree:>12}", flush=True)

    t_orig_u, ref_u = median_time(original_uncached, args.episodes)
    report("original", "float32", "uncached", 1, t_orig_u, t_orig_u)
    t_orig_c, ref_c = median_time(original_cached, args.episodes)
    report("original", "float32", "cached", 1, t_orig_c, t_orig_c)
    if device == "cuda" and args.original_autocast:  # the original's own bf16 option (autocast)
        autocast = lambda fn: (lambda: _autocast(torch, fn))
        t, _ = median_time(autocast(original_uncached), args.episodes)
        report("original", "autocast", "uncached", 1, t, t_orig_u)
        t, _ = median_time(autocast(original_cached), args.episodes)
        report("original", "autocast", "cached", 1, t, t_orig_c)
    for attention_impl, dtype in [(a, d) for a in args.attention for d in args.dtypes]:
        name = "segic-jax" if attention_impl == "auto" else f"jax/{attention_impl}"
        jax.clear_caches()  # the implementation is chosen while tracing: trace again under this one
        pinned = contextlib.nullcontext() if attention_impl == "auto" else force_implementation(attention_impl)
        with pinned:
            load = lambda batch: Predictor.from_checkpoint(
                out, dtype="bfloat16" if dtype == "fp8" else dtype, fp8=dtype == "fp8", batch_size=batch)
            predictor = load(1)
            uncached = lambda: predictor.segment(
                [target], predictor.encode_context([ref_image], [ref_mask], class_names=["object"])
            )[0].logits
            t, ours = median_time(uncached, args.episodes)
            t_dev = device_time(predictor, ref_image, ref_mask, target, args.episodes, uncached=True)
            report(name, dtype, "uncached", 1, t, t_orig_u, float(np.abs(ours - ref_u).max()), 1 - t_dev / t, ours, ref_u)
            context = predictor.encode_context([ref_image], [ref_mask], binarize=False)
            t, ours = median_time(lambda: predictor.segment([target], context)[0].logits, args.episodes)
            t_dev = device_time(predictor, ref_image, ref_mask, target, args.episodes, uncached=False)
            report(name, dtype, "cached", 1, t, t_orig_c, float(np.abs(ours - ref_c).max()), 1 - t_dev / t, ours, ref_c)
            for batch in [b for b in args.batch_sizes if b > 1]:
                predictor = load(batch)
                n = 4 * batch  # several batches, so that dispatch and copy-back can overlap
                targets = [scene(10 + i)[0] for i in range(n)]
                if hasattr(predictor, "segment_episodes"):
                    from segic_jax.inference.predictor import Episode

                    episodes = [Episode(ref_image, ref_mask, t, class_names=["object"]) for t in targets]
                    t, _ = median_time(lambda: list(predictor.segment_episodes(episodes)), args.episodes)
                    report(name, dtype, "uncached", batch, t / n, t_orig_u)
                context = predictor.encode_context([ref_image], [ref_mask], binarize=False)
                t, _ = median_time(lambda: predictor.segment(targets, context), args.episodes)
                report(name, dtype, "cached", batch, t / n, t_orig_c)
                if args.profile:  # one call of each, after the timing (compiled already)
                    with jax.profiler.trace(os.path.join(args.profile, f"{dtype}_batch{batch}")):
                        if hasattr(predictor, "segment_episodes"):
                            list(predictor.segment_episodes(episodes))
                        predictor.segment(targets, context)


def _autocast(torch, fn):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        return fn()


def device_time(predictor, ref_image, ref_mask, target, repeats: int, uncached: bool) -> float:
    """Median seconds of the episode's device programs alone, inputs already on the device: DINOv2
    on the reference (uncached) and the target, the masked mean, the decoder. What the predictor
    spends beyond this is host overhead (preparing inputs, dispatch, copying results back)."""
    import functools

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from segic_jax.data.images import fit_to_model
    from segic_jax.models.dinov2 import patch_features
    from segic_jax.ops.correspondence import masked_mean_features

    size = predictor.image_size
    precision = "highest" if predictor.head.dtype == jnp.float32 else "default"

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def episode(graphdefs, uncached, states, ref_px, ref_hw, tgt_px, tgt_hw, mask, vec, text):
        with jax.default_matmul_precision(precision):
            encoder, head = (nnx.merge(g, s) for g, s in zip(graphdefs, states))
            if uncached:
                vec = masked_mean_features(patch_features(encoder, ref_px, ref_hw), mask)
            out = head.decode(patch_features(encoder, tgt_px, tgt_hw), vec, jnp.ones((1, 1), bool), text)
        return out.logits, out.similarity, out.points

    (ref_px, ref_hw), (tgt_px, tgt_hw) = fit_to_model(ref_image, size), fit_to_model(target, size)
    mask = (fit_to_model(ref_mask.astype(np.float32) * 255, size)[0] > 127.5).astype(np.float32)
    (enc_def, enc_state), (head_def, head_state) = nnx.split(predictor.encoder), nnx.split(predictor.head)
    args = jax.device_put((
        (enc_state, head_state), ref_px[None], np.asarray([ref_hw]), tgt_px[None], np.asarray([tgt_hw]),
        mask[None, None], np.zeros((1, 1, predictor.encoder.cfg.embed_dim), np.float32),
        predictor.text_features(["a photo of a object"])[None],
    ))
    run = lambda: jax.block_until_ready(episode((enc_def, head_def), uncached, *args))
    return median_time(run, repeats)[0]


if __name__ == "__main__":
    main()
