"""DINOv2 forward throughput: this port (JAX) against the PyTorch reference, in one run.

    python benchmarks/dinov2_forward.py --arch vits14 --sizes 224 448 --batch 8          # CPU
    python benchmarks/dinov2_forward.py --arch vitl14 --sizes 896 --batch 8 \
        --modes fp32 tf32 bf16                                                           # GPU
    python benchmarks/dinov2_forward.py --arch vitl14 --sizes 896 --batch 8 \
        --modes bf16 --no-torch                                                          # TPU

The reference is Hugging Face's `Dinov2Model` (PyTorch SDPA attention) with the same shapes and
random weights, on the same device. Modes: fp32 = float32 with full-precision matmuls on both
sides (JAX precision "highest", torch TF32 off); tf32 = float32 storage with TF32 matmuls on both
sides (GPU only); bf16 = bfloat16 compute (JAX: float32 parameters, bf16 compute; torch: the model
cast to bf16); fp8 = bf16 with DINOv2's linear layers in FP8 e4m3 (`dinov2.use_fp8_matmuls`; torch
runs bf16 for that row), with the features' error against float32 printed beside bf16's. Prints images/s, achieved TFLOP/s (counted analytically, matmuls and attention)
and, on a known GPU, the fraction of its dense peak; the last column is JAX / torch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from segic_jax.models import dinov2

# Dense peaks by datasheet (TFLOP/s): fp32 (no tensor cores), tf32 and bf16 tensor cores; TPU chips
# (as `device_kind` names them) by their bf16 peak.
PEAKS = {
    "H200": {"fp32": 67, "tf32": 495, "bf16": 989, "fp8": 1979},
    "H100": {"fp32": 67, "tf32": 495, "bf16": 989, "fp8": 1979},
    "TPU v4": {"bf16": 275},
    "TPU v5 lite": {"bf16": 197},
    "TPU v5": {"bf16": 459},
    "TPU v6 lite": {"bf16": 918},
}


def forward_flops(cfg: dinov2.Dinov2Config, size: int) -> float:
    """Multiply-adds x 2 of one image's forward pass (patch embed, attention, MLP)."""
    grid = (size // cfg.patch_size) ** 2
    n, c = 1 + cfg.num_register_tokens + grid, cfg.embed_dim
    mlp = 2 * n * c * cfg.mlp_hidden * (3 if cfg.ffn == "swiglu" else 2)
    block = 2 * n * c * 3 * c + 2 * 2 * n * n * c + 2 * n * c * c + mlp
    return 2 * grid * 3 * cfg.patch_size**2 * c + cfg.depth * block


def _time(fn, iters: int, warmup: int = 2) -> float:
    """Median seconds per call; `fn` must block until its result is ready."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def attention_check(cfg, size):
    """Relative error of the bf16 attention kernel the model uses, against float32 on the same inputs."""
    from segic_jax.ops.attention import attention_implementation, force_implementation, multi_head_attention

    n, h, d = 1 + (size // cfg.patch_size) ** 2, cfg.num_heads, cfg.embed_dim // cfg.num_heads
    q, k, v = jax.random.normal(jax.random.key(2), (3, 2, n, h * d), jnp.float32)
    # a new function per kernel: the kernel is chosen while tracing, and jit reuses a function's trace
    attend = lambda: jax.jit(lambda q, k, v: multi_head_attention(q, k, v, h))
    with jax.default_matmul_precision("highest"), force_implementation("xla"):
        ref = attend()(q, k, v)
    impl = attention_implementation(jnp.bfloat16, d, n, n)
    errs = {}
    for name in sorted({impl, "xla"}):
        with force_implementation(name):
            out = attend()(*(t.astype(jnp.bfloat16) for t in (q, k, v)))
        errs[name] = float(jnp.linalg.norm(out.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
    return impl, errs


def bench_jax(cfg, size, batch, mode, iters):
    dtype = jnp.bfloat16 if mode in ("bf16", "fp8") else jnp.float32
    model = dinov2.Dinov2(cfg, dtype=dtype, rngs=nnx.Rngs(0))
    if mode == "fp8":
        dinov2.use_fp8_matmuls(model)
    graphdef, state = nnx.split(model)
    precision = {"fp32": "highest", "tf32": "tensorfloat32", "bf16": "default", "fp8": "default"}[mode]

    @jax.jit
    def forward(state, x):
        return nnx.merge(graphdef, state)(x).patch_tokens

    x = jax.random.normal(jax.random.key(1), (batch, size, size, 3), jnp.float32)
    with jax.default_matmul_precision(precision):
        forward(state, x).block_until_ready()  # compile outside the timing
        return _time(lambda: forward(state, x).block_until_ready(), iters)


def fp8_check(cfg, size) -> str:
    """Relative error and worst per-patch cosine of bf16 and fp8 patch features against float32,
    one random-weight model, two images."""
    import numpy as np

    x = jax.random.uniform(jax.random.key(2), (2, size, size, 3), jnp.float32, 0, 255)
    out = {}
    for mode in ("fp32", "bf16", "fp8"):
        model = dinov2.Dinov2(cfg, dtype=jnp.float32 if mode == "fp32" else jnp.bfloat16, rngs=nnx.Rngs(0))
        if mode == "fp8":
            dinov2.use_fp8_matmuls(model)
        with jax.default_matmul_precision("highest" if mode == "fp32" else "default"):
            out[mode] = np.asarray(jax.jit(dinov2.patch_features)(model, x), np.float64)
    ref = out["fp32"]
    parts = []
    for mode in ("bf16", "fp8"):
        rel = np.linalg.norm(out[mode] - ref) / np.linalg.norm(ref)
        cos = (out[mode] * ref).sum(-1) / np.linalg.norm(out[mode], axis=-1) / np.linalg.norm(ref, axis=-1)
        parts.append(f"{mode} rel. error {rel:.2e}, min cosine {cos.min():.4f}")
    return "; ".join(parts)


def bench_torch(cfg, size, batch, mode, iters, device):
    import torch
    from transformers import Dinov2Config, Dinov2Model

    hf = Dinov2Config(
        hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
        mlp_ratio=int(cfg.mlp_ratio), use_swiglu_ffn=cfg.ffn == "swiglu", image_size=cfg.pos_grid * cfg.patch_size,
        patch_size=cfg.patch_size, attn_implementation="sdpa",
    )
    model = Dinov2Model(hf).eval().to(device)
    dtype = torch.bfloat16 if mode in ("bf16", "fp8") else torch.float32  # fp8: torch runs bf16
    model = model.to(dtype)
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    tf32 = mode == "tf32"
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32

    def run():
        with torch.inference_mode():
            model(pixel_values=x)
        sync()

    try:
        return _time(run, iters)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="vits14", choices=sorted(dinov2.ARCHS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "tf32", "bf16", "fp8"])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    args = parser.parse_args()

    cfg = dinov2.dinov2_config(args.arch)
    backend = jax.default_backend()
    device_name = jax.devices()[0].device_kind
    torch_device = "cuda" if backend == "gpu" else "cpu"
    peaks = next((p for k, p in PEAKS.items() if k in device_name), None)
    print(f"DINOv2 {args.arch} forward, batch {args.batch}, JAX {jax.__version__} on {device_name} ({backend})")
    header = f"{'size':>5} {'mode':>5} {'jax img/s':>10} {'TFLOP/s':>8} {'%peak':>6} {'torch img/s':>11} {'TFLOP/s':>8} {'jax/torch':>9}"
    print(header)
    rows = []
    for size in args.sizes:
        flops = forward_flops(cfg, size)
        if "bf16" in args.modes:
            impl, errs = attention_check(cfg, size)
            print(f"  bf16 attention uses {impl}; relative error vs float32: "
                  + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
        if "fp8" in args.modes:
            print("  fp8 features against float32 (bf16 for comparison): " + fp8_check(cfg, size))
        for mode in args.modes:
            if mode == "tf32" and backend != "gpu":
                continue
            t_jax = bench_jax(cfg, size, args.batch, mode, args.iters)
            ips_jax = args.batch / t_jax
            t_torch = None if args.no_torch else bench_torch(cfg, size, args.batch, mode, args.iters, torch_device)
            ips_torch = args.batch / t_torch if t_torch else float("nan")
            peak = f"{100 * ips_jax * flops / 1e12 / peaks[mode]:6.1f}" if peaks and mode in peaks else "     -"
            row = (
                f"{size:>5} {mode:>5} {ips_jax:>10.2f} {ips_jax * flops / 1e12:>8.2f} {peak} "
                f"{ips_torch:>11.2f} {ips_torch * flops / 1e12:>8.2f} {ips_jax / ips_torch:>9.2f}"
            )
            rows.append(row)
            print(row, flush=True)
    print("GFLOP per image: " + ", ".join(f"{s}px {forward_flops(cfg, s) / 1e9:.1f}" for s in args.sizes))


if __name__ == "__main__":
    main()
