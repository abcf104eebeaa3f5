"""The benchmarks `python main.py --mode eval` knows: for each, the dataset and split it reads,
its folds and episode count, and its protocol text (results.json and results.md state it with the
settings used). The evaluation itself is `segic_jax.evaluation.evaluate`.

This module imports nothing heavy, so that configuration checks can list the benchmarks without
loading the predictor or the data sources.
"""

from __future__ import annotations

import dataclasses


def baseline_protocol(threshold: float) -> str:
    return (
        f"propagated-mask baseline: the prediction is the propagated mask (cosine similarity between each "
        f"target pixel's DINOv2 feature and the mean feature of the reference mask, SEGIC's dense prompt) "
        f"above {threshold:g}, with no decoder: what the frozen encoder's correspondence alone achieves, the "
        f"floor the trained decoder has to beat. The default 0.5 keeps pixels whose feature lies within 60 "
        f"degrees of the reference's; it is fixed, not tuned on the evaluated episodes, so that the baseline "
        f"does not borrow from the test labels."
    )


@dataclasses.dataclass(frozen=True)
class Benchmark:
    dataset: str  # built TFDS dataset (`python -m segic_jax.data.build`)
    split: str
    folds: int  # 0: no folds
    episodes: int  # per fold; 0: every image of the split once
    protocol: str


BENCHMARKS = {
    "coco20i": Benchmark(
        "coco20i_semantic", "val", 4, 1000,
        "COCO-20i (HSNet folds: fold f = classes {f + 4v}), COCO 2014 val; per fold 1000 seeded episodes "
        "(seed + fold): class uniform among the fold's classes, query uniform among its pool, supports other "
        "images of the pool; text 'a photo of a {class}' with the original's 80 names (VOC-style motorbike, "
        "aeroplane, sofa, pottedplant, diningtable, tvmonitor). mIoU over the fold's classes and FB-IoU per fold, "
        "and their means over the folds. A checkpoint trained on all 80 classes makes this the 'generalist' "
        "setting (docs/benchmarks.md), not the held-out-fold one.",
    ),
    "coco2017": Benchmark(
        "coco_instances", "val", 0, 0,
        "COCO 2017 val as the original README's `--eval_datasets coco` runs it: every image with annotations is "
        "the query once; class uniform among its categories, mask = the union of that category's instances, "
        "supports other val images with the category; text 'a photo of a {category}' with the annotation "
        "file's names. mIoU over the categories.",
    ),
    "fss1000": Benchmark(
        "fss1000", "test", 0, 0,
        "FSS-1000 test classes (240, sorted folder names): every test image is the query once (2400 "
        "episodes), supports other images of its class; masks read as grayscale, >= 128 is foreground; an "
        "episode whose query or support differs in size from its mask is replaced by the next image's, as the "
        "original does; text = the folder name. mIoU over the classes.",
    ),
    "lvis92i": Benchmark(
        "lvis_instances", "val", 10, 2300,
        "LVIS-92i, LVIS v1 val: categories annotated in more than one image, sorted by id, fold f = "
        "categories[f::10]; per fold 2300 seeded episodes chosen as the SEGIC code does (class uniform over "
        "the fold, then a query image of it, then supports), not the Matcher variant (class = episode index "
        "mod classes). Mask = union of the class's instances; text 'a photo of a {category}'. mIoU per fold "
        "and the mean of the folds.",
    ),
    "synthetic": Benchmark(
        "synthetic_incontext", "test", 0, 1000,
        "synthetic_incontext test split, whose classes are all held out from its train split: seeded "
        "episodes as LVIS-92i (class uniform, query, supports other images), mask = union of the class's "
        "objects, text 'a photo of a {class}'. mIoU over the classes.",
    ),
    "custom": Benchmark(
        "", "test", 0, 1000,
        "your dataset's test split (a user_coco, user_masks or user_folders build; held-out images, or "
        "classes the train split never shows when built with --split_by classes): seeded episodes as "
        "LVIS-92i (class uniform among the test classes, a query image of it, supports other test images of "
        "it), mask = the union of the class's objects, text 'a photo of a {class}' with your class names. "
        "mIoU over the classes.",
    ),
    "ade20k": Benchmark(
        "ade20k_semantic", "val", 0, 0,
        "ADE20K-150 in-context semantic segmentation (docs/original.md 5.3): every val image once; per image "
        "only the classes present in its ground truth are decoded, all jointly (cross-instance tokens), each "
        "with 'a photo of a {class}' (the original's 150 names) and its reference's feature (soft reference "
        "mask, as the reference's semantic path). References: one real training image per class chosen by "
        "`eval_episodes.ade20k_references` (SEGIC's Stable-Diffusion references were never released, so this "
        "number is not the paper's protocol). Per class the binary mask logit > 0 is scored against "
        "label == class ('other' = 0 counts as background, 255 is void); mIoU over the classes seen.",
    ),
}
# benchmarks whose reference choice `query_as_support` switches
QUERY_AS_SUPPORT = ("lvis92i", "coco2017")


