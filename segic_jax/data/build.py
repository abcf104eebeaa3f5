"""Build one of SEGIC's datasets as TFDS array_record shards from the files you have.

    python -m segic_jax.data.build coco_instances --manual_dir ~/data/coco --data_dir data/
    python -m segic_jax.data.build lvis_instances --manual_dir ~/data/lvis --data_dir data/

TFDS writes into a temporary folder and renames it when the build is complete, so an interrupted
build leaves nothing that reads as a dataset.
"""

from __future__ import annotations

import argparse
import sys


def build(name: str, manual_dir: str, data_dir: str):
    import tensorflow_datasets as tfds

    from segic_jax.data.builders import BUILDERS
    from segic_jax.data.builders.common import require_dir

    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(BUILDERS)}")
    require_dir(manual_dir, f"--manual_dir of {name}")
    builder = BUILDERS[name](data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def main(argv=None) -> int:
    from segic_jax.data.builders import BUILDERS

    parser = argparse.ArgumentParser(prog="python -m segic_jax.data.build", description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=sorted(BUILDERS))
    parser.add_argument("--manual_dir", required=True, help="the dataset's files, in the layout its builder reads")
    parser.add_argument("--data_dir", default="data", help="where the TFDS dataset is written")
    args = parser.parse_args(argv)
    try:
        builder = build(args.name, args.manual_dir, args.data_dir)
    except ValueError as e:  # LayoutError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"built {args.name}: {', '.join(f'{k} {v.num_examples}' for k, v in builder.info.splits.items())} examples in {builder.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
