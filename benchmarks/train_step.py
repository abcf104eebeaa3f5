"""SEGIC training step: steps/s and peak memory of this port against the original PyTorch
implementation, measured in the same run on random weights and the same batch.

    python benchmarks/train_step.py --original ~/src/SEGIC --dinov2-repo ~/src/dinov2 \
        --arch vits14 --image-size 224 --batch 2 --instances 3                 # CPU, small backbone
    python benchmarks/train_step.py --original ~/src/SEGIC --dinov2-repo ~/src/dinov2 \
        --arch vitl14 --image-size 896 --batch 4 --instances 3 --remat-rows 0 8  # GPU, as trained

--original is a checkout of MengLcool/SEGIC and --dinov2-repo one of facebookresearch/dinov2 (see
benchmarks/segic_inference.py, whose loader and model builder this script uses). Without
--original only this port is measured, on random weights.

A step, both sides: B target/reference pairs (synthetic images, K ellipse instances each, at the
model size) -> frozen DINOv2 on the 2B images -> the two decoding passes of reverse context ->
the point-sampled mask loss (12544 points) -> gradients -> AdamW on the head.
  - original: `SEGIC` with `reverse_context=True` in training mode, called as train.py calls it
    (`model(data)`, `.item()` of the loss, `zero_grad`, `backward`, `AdamW.step` over all
    parameters, the frozen ones having no gradient), in float32, on CUDA when available. The
    batch is placed on the device beforehand. It also runs the frozen CLIP text model on the 2B
    prompts every step: that is how it computes text features. train.py wraps its whole loop in
    `torch.autograd.set_detect_anomaly(True)`, a debugging mode that slows every operation; the
    main row runs without it (the original's best case) and a second row with it. On a GPU a
    third row runs it under `torch.autocast` in bf16 (not in the original, but what its users
    would reach for). There is no
    DistributedDataParallel wrapper (one device).
  - segic-jax: the jitted `train_step` as the Trainer builds it (mesh shardings, parameters and
    optimizer state donated), encoder in each --dtypes (the head trains in float32): float32 is
    configs/segic.py:paper, every matmul at full precision as PyTorch's float32 (no TF32), and
    bfloat16 is paper_bf16 (XLA's default precision), so the two rows give that switch's cost and
    its effect on the loss; text features come from a table computed once. Its
    weights are the original's, converted with `python -m segic_jax.convert segic`, and the
    batch uses the instance prompt on both sides, so the first-step losses are comparable; they
    still differ through the random box / cross-instance choices and loss points.

--remat-rows adds runs of ours with `train.remat_rows` (the decoder's B x K rows decoded in chunks
of that many, each recomputed in the backward pass): the memory it saves and the time it costs.

Each implementation runs in its own subprocess, pinned to --cpus cores when given (with 2 threads
on 2 cores that other work also used, PyTorch's CPU step ran 13x slower than with 1 thread: its
threads wait on one another). 2 warm-up steps (compilation happens before them), then --steps
timed steps, each timed to completion (device synchronised).

Memory, two figures. "peak": what the implementation holds at its height (weights, optimizer
state, activations; the original's includes the CLIP text model, ours does not). "step": that
peak less what is held just before the timed steps (activations and other per-step buffers).
  - GPU: the allocators' peaks, `torch.cuda.max_memory_allocated` and JAX `peak_bytes_in_use`
    (which covers the whole process, compilation and autotuning included).
  - CPU: the peak resident set during the timed steps (its high-water mark reset after the
    warm-up, so XLA's compilation is not counted) less the resident set after the imports
    ("peak") or just before the timed steps ("step", measured after malloc has returned the
    memory of freed blocks to the system). A CPU "peak" also holds what the process kept from
    building the model (for ours, from restoring the checkpoint and compiling).

Our step's FLOPs are XLA's cost analysis of the compiled program (operations XLA hands to library
kernels it cannot see into, e.g. cuDNN attention, may be missing from the count); TFLOP/s divide
them by the median step time, and on a known GPU they are shown against its dense peak (bf16 for
a bf16 encoder, TF32 for float32).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

WARMUP = 2
LEARNING_RATE = 1e-4  # the original's first ten epochs
BATCH_FILE, TEXT_FILE, CONVERTED = "batch.npz", "text_table.npy", "converted"


# --- memory ---------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def resident_mb() -> float:
    return _status_kb("VmRSS") / 1024


def reset_peak_resident() -> bool:
    """Restart the resident-set high-water mark (Linux: /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_free_heap() -> None:
    """Hand memory that malloc keeps after frees back to the system (glibc), so that the resident
    set counts live memory only."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_resident_mb() -> float:
    return _status_kb("VmHWM") / 1024


class CpuMemory:
    """Resident set: its peak during the timed steps, less the resident set at construction (after
    the imports) and less the resident set just before the timed steps."""

    note = "peak RSS during the timed steps over the RSS after imports / before the steps"

    def __init__(self):
        self.baseline = resident_mb()

    def start(self):
        release_free_heap()
        if not reset_peak_resident():
            self.note = "peak RSS of the whole process (its high-water mark could not be reset)"
        self.rest = resident_mb()

    def result(self) -> dict:
        peak = peak_resident_mb()
        return dict(peak_mb=peak - self.baseline, step_mb=peak - self.rest, memory=self.note)


class TorchCudaMemory:
    note = "torch.cuda.max_memory_allocated over the run / in the timed steps over the allocation before them"

    def __init__(self):
        import torch

        self.cuda = torch.cuda

    def start(self):
        self.warmup_peak = self.cuda.max_memory_allocated()
        self.cuda.reset_peak_memory_stats()
        self.rest = self.cuda.memory_allocated()

    def result(self) -> dict:
        peak = self.cuda.max_memory_allocated()
        return dict(peak_mb=max(peak, self.warmup_peak) / 2**20, step_mb=(peak - self.rest) / 2**20, memory=self.note)


class JaxDeviceMemory:
    note = "JAX peak_bytes_in_use over the run / that peak over the bytes in use before the timed steps"

    def __init__(self, device):
        self.device = device

    def start(self):
        self.rest = self.device.memory_stats()["bytes_in_use"]

    def result(self) -> dict:
        peak = self.device.memory_stats()["peak_bytes_in_use"]
        return dict(peak_mb=peak / 2**20, step_mb=(peak - self.rest) / 2**20, memory=self.note)


# --- the shared batch -----------------------------------------------------------------------


def make_batch(batch: int, instances: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Target and reference images (B, S, S, 3) in [0, 255] with K ellipse instances each, their
    masks (B, K, S, S) bool; instance j has the same colour in both views."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = {}
    for view in ("target", "reference"):
        images = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
        masks = np.zeros((batch, instances, size, size), bool)
        for i in range(batch):
            for j in range(instances):
                cy, cx = rng.uniform(0.2, 0.8, 2)
                ry, rx = rng.uniform(0.08, 0.25, 2)
                masks[i, j] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
                images[i][masks[i, j]] = 255.0 * (j + 1) / (instances + 1)
        out[f"{view}_image"], out[f"{view}_masks"] = images, masks
    return out


# --- workers (one per subprocess) -----------------------------------------------------------


def timed_steps(step, steps: int, memory=None, sync=lambda: None):
    """Warm up, reset the memory peak, then time `steps` calls of `step()` (which returns the loss).
    -> per-step seconds, first loss."""
    first = step()
    sync()
    for _ in range(WARMUP - 1):
        step()
    sync()
    if memory is not None:
        memory.start()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    return times, first


def run_original(args, workdir: str) -> dict:
    import random

    import torch
    import transformers

    import segic_inference

    segic_inference.load_original(args.original)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":  # the original calls .cuda() unconditionally
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.cuda.empty_cache = lambda: None
    memory = TorchCudaMemory() if device == "cuda" else CpuMemory()
    random.seed(0)
    torch.manual_seed(0)
    model, _ = segic_inference.build_original(args, workdir, device)  # also saves its weights there
    model.reverse_context = model.args.reverse_context = True
    model.train()  # the original's override keeps the encoder in eval mode
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)

    arrays = np.load(os.path.join(workdir, BATCH_FILE))
    b, size = arrays["target_image"].shape[:2]
    to_image = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device)
    to_labels = lambda m: [torch.from_numpy(x.astype(np.float32) * 255).to(device) for x in m]
    data = dict(
        image=to_image(arrays["target_image"]), image_dual=to_image(arrays["reference_image"]),
        label=to_labels(arrays["target_masks"]), label_dual=to_labels(arrays["reference_masks"]),
        ori_size=torch.full((b, 2), size), ori_size_dual=torch.full((b, 2), size), class_name=["object"] * b,
        is_inst=torch.ones(b, dtype=torch.bool), is_box_mask=torch.zeros(b, dtype=torch.bool),
    )

    def step():  # train.py's loop body
        _, _, loss, loss_dict = model(data)
        sum(loss_dict.values()).item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times, first = timed_steps(step, args.steps, memory, sync)
    measured = memory.result()
    autocast_times = None
    if device == "cuda":  # the original's mixed precision, as its users would turn it on
        def autocast_step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return step()

        autocast_times, _ = timed_steps(autocast_step, args.steps, None, sync)
    with torch.autograd.set_detect_anomaly(True):
        anomaly_times, _ = timed_steps(step, args.steps, None, sync)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return dict(
        times=times, anomaly_times=anomaly_times, autocast_times=autocast_times, loss=first, **measured,
        device=f"{name} (torch {torch.__version__}, transformers {transformers.__version__})",
    )


def run_convert(args, workdir: str) -> dict:
    """The original's saved weights -> our checkpoint, and the instance prompt's CLIP feature."""
    from segic_jax import convert
    from segic_jax.inference.predictor import INSTANCE_PROMPT, Predictor

    out = os.path.join(workdir, CONVERTED)
    if convert.main([
        "segic", "--src", os.path.join(workdir, "segic.pth"), "--dinov2", os.path.join(workdir, "dinov2.pth"),
        "--clip", os.path.join(workdir, "clip"), "--out", out, "--image-size", str(args.image_size),
    ]):
        raise RuntimeError("conversion of the original's weights failed (see above)")
    np.save(os.path.join(workdir, TEXT_FILE), Predictor.from_checkpoint(out).text_features([INSTANCE_PROMPT]))
    return {}


def run_ours(args, workdir: str, dtype_name: str, remat_rows: int) -> dict:
    import jax
    from flax import nnx

    from dinov2_forward import PEAKS
    from segic_jax.models import dinov2, segic
    from segic_jax.models.encoders import compute_dtype, matmul_precision
    from segic_jax.models.segic import SegicConfig, SegicHead
    from segic_jax.training import mesh as mesh_lib
    from segic_jax.training import step as train_lib

    device = jax.devices()[0]
    memory = CpuMemory() if device.platform == "cpu" else JaxDeviceMemory(device)
    dtype = compute_dtype(dtype_name)
    converted = os.path.join(workdir, CONVERTED)
    if os.path.isdir(converted):
        encoder = dinov2.load(os.path.join(converted, "dinov2"), dtype=dtype)
        head = segic.load(os.path.join(converted, "head"))  # trains in float32
        text_table = np.load(os.path.join(workdir, TEXT_FILE))
        weights = "converted from the original"
    else:
        encoder = dinov2.Dinov2(dinov2.dinov2_config(args.arch), dtype=dtype, rngs=nnx.Rngs(0))
        head = SegicHead(SegicConfig(vision_dim=encoder.cfg.embed_dim, image_size=args.image_size), rngs=nnx.Rngs(1))
        text_table = np.random.default_rng(0).standard_normal((1, head.cfg.text_dim)).astype(np.float32)
        weights = "random"

    # the trainer's step, placed on a one-device mesh as segic_jax.training.trainer.Trainer places it;
    # float32 is configs/segic.py:paper (every matmul full precision, as PyTorch's float32), bfloat16
    # is paper_bf16 (bf16 encoders, XLA's default precision): the two rows are the switch's effect
    mesh = mesh_lib.make_mesh(1)
    options = train_lib.StepOptions(remat_rows=remat_rows, precision=matmul_precision(dtype))
    placed, params, opt_state = mesh_lib.place_step(mesh, head, encoder, text_table, train_lib.optimizer(LEARNING_RATE), options)
    train_step, rest = placed.run, placed.rest
    encoder_state, text_table, batch_sharding = placed.encoder_state, placed.text_table, mesh_lib.batch_sharding(mesh)

    arrays = dict(np.load(os.path.join(workdir, BATCH_FILE)))
    b, k, size = arrays["target_masks"].shape[:3]
    arrays.update(
        valid=np.ones((b, k), bool), target_hw=np.full((b, 2), size, np.int32),
        reference_hw=np.full((b, 2), size, np.int32), target_prompt=np.zeros(b, np.int32),
        reference_prompt=np.zeros(b, np.int32),
    )
    batch = {name: jax.device_put(v, batch_sharding) for name, v in arrays.items()}
    base_key = jax.random.key(0)

    t = time.perf_counter()
    compiled = train_step.lower(params, rest, opt_state, encoder_state, text_table, batch, base_key).compile()
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
    plan = compiled.memory_analysis()

    state = {"params": params, "opt_state": opt_state, "step": 0}

    def step():
        key = jax.random.fold_in(base_key, state["step"])
        state["params"], state["opt_state"], out = compiled(
            state["params"], rest, state["opt_state"], encoder_state, text_table, batch, key
        )
        state["step"] += 1
        return out.loss

    sync = lambda: jax.block_until_ready((state["params"], state["opt_state"]))
    times, first = timed_steps(step, args.steps, memory, sync)
    measured = memory.result()
    peaks = next((p for name, p in PEAKS.items() if name in device.device_kind), None)
    return dict(
        times=times, loss=float(first), **measured, flops=flops, compile_s=compile_s,
        xla_temp_mb=plan.temp_size_in_bytes / 2**20 if plan else None, weights=weights,
        peak_tflops=peaks and peaks.get("bf16" if dtype_name == "bfloat16" else "tf32"),
        device=f"{device.device_kind} (JAX {jax.__version__})",
    )


# --- the driver -----------------------------------------------------------------------------


def spawn(worker: str, workdir: str) -> dict | None:
    """Run this script as `worker` in a fresh process; its result, or None if it failed."""
    argv = [*sys.argv[1:], "--worker", worker, "--workdir", workdir]
    env = dict(os.environ)
    env.setdefault("CUDA_VISIBLE_DEVICES", "0")  # one GPU on both sides, as train.py uses one per process
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv], env=env)
    path = os.path.join(workdir, f"{worker}.json")
    if proc.returncode or not os.path.isfile(path):
        print(f"{worker}: failed (exit status {proc.returncode}; its error is above)", flush=True)
        return None
    with open(path) as f:
        return json.load(f)


def report(args, results: dict) -> None:
    original = results.get("original")
    print(f"\nSEGIC training step, DINOv2 {args.arch} at {args.image_size} px, batch {args.batch} pairs x "
          f"{args.instances} instances, reverse context, 12544 loss points; median of {args.steps} steps"
          + (f"; each pinned to {args.cpus} CPU core(s)" if args.cpus else ""))
    for name, r in results.items():
        print(f"  {name}: {r['device']}; memory: {r['memory']}")
    print(f"{'implementation':>26} {'encoder':>9} {'step ms':>9} {'steps/s':>8} {'vs original':>12} "
          f"{'peak MiB':>9} {'step MiB':>9} {'TFLOP/s':>8} {'% of peak':>10} {'first loss':>11}")

    def row(name, dtype, times, r=None, loss=None):
        t = statistics.median(times)
        ratio = f"{statistics.median(original['times']) / t:.2f}x" if original else "-"
        peak, step = (f"{r['peak_mb']:.0f}", f"{r['step_mb']:.0f}") if r else ("", "")
        tflops = r and r.get("flops") and r["flops"] / t / 1e12
        rate = f"{tflops:.3f}" if tflops else ""
        share = f"{100 * tflops / r['peak_tflops']:.1f}" if tflops and r.get("peak_tflops") else ""
        loss = f"{loss:.4f}" if loss is not None else ""
        print(f"{name:>26} {dtype:>9} {1e3 * t:>9.1f} {1 / t:>8.2f} {ratio:>12} {peak:>9} {step:>9} {rate:>8} "
              f"{share:>10} {loss:>11}")

    if original:
        row("original", "float32", original["times"], original, original["loss"])
        row("original, anomaly det.", "float32", original["anomaly_times"])
        if original.get("autocast_times"):
            row("original, bf16 autocast", "autocast", original["autocast_times"])
    ours = [(dtype, rows, results.get(f"ours-{dtype}-{rows}")) for dtype in args.dtypes for rows in args.remat_rows]
    label = lambda rows: f"segic-jax, remat {rows} rows" if rows else "segic-jax"
    for dtype, rows, r in ours:
        if r:
            row(label(rows), dtype, r["times"], r, r["loss"])
    for dtype, rows, r in ours:
        if r:
            temp = f", XLA temporaries {r['xla_temp_mb']:.0f} MiB" if r["xla_temp_mb"] is not None else ""
            print(f"  {label(rows)} {dtype}: {r['flops'] / 1e9:.1f} GFLOP per step (XLA cost analysis; a "
                  f"rematerialised loop body counts once), compiled in {r['compile_s']:.1f} s{temp}, weights {r['weights']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--original", help="checkout of MengLcool/SEGIC (omit to measure this port only)")
    parser.add_argument("--dinov2-repo", help="checkout of facebookresearch/dinov2 (needed with --original)")
    parser.add_argument("--arch", default="vits14", choices=["vits14", "vitb14", "vitl14", "vitg14"])
    parser.add_argument("--image-size", type=int, default=224, help="a multiple of 28")
    parser.add_argument("--batch", type=int, default=2, help="target/reference pairs per step")
    parser.add_argument("--instances", type=int, default=3, help="instance masks per pair")
    parser.add_argument("--steps", type=int, default=10, help="timed steps, after 2 warm-up steps")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"],
                        help="our frozen encoder's compute dtype")
    parser.add_argument("--remat-rows", type=int, nargs="+", default=[0],
                        help="ours with the decoder's rows rematerialised in chunks of this many (0: off); one run each")
    parser.add_argument("--cpus", type=int, help="pin each implementation to this many CPU cores (default: all); on a "
                        "shared machine 1 avoids PyTorch's threads stalling on one another")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.original and not args.dinov2_repo:
        parser.error("--original needs --dinov2-repo (the original loads DINOv2 with torch.hub)")
    if args.image_size % 28:
        parser.error(f"--image-size must be a multiple of 28 (an even feature grid), got {args.image_size}")

    if args.worker:
        if args.cpus:  # before torch / XLA size their thread pools from the affinity mask
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cpus])
        if args.worker == "original":
            result = run_original(args, args.workdir)
        elif args.worker == "convert":
            result = run_convert(args, args.workdir)
        else:
            _, dtype, rows = args.worker.split("-")
            result = run_ours(args, args.workdir, dtype, int(rows))
        with open(os.path.join(args.workdir, f"{args.worker}.json"), "w") as f:
            json.dump(result, f)
        return

    workdir = tempfile.mkdtemp(prefix="segic_train_bench_")
    try:
        np.savez(os.path.join(workdir, BATCH_FILE), **make_batch(args.batch, args.instances, args.image_size))
        results = {}
        if args.original:
            results["original"] = spawn("original", workdir)
            if results["original"] is not None and spawn("convert", workdir) is None:
                raise SystemExit("the original's weights could not be converted")
        for dtype in args.dtypes:
            for rows in args.remat_rows:
                results[f"ours-{dtype}-{rows}"] = spawn(f"ours-{dtype}-{rows}", workdir)
        report(args, {k: v for k, v in results.items() if v is not None})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
