"""Build one of SEGIC's datasets as TFDS array_record shards from the files you have.

    python -m segic_jax.data.build coco_instances --manual_dir ~/data/coco --data_dir data/
    python -m segic_jax.data.build lvis_instances --manual_dir ~/data/lvis --data_dir data/
    python -m segic_jax.data.build synthetic_incontext --data_dir data/     # built-in, no files needed
    python -m segic_jax.data.build synthetic_incontext/tiny --data_dir data/

TFDS writes into a temporary folder and renames it when the build is complete, so an interrupted
build leaves nothing that reads as a dataset.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

NEEDS_NO_FILES = {"synthetic_incontext"}
# what each dataset is built from (the builder modules' docstrings give the full layouts)
SOURCES = {
    "synthetic_incontext": "built in, no files (configs: default, tiny)",
    "coco_instances": "COCO 2017: annotations/instances_{train,val}2017.json, {train,val}2017/",
    "lvis_instances": "LVIS v1: lvis_v1_{train,val}.json, COCO 2017 {train,val}2017/",
    "ade20k_semantic": "ADEChallengeData2016: images/, annotations/",
    "coco20i_semantic": "COCO 2014: annotations/instances_{train,val}2014.json, {train,val}2014/, and HSNet's "
                        "split lists (splits/coco/{trn,val}/fold{0..3}.pkl, or --splits_dir) for the paper's protocol",
    "fss1000": "FSS-1000: <class>/N.jpg + N.png, splits/{trn,val,test}.txt",
    "davis2017": "DAVIS 2017: JPEGImages/480p, Annotations/480p, ImageSets/2017",
    "youtube_vos": "YouTube-VOS 2018: {train,valid}/{JPEGImages,Annotations,meta.json}",
}
DEFAULT_DATA_DIR = "data"


@contextlib.contextmanager
def quiet_tfds(builder=None):
    """TFDS announces "Downloading and preparing dataset ..." and warns about the half-made folder it
    is about to fill; these builders download nothing, so both only mislead. Other warnings and
    errors still show."""
    from absl import logging

    level = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    if builder is not None:  # the two announcements are methods of the builder: silence them on this one
        builder._log_download_bytes = lambda: None
        builder._log_download_done = lambda: None
    try:
        yield
    finally:
        logging.set_verbosity(level)


def make_builder(name: str, data_dir: str):
    """The TFDS builder of `name` (a dataset, optionally with a config after a slash) over `data_dir`."""
    from segic_jax.data.builders import builder_class

    builder_cls = builder_class(name)
    _, _, config = name.partition("/")
    kwargs = {"config": config} if config else {}
    with quiet_tfds():
        return builder_cls(data_dir=data_dir, file_format="array_record", **kwargs)


def is_built(name: str, data_dir: str) -> bool:
    builder = make_builder(name, data_dir)
    with quiet_tfds():
        return builder.is_prepared()


def build(name: str, manual_dir: str | None, data_dir: str, *, progress: bool = True,
          splits: list[str] | None = None, splits_dir: str | None = None):
    """`name` is a dataset, optionally with a config after a slash (synthetic_incontext/tiny).
    `splits` limits the build to those splits (default: all of the dataset's, each of which must be
    present under `manual_dir`). A dataset built earlier without a split asked for now is built again
    with its earlier splits and the new ones. `progress` shows TFDS's progress bars per split.
    `splits_dir`: HSNet's data/splits folder, for coco20i_semantic (default: manual_dir/splits)."""
    import tensorflow_datasets as tfds

    from segic_jax.data.builders.common import require_dir

    dataset = name.partition("/")[0]
    builder = make_builder(name, data_dir)
    if splits_dir is not None:
        if not hasattr(builder, "splits_dir"):
            raise ValueError(f"--splits_dir is for coco20i_semantic (HSNet's lists), not {dataset}")
        builder.splits_dir = splits_dir
    mode = None
    if dataset not in NEEDS_NO_FILES:
        if not manual_dir:
            raise ValueError(f"{dataset} is built from your files: give --manual_dir")
        require_dir(manual_dir, f"--manual_dir of {dataset}")
        builder.requested_splits = list(splits) if splits else None
        wanted = _check_layout(builder, manual_dir)
        with quiet_tfds():
            built = set(builder.info.splits) if builder.is_prepared() else None
        if built is not None and not wanted <= built:  # complete it, keeping the splits it has
            builder.requested_splits = sorted(built | wanted)
            _check_layout(builder, manual_dir)
            mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
    _remove_stale_incomplete(builder)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir, **({"download_mode": mode} if mode else {}))
    with quiet_tfds(builder), (contextlib.nullcontext() if progress else _no_progress_bars()):
        builder.download_and_prepare(download_config=download_config)
    return builder


