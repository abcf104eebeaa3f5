"""Host overhead of converted-checkpoint inference: milliseconds of host work per episode.

    python benchmarks/host_overhead.py --sizes 224 448 896

The device's share is kept small: a SEGIC with a one-block, 32-wide DINOv2 and a one-layer CLIP text
model (random weights) at the given model size. An episode's wall time (the Predictor API, batch 1,
640x480 reference and target) less the time of the same episode's device programs alone on inputs
already on the device (encoder, mask sums, decoder: `segic_inference.device_time`) is what the
predictor costs around them: preparing inputs (the evaluation resize of the image and its mask,
padding), dispatching, copying results back and post-processing them (crop, resize to 640x480,
threshold). Medians of --repeats. On a CPU the "device" is the same cores, so what the host does
while the device computes still costs time here; on an accelerator the host's share that does not
overlap the device's bounds the episode rate: host ms -> at most 1000 / ms episodes/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def tiny_predictor(size: int):
    import jax.numpy as jnp
    from flax import nnx

    from segic_jax.inference.predictor import Predictor
    from segic_jax.models import clip_text, dinov2
    from segic_jax.models.segic import SegicConfig, SegicHead

    encoder = dinov2.Dinov2(dinov2.dinov2_config("vits14", depth=1, embed_dim=32, num_heads=1), rngs=nnx.Rngs(0))
    vocab = clip_text.byte_vocab()
    text = clip_text.ClipTextModel(clip_text.ClipTextConfig(
        vocab_size=len(vocab), width=32, depth=1, num_heads=1, mlp_dim=64, eos_token_id=vocab[clip_text.EOS_TOKEN],
    ), dtype=jnp.float32, rngs=nnx.Rngs(1))
    head = SegicHead(SegicConfig(vision_dim=32, text_dim=32, image_size=size), rngs=nnx.Rngs(2))
    return Predictor(head, encoder, text, clip_text.ClipTokenizer.bytes_only(), batch_size=1)


def median_ms(fn, repeats: int) -> float:
    fn()
    fn()  # compiled, caches warm
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 896])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import jax

    rng = np.random.default_rng(0)
    ref, target = (rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(2))
    mask = np.zeros((480, 640), bool)
    mask[100:300, 200:450] = True
    print(f"host ms per episode (batch 1, 640x480 images, negligible model) on {jax.devices()[0].device_kind}, "
          f"JAX {jax.__version__}")
    from segic_inference import device_time

    print(f"{'size':>5} {'context':>9} {'episode ms':>11} {'device ms':>10} {'host ms':>8}")
    for size in args.sizes:
        predictor = tiny_predictor(size)
        context = predictor.encode_context([ref], [mask])
        runs = {
            "uncached": lambda: predictor.segment([target], predictor.encode_context([ref], [mask]))[0].masks,
            "cached": lambda: predictor.segment([target], context)[0].masks,
        }
        for name, fn in runs.items():
            wall = median_ms(fn, args.repeats)
            device = 1e3 * device_time(predictor, ref, mask, target, args.repeats, uncached=name == "uncached")
            print(f"{size:>5} {name:>9} {wall:>11.1f} {device:>10.1f} {wall - device:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
