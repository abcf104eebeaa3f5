"""What XLA:CPU's options do to this port's DINOv2 forward, against PyTorch in the same run.

    python benchmarks/xla_cpu_flags.py --arch vits14 --sizes 448 896
    python benchmarks/xla_cpu_flags.py --arch vits14 --sizes 896 --set= --set=--xla_cpu_use_onednn=true

Each flag set runs in its own process (XLA reads XLA_FLAGS once, at start): float32 with
full-precision matmuls, batch 1, random weights, the attention this project picks on the CPU.
Printed per size: images/s, the ratio to PyTorch's `Dinov2Model` (SDPA attention, same weights'
shapes) timed in this run, and the largest difference of the patch features from those of the first
flag set (a flag that trades accuracy for speed shows there). A flag this jaxlib does not know ends
its process; its row says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

# XLA:CPU options of jaxlib 0.10 that bear on matmul and attention speed (the first is the baseline)
DEFAULT_FLAGS = (
    "",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_prefer_vector_width=512",
    "--xla_cpu_enable_fast_math=true",
    "--xla_cpu_multi_thread_eigen=false",
)


def child(arch: str, sizes: list[int], iters: int, out: str) -> None:
    """Time this port's forward at each size under the XLA_FLAGS this process started with."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from dinov2_forward import _time
    from segic_jax.models import dinov2

    cfg = dinov2.dinov2_config(arch)
    graphdef, state = nnx.split(dinov2.Dinov2(cfg, dtype=jnp.float32, rngs=nnx.Rngs(0)))

    @jax.jit
    def forward(state, x):
        return nnx.merge(graphdef, state)(x).patch_tokens

    result = {}
    for size in sizes:
        x = jax.random.uniform(jax.random.key(1), (1, size, size, 3), jnp.float32, -2, 2)
        with jax.default_matmul_precision("highest"):
            features = np.asarray(forward(state, x))  # compiles outside the timing
            seconds = _time(lambda: forward(state, x).block_until_ready(), iters)
        np.save(f"{out}.{size}.npy", features)
        result[size] = seconds
    with open(out, "w") as f:
        json.dump(result, f)


def torch_seconds(arch: str, size: int, iters: int) -> float:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from dinov2_forward import bench_torch
    from segic_jax.models import dinov2

    return bench_torch(dinov2.dinov2_config(arch), size, 1, "fp32", iters, "cpu")


def main():
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="vits14")
    parser.add_argument("--sizes", type=int, nargs="+", default=[448, 896])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--set", action="append", dest="flags", metavar="XLA_FLAGS",
                        help="one XLA_FLAGS value to time, as --set=... (repeat it; the first is the baseline; "
                             "default: the sets in DEFAULT_FLAGS)")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.flags = list(DEFAULT_FLAGS) if args.flags is None else args.flags
    if args.child:
        return child(args.arch, args.sizes, args.iters, args.child)

    base_env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    print(f"DINOv2 {args.arch} forward, float32, batch 1, CPU ({os.cpu_count()} cores); images/s (x PyTorch) [max |feature diff| vs first row]")
    torch_rate = {s: 1.0 / torch_seconds(args.arch, s, args.iters) for s in args.sizes}
    print(f"{'XLA_FLAGS':<78}" + "".join(f"{s:>26}" for s in args.sizes))
    print(f"{'PyTorch (SDPA)':<78}" + "".join(f"{torch_rate[s]:>26.3f}" for s in args.sizes))
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for i, flags in enumerate(args.flags):
            out = os.path.join(tmp, f"run{i}.json")
            env = dict(base_env, XLA_FLAGS=flags) if flags else base_env
            done = subprocess.run([sys.executable, os.path.abspath(__file__), "--arch", args.arch, "--iters", str(args.iters),
                                   "--sizes", *map(str, args.sizes), "--child", out], env=env, capture_output=True, text=True)
            label = flags or "(none: XLA's defaults)"
            if done.returncode:
                reason = (done.stderr.strip().splitlines() or ["no output"])[-1][:120]
                print(f"{label:<78} failed: {reason}")
                continue
            with open(out) as f:
                seconds = {int(k): v for k, v in json.load(f).items()}
            features = {s: np.load(f"{out}.{s}.npy") for s in args.sizes}
            first = first or features
            cells = []
            for s in args.sizes:
                rate = 1.0 / seconds[s]
                diff = float(np.abs(features[s] - first[s]).max())
                cells.append(f"{rate:.3f} ({rate / torch_rate[s]:.2f}x) [{diff:.1e}]")
            print(f"{label:<78}" + "".join(f"{c:>26}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
