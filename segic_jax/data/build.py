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
import sys

NEEDS_NO_FILES = {"synthetic_incontext"}


def build(name: str, manual_dir: str | None, data_dir: str):
    """`name` is a dataset, optionally with a config after a slash (synthetic_incontext/tiny)."""
    import tensorflow_datasets as tfds

    from segic_jax.data.builders import builder_class
    from segic_jax.data.builders.common import require_dir

    builder_cls = builder_class(name)
    dataset, _, config = name.partition("/")
    if dataset not in NEEDS_NO_FILES:
        if not manual_dir:
            raise ValueError(f"{dataset} is built from your files: give --manual_dir")
        require_dir(manual_dir, f"--manual_dir of {dataset}")
    kwargs = {"config": config} if config else {}
    builder = builder_cls(data_dir=data_dir, file_format="array_record", **kwargs)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(download_config=download_config)
    return builder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segic_jax.data.build", description=__doc__.split("\n")[0])
    parser.add_argument("name", help="dataset[/config], e.g. coco_instances or synthetic_incontext/tiny")
    parser.add_argument("--manual_dir", help="the dataset's files, in the layout its builder reads")
    parser.add_argument("--data_dir", default="data", help="where the TFDS dataset is written")
    args = parser.parse_args(argv)
    try:
        builder = build(args.name, args.manual_dir, args.data_dir)
    except ValueError as e:  # LayoutError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    splits = ", ".join(f"{k} {v.num_examples}" for k, v in builder.info.splits.items())
    print(f"built {args.name} ({splits} examples) in {builder.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
