"""Which attention implementation to use where: one DINOv2 block's attention (B, N, heads x 64),
XLA's `jax.nn.dot_product_attention` against `ops.attention.chunked_attention` at several query-chunk
sizes, forward and gradient, timed in the same run on the default device.

    python benchmarks/attention.py                                   # DINOv2-S and -L at 224/448/896 px
    python benchmarks/attention.py --heads 16 --tokens 4097 --dtype bfloat16

Prints, per (heads, tokens): milliseconds (minimum of --repeats calls after a warm-up) and the
ratio xla / chunked (> 1: the chunked path is faster), and the compiled program's temporary memory
(XLA's buffer assignment). The choice in `ops.attention.attention_implementation` and
`CHUNK_QUERIES` follows this table (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segic_jax.ops import attention  # noqa: E402


def measure(fn, args, repeats: int) -> tuple[float, float]:
    """(minimum milliseconds per call, temporary MB of the compiled program)."""
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * min(times), compiled.memory_analysis().temp_size_in_bytes / 1e6


def program(impl: str, chunk: int, heads: int, gradient: bool):
    def forward(q, k, v):
        if impl == "chunked":
            split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1)  # noqa: E731
            return attention.chunked_attention(split(q), split(k), split(v), chunk=chunk).reshape(q.shape)
        with attention.force_implementation("xla"):
            return attention.multi_head_attention(q, k, v, heads)

    if not gradient:
        return forward
    return jax.grad(lambda q, k, v: jnp.sum(forward(q, k, v) ** 2), argnums=(0, 1, 2))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, nargs="+", default=[6, 16], help="6: ViT-S/14, 16: ViT-L/14 (64 wide each)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[257, 1025, 4097], help="224, 448, 896 px")
    parser.add_argument("--chunks", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--gradient", action="store_true", help="time the gradient instead of the forward pass")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    dtype = jnp.dtype(args.dtype)
    print(f"{jax.devices()[0].device_kind}, {args.dtype}, batch {args.batch}, "
          f"{'gradient' if args.gradient else 'forward'}; ms (temporary MB); ratio = xla / chunked")
    rng = np.random.default_rng(0)
    with jax.default_matmul_precision("highest" if dtype == jnp.float32 else "default"):
        for heads in args.heads:
            for n in args.tokens:
                q, k, v = (jnp.asarray(rng.standard_normal((args.batch, n, heads * 64)), dtype) for _ in range(3))
                base, base_mb = measure(program("xla", 0, heads, args.gradient), (q, k, v), args.repeats)
                cells = [f"xla {base:8.1f} ({base_mb:6.0f})"]
                for chunk in sorted({min(c, n) for c in args.chunks}):  # n: one chunk, all queries at once
                    t, mb = measure(program("chunked", chunk, heads, args.gradient), (q, k, v), args.repeats)
                    cells.append(f"chunk {chunk:4d} {t:8.1f} ({mb:5.0f}) {base / t:4.2f}x")
                print(f"heads {heads:2d} tokens {n:4d}: " + " | ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
