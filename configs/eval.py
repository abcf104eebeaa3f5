"""Benchmark evaluation configurations (segic_jax/evaluation/evaluate.py).

    python main.py --mode eval --config configs/eval.py:paper \
        --config.checkpoint=ckpt/segic --config.data_dir=data --workdir out/eval

Variants after the colon:
  paper      every benchmark of the paper at 896 px (the converted checkpoint's size), 1-shot and
             5-shot, the protocols' episode counts, the original's episode sampling (HSNet's COCO-20i
             lists when coco20i_semantic was built with them, query_as_support), plus coco2017, the
             original README's COCO command, YouTube-VOS with the first annotation's objects only
             (late_objects=False); needs the built datasets (python -m segic_jax.data.build ...) in
             --config.data_dir.
  synthetic  the synthetic_incontext held-out classes at tiny sizes (the `tiny` build), one-shot:
             a check that runs in seconds, and what training evaluates periodically.
  custom     your own dataset's test split, 1-shot and 5-shot (--config.custom_dataset=user_masks/NAME,
             a user_coco, user_masks or user_folders build; docs/your_data.md).
Shard over separate runs with --config.shard_index=i --config.shard_count=n and the same workdir; a
run with shard_count=1 afterwards merges the records (it evaluates nothing already done). The
processes of a multi-process job (README, Several hosts) split the work by themselves.
"""

import ml_collections

VARIANTS = {
    "paper": dict(
        benchmarks=("coco20i", "coco2017", "fss1000", "lvis92i", "ade20k", "davis2017", "youtube_vos"),
        shots=(1, 5), image_size=896, episodes=0, synthetic_dataset="synthetic_incontext", chunk_size=50,
        batch_size=8,
    ),
    "synthetic": dict(
        benchmarks=("synthetic",), shots=(1,), image_size=0, episodes=16,
        synthetic_dataset="synthetic_incontext/tiny", chunk_size=4, batch_size=1,
    ),
    "custom": dict(
        benchmarks=("custom",), shots=(1, 5), image_size=0, episodes=0,
        synthetic_dataset="synthetic_incontext", chunk_size=50, batch_size=8,
    ),
}


def get_config(variant: str = "paper") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of configs/eval.py; choose one of {sorted(VARIANTS)}")
    v = VARIANTS[variant]
    c = ml_collections.ConfigDict()
    c.checkpoint = ""  # converted SEGIC directory (python -m segic_jax.convert segic ...); required
    c.data_dir = "data"  # where the datasets were built (TFDS data_dir)
    # coco20i coco2017 fss1000 lvis92i ade20k synthetic custom davis2017 youtube_vos
    c.benchmarks = v["benchmarks"]
    c.shots = v["shots"]  # few-shot benchmarks run once per shot count; ade20k and video once
    c.folds = ()  # coco20i / lvis92i folds to run; empty: all (4 / 10)
    c.episodes = v["episodes"]  # per fold; 0: the protocol's count (fss1000, ade20k: every image)
    c.seed = 0  # episode lists and the ADE20K reference choice
    # lvis92i / coco2017: True is the original's reference choice, where a class with no more than
    # `shots` other images (one shot: a class in exactly two images) is referenced by the query
    # itself; False draws only other images. results.md says which was used.
    c.query_as_support = True
    c.image_size = v["image_size"]  # checked against the checkpoint; 0: whatever it was converted for
    c.dtype = "float32"  # or bfloat16
    # one-shot episodes per device batch (their references, then their queries, in one encoder call
    # each; k-shot and ADE20K episodes go one at a time, in batches of this many images)
    c.batch_size = v["batch_size"]
    c.baseline_threshold = 0.5  # propagated-mask baseline: similarity > this
    c.ade20k_reference_min_area = 0.05  # reference choice rule (eval_episodes.ade20k_references)
    c.synthetic_dataset = v["synthetic_dataset"]  # build of synthetic_incontext to evaluate
    c.custom_dataset = ""  # the `custom` benchmark's dataset: your build, e.g. user_masks/pets
    c.vos_memory = "first_latest"  # video: which past frames are references
    # youtube_vos: False is the paper's protocol (the original reads only each video's first
    # annotation, so objects that appear later are never segmented); True also tracks each later
    # object from its first mask. DAVIS 2017 always uses its first frame's objects, as the original.
    c.late_objects = False
    c.shard_index = 0
    c.shard_count = 1
    c.chunk_size = v["chunk_size"]  # episodes per records file: at most this much is redone after a stop
    c.plot = True  # per-class IoU plots
    return c