def ensure_builtin(names, data_dir: str) -> None:
    """Build each dataset of `names` that needs no files (the synthetic one) on first use; the others
    must have been built (reading them says how)."""
    for name in sorted(set(names)):
        if name.partition("/")[0] in NEEDS_NO_FILES and not is_built(name, data_dir):
            print(f"building the built-in dataset {name} in {data_dir} (once)", flush=True)
            start = time.time()
            builder = build(name, None, data_dir, progress=False)
            sizes = ", ".join(f"{k} {v.num_examples}" for k, v in builder.info.splits.items())
            print(f"built {name} ({sizes} scenes) in {time.time() - start:.0f} s", flush=True)


def _check_layout(builder, manual_dir: str) -> set[str]:
    """The splits the builder will make, after its layout checks for each: they run before anything is
    written (the examples are generated lazily), so a missing file fails before TFDS would delete an
    earlier build to make this one."""
    import types

    return set(builder._split_generators(types.SimpleNamespace(manual_dir=manual_dir)))


def _remove_stale_incomplete(builder) -> None:
    """TFDS writes a build into `incomplete.*` beside the dataset and renames it when done; a killed
    build leaves it behind. Remove those (builds of one dataset are not run side by side)."""
    import shutil

    parent = os.path.dirname(os.fspath(builder.data_path))
    if os.path.isdir(parent):
        for entry in os.listdir(parent):
            if entry.startswith("incomplete."):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


@contextlib.contextmanager
def _no_progress_bars():
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.utils import tqdm_utils

    previous = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        tfds.display_progress_bar(previous)


def _parser() -> argparse.ArgumentParser:
    width = max(len(k) for k in SOURCES)
    datasets = "\n".join(f"  {k.ljust(width)}  {v}" for k, v in SOURCES.items())
    parser = argparse.ArgumentParser(
        prog="python -m segic_jax.data.build",
        description=__doc__.split("\n")[0],
        epilog=f"datasets (NAME):\n{datasets}\n\nThe module docstrings in segic_jax/data/builders/ give each layout.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", metavar="NAME", help="dataset[/config], e.g. coco_instances or synthetic_incontext/tiny")
    parser.add_argument("--manual_dir", help="the dataset's files, in the layout its builder reads (all but synthetic_incontext)")
    parser.add_argument("--splits", help="comma-separated splits to build, when you have only some (default: all of "
                                         "the dataset's, each required)")
    parser.add_argument("--splits_dir", help="coco20i_semantic: HSNet's data/splits folder, whose coco/{trn,val}/fold*.pkl "
                                             "lists give the paper's episode pools (default: MANUAL_DIR/splits)")
    parser.add_argument("--data_dir", default=DEFAULT_DATA_DIR,
                        help="where the TFDS dataset is written (default: %(default)s; the demo uses ~/.cache/segic_jax/data)")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    start = time.time()
    try:
        splits = [x.strip() for x in args.splits.split(",") if x.strip()] if args.splits else None
        builder = build(args.name, args.manual_dir, args.data_dir, splits=splits, splits_dir=args.splits_dir)
    except ValueError as e:  # LayoutError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    splits = ", ".join(f"{k} {v.num_examples}" for k, v in builder.info.splits.items())
    print(f"built {args.name} ({splits} examples) in {builder.data_dir} in {time.time() - start:.0f} s")
    if args.name == "coco20i_semantic" and builder.info.metadata.get("pools") == "present":
        print("note: built without HSNet's split lists, so a class's episodes draw from every image containing it; "
              "the paper's COCO-20i protocol draws from HSNet's lists (--splits_dir)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