def protocol(benchmark: str, *, query_as_support: bool, pools: str | None = None) -> str:
    """The benchmark's protocol text, with the settings this run used and whether they are the
    original's (the paper's) protocol. pools: what coco20i's episode pools were built from
    (`sources.episode_pools`)."""
    text = BENCHMARKS[benchmark].protocol
    if benchmark in QUERY_AS_SUPPORT:
        text += (" Reference choice: query_as_support=True, the original's (a class with no more than `shots` "
                 "other images, e.g. one in exactly two images for one shot, is referenced by the query itself)."
                 if query_as_support else
                 " Reference choice: query_as_support=False, a support is never the query (classes without enough "
                 "other images are left out); the original's protocol is query_as_support=True.")
    if benchmark == "coco20i":
        text += (" Pools: HSNet's val lists (data/splits/coco/val/fold*.pkl), the paper's protocol." if pools == "hsnet"
                 else " Pools: every image containing the class, because the dataset was built without HSNet's "
                      "lists; NOT the paper's protocol (rebuild coco20i_semantic with --splits_dir).")
    return text


VIDEO = {
    "davis2017": "DAVIS 2017 val, semi-supervised (first-frame masks), J&F; see segic_jax.evaluation.vos.",
    "youtube_vos": "YouTube-VOS 2018 valid: palette PNGs for the challenge server; see segic_jax.evaluation.vos.",
}
KNOWN = sorted(BENCHMARKS) + sorted(VIDEO)


def video_protocol(benchmark: str, *, late_objects: bool) -> str:
    """A video benchmark's protocol text with the `late_objects` setting this run used and whether it
    is the original's (the paper's). The original reads only each video's first annotation file: on
    DAVIS 2017 every object is in it; on YouTube-VOS an object first annotated later is never
    segmented."""
    text = VIDEO[benchmark]
    if benchmark == "davis2017":
        return text + " Objects: those of the first frame's mask, as the original (late_objects does not apply)."
    if late_objects:
        return text + (" Objects: late_objects=True, an object first annotated after the video's first annotation "
                       "joins at its first mask and is tracked from there; NOT the paper's protocol "
                       "(late_objects=False).")
    return text + (" Objects: late_objects=False, only those of each video's first annotation, the paper's "
                   "protocol (the original reads only that annotation; objects appearing later are never "
                   "segmented).")


def check_benchmark(benchmark: str) -> None:
    if benchmark not in BENCHMARKS and benchmark not in VIDEO:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {KNOWN}")


def folds(benchmark: str, asked) -> list[int | None]:
    """The folds of `benchmark` to evaluate: those asked for (checked), every fold when none are,
    [None] for a benchmark without folds."""
    n = BENCHMARKS[benchmark].folds
    if not n:
        return [None]
    if not asked:
        return list(range(n))
    bad = [f for f in asked if f not in range(n)]
    if bad:
        raise ValueError(f"{benchmark} has folds 0..{n - 1}, not {bad}")
    return list(asked)
