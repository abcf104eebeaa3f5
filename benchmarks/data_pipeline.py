"""Training-episode throughput of the grain pipelines at the model size, per worker process and
with several workers.

    python benchmarks/data_pipeline.py --size 896 --workers 0 1 2 --episodes 40

Builds the synthetic dataset (default config, 256 px scenes) into a temporary folder unless
--data_dir holds it already, and times instance episodes and the instance + semantic-style mixture
(COCO-like instance sampling twice, as the reference's four-way mixture is half instance data).
"workers 0" runs in the calling process; with N > 0, grain's multiprocessing prefetch uses N
worker processes. Prints episodes/s and the per-worker rate.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from segic_jax.data import build as build_cli
from segic_jax.data import episodes
from segic_jax.data.sources import data_source


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=896)
    parser.add_argument("--max-instances", type=int, default=19)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--data_dir", default=None)
    args = parser.parse_args()

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="segic_data_")
    if not os.path.isdir(os.path.join(data_dir, "synthetic_incontext")):
        build_cli.build("synthetic_incontext", None, data_dir)
    source = data_source("synthetic_incontext", "train", data_dir)
    sampler = episodes.InstanceSampler(source, args.size, args.max_instances)
    print(f"instance episodes at {args.size} px, up to {args.max_instances} instances, {os.cpu_count()} CPUs")
    print(f"{'workers':>8} {'episodes/s':>11} {'per worker':>11}")
    for workers in args.workers:
        ds = episodes.episode_stream([sampler], batch_size=None, seed=0, samples_per_epoch=10**6)
        it = episodes.iterator(ds, workers=workers)
        for _ in range(max(2, workers * 2)):  # start-up and first fills outside the timing
            next(it)
        t = time.perf_counter()
        for _ in range(args.episodes):
            episode = next(it)
        rate = args.episodes / (time.perf_counter() - t)
        assert episode["target_image"].shape == (args.size, args.size, 3)
        print(f"{workers:>8} {rate:>11.2f} {rate / max(workers, 1):>11.2f}", flush=True)
        del it
    np.random.default_rng(0)


if __name__ == "__main__":
    main()
