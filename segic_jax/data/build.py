"""Build one of SEGIC's datasets as TFDS array_record shards from the files you have.

    python -m segic_jax.data.build coco_instances --manual_dir ~/data/coco --data_dir data/
    python -m segic_jax.data.build lvis_instances --manual_dir ~/data/lvis --data_dir data/
    python -m segic_jax.data.build synthetic_incontext --data_dir data/     # built-in, no files needed
    python -m segic_jax.data.build synthetic_incontext/tiny --data_dir data/
    python -m segic_jax.data.build user_masks/pets --manual_dir ~/pets --data_dir data/   # your data (docs/your_data.md)

TFDS writes into a temporary folder and renames it when the build is complete, so an interrupted
build leaves nothing that reads as a dataset; a build that fails (a full disk) removes what it made.
Builds of one dataset into one --data_dir take turns: each holds <data_dir>/<dataset>/.build.lock
while it builds (released by the system when the process ends, killed or not), and a second one
waits, saying for which process, and then finds the dataset built.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import shutil
import socket
import sys
import threading
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
    "user_coco": "your data: annotations.json (COCO instances) + images/",
    "user_masks": "your data: images/<stem>.jpg, masks/<stem>.png (class indices), classes.txt",
    "user_folders": "your data: <class>/<stem>.jpg + <class>/<stem>.png, as FSS-1000",
}
USER_DATA = ("user_coco", "user_masks", "user_folders")  # split by --split_by/--test_fraction/--seed or lists
DEFAULT_DATA_DIR = "data"
LOCK_FILE = ".build.lock"  # in <data_dir>/<dataset>/


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


def _builder(name: str, data_dir: str, manual_dir: str | None, splits: list[str] | None, splits_dir: str | None,
             split_options: dict | None = None):
    """The builder of `name` over `data_dir` with the build's options, and the splits it will make
    (None for the built-in dataset), after every check of the inputs (nothing is written)."""
    from segic_jax.data.builders.common import require_dir

    dataset = name.partition("/")[0]
    builder = make_builder(name, data_dir)
    if splits_dir is not None:
        if not hasattr(builder, "splits_dir"):
            raise ValueError(f"--splits_dir is for coco20i_semantic (HSNet's lists), not {dataset}")
        builder.splits_dir = splits_dir
    for option, value in (split_options or {}).items():
        if value is not None:
            if dataset not in USER_DATA:
                raise ValueError(f"--{option} is for your own data ({', '.join(USER_DATA)}), not {dataset}")
            setattr(builder, option, value)
    if dataset in NEEDS_NO_FILES:
        return builder, None
    if not manual_dir:
        raise ValueError(f"{dataset} is built from your files: give --manual_dir")
    require_dir(manual_dir, f"--manual_dir of {dataset}")
    builder.requested_splits = list(splits) if splits else None
    return builder, _check_layout(builder, manual_dir)


def build(name: str, manual_dir: str | None, data_dir: str, *, progress: bool = True,
          splits: list[str] | None = None, splits_dir: str | None = None, split_options: dict | None = None):
    """`name` is a dataset, optionally with a config after a slash (synthetic_incontext/tiny).
    `splits` limits the build to those splits (default: all of the dataset's, each of which must be
    present under `manual_dir`). A dataset built earlier without a split asked for now is built again
    with its earlier splits and the new ones. `progress` shows TFDS's progress bars per split.
    `splits_dir`: HSNet's data/splits folder, for coco20i_semantic (default: manual_dir/splits).
    `split_options`: split_by, test_fraction and seed of a user dataset (user_coco, user_masks,
    user_folders; None values keep the defaults).
    The inputs are checked first; the build itself holds the dataset's lock (`dataset_lock`)."""
    import tensorflow_datasets as tfds

    from segic_jax.atomic_files import check_can_write

    dataset = name.partition("/")[0]
    _builder(name, data_dir, manual_dir, splits, splits_dir, split_options)  # every input checked before waiting or writing
    check_can_write(data_dir, "--data_dir", os.path.abspath(data_dir))
    new_data_dir = not os.path.exists(data_dir)
    with dataset_lock(dataset, data_dir), _removed_on_failure(dataset, data_dir, new_data_dir):
        # what is built now, after any build that held the lock before this one
        builder, wanted = _builder(name, data_dir, manual_dir, splits, splits_dir, split_options)
        mode = None
        if wanted is not None:
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
    must have been built (reading them says how). While another process builds it, wait for that
    build and use its dataset."""
    for name in sorted(set(names)):
        if name.partition("/")[0] in NEEDS_NO_FILES and not is_built(name, data_dir):
            with dataset_lock(name.partition("/")[0], data_dir):
                if is_built(name, data_dir):  # by the process this one waited for
                    continue
                print(f"building the built-in dataset {name} in {data_dir} (once)", flush=True)
                start = time.time()
                builder = build(name, None, data_dir, progress=False)
            sizes = ", ".join(f"{k} {v.num_examples}" for k, v in builder.info.splits.items())
            print(f"built {name} ({sizes} scenes) in {time.time() - start:.0f} s", flush=True)


_held = threading.local()  # .locks: lock path -> its descriptor, for the locks this thread holds


@contextlib.contextmanager
def dataset_lock(dataset: str, data_dir: str):
    """Hold the build lock of `dataset` under `data_dir`: an exclusive flock on
    <data_dir>/<dataset>/.build.lock, which the system releases when the process ends, however it
    ends. While another process holds it, say which (the file records the holder) and wait.
    Re-entrant within a thread."""
    path = os.path.join(os.path.abspath(data_dir), dataset, LOCK_FILE)
    held = _held.__dict__.setdefault("locks", {})
    if path in held:
        yield path
        return
    held[path] = fd = _acquire(path, dataset, data_dir)
    try:
        yield path
    finally:
        del held[path]
        if fd is not None:
            os.close(fd)  # releases the lock


def _acquire(path: str, dataset: str, data_dir: str) -> int | None:
    """The descriptor of `path`, locked by this process (None where the file system has no locks)."""
    told = False
    while True:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not told:
                    print(f"waiting for {_holder(fd)}, which is building {dataset} in {data_dir} (lock {path})",
                          file=sys.stderr, flush=True)
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            # a failed build removes its new dataset folder, lock file included, before it lets go:
            # a lock on the removed file guards nothing, so lock the one now at `path`
            same = os.path.exists(path) and os.path.samestat(os.fstat(fd), os.stat(path))
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            print(f"note: {path} cannot be locked on this file system ({e.strerror}): "
                  f"do not build {dataset} in {data_dir} from two processes at once", file=sys.stderr, flush=True)
            return None
        except BaseException:
            os.close(fd)
            raise
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            return fd
        os.close(fd)


def _holder(fd: int) -> str:
    """Who holds the lock open at `fd`, as its file records it."""
    pid, _, host = os.pread(fd, 200, 0).decode(errors="replace").strip().partition(" ")
    if not pid.isdigit():
        return "another process"  # it has not written its name yet
    return f"process {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")


@contextlib.contextmanager
def _removed_on_failure(dataset: str, data_dir: str, new_data_dir: bool):
    """When the build fails (a full disk, a damaged input found late), remove what it made: the
    dataset's folder when it held nothing but the lock before (TFDS has removed its temporary
    folder already), and the folders made for it that are empty (TFDS's downloads/, a new
    --data_dir). Run under the dataset's lock."""
    root = os.path.abspath(data_dir)
    folder = os.path.join(root, dataset)
    new_dataset = set(os.listdir(folder)) <= {LOCK_FILE}
    made = [p for p in (os.path.join(root, "downloads", "extracted"), os.path.join(root, "downloads"))
            if not os.path.exists(p)] + ([root] if new_data_dir else [])
    try:
        yield
    except BaseException:
        if new_dataset:  # the file goes too: a process waiting on it sees that and locks a new one
            shutil.rmtree(folder, ignore_errors=True)
        for path in made:
            with contextlib.suppress(OSError):
                os.rmdir(path)  # only when empty
        raise


def _check_layout(builder, manual_dir: str) -> set[str]:
    """The splits the builder will make, after its layout checks for each: they run before anything is
    written (the examples are generated lazily), so a missing file fails before TFDS would delete an
    earlier build to make this one."""
    import types

    return set(builder._split_generators(types.SimpleNamespace(manual_dir=manual_dir)))


def _remove_stale_incomplete(builder) -> None:
    """TFDS writes a build into `incomplete.*` beside the dataset and renames it when done; a killed
    build leaves it behind. Remove those: run under the dataset's lock, when no other build of it runs."""
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
        epilog=f"datasets (NAME):\n{datasets}\n\nThe module docstrings in segic_jax/data/builders/ give each layout. "
               "Your own data: NAME is user_coco, user_masks or user_folders followed by /<your dataset's name> "
               "(lower case, digits, _), so that several coexist in one --data_dir; docs/your_data.md shows the layouts.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", metavar="NAME", help="dataset[/config], e.g. coco_instances or synthetic_incontext/tiny")
    parser.add_argument("--manual_dir", help="the dataset's files, in the layout its builder reads (all but synthetic_incontext)")
    parser.add_argument("--splits", help="comma-separated splits to build, when you have only some (default: all of "
                                         "the dataset's, each required)")
    parser.add_argument("--splits_dir", help="coco20i_semantic: HSNet's data/splits folder, whose coco/{trn,val}/fold*.pkl "
                                             "lists give the paper's episode pools (default: MANUAL_DIR/splits)")
    parser.add_argument("--split_by", choices=("images", "classes"),
                        help="your data without train.txt/test.txt: hold out images (default) or whole classes "
                             "(the test split then shows only classes train never has)")
    parser.add_argument("--test_fraction", type=float, help="your data: the share of images or classes held out "
                                                             "for the test split (default 0.2)")
    parser.add_argument("--seed", type=int, help="your data: the seed of the held-out draw (default 0)")
    parser.add_argument("--data_dir", default=DEFAULT_DATA_DIR,
                        help="where the TFDS dataset is written (default: %(default)s; the demo uses ~/.cache/segic_jax/data)")
    return parser


def _write_failure(error: BaseException, name: str, data_dir: str) -> str | None:
    """The one-line report of a write the system refused (a full disk, a read-only --data_dir; or an
    input file this user may not read), or None for any other error."""
    from segic_jax.atomic_files import failed_write

    root = os.path.abspath(data_dir)
    failure = failed_write(error)
    if failure is None:
        return None
    reason, no_space = failure
    filename = os.path.abspath(os.fspath(error.filename)) if isinstance(error, OSError) and error.filename else None
    if filename and not no_space and not (filename == root or filename.startswith(root + os.sep)):
        return f"cannot read {filename}: {os.strerror(error.errno)}"  # an input, not the output
    fix = ("free space there or give a --data_dir on another disk" if no_space
           else "give a --data_dir you can write to")
    return f"cannot write {name} in --data_dir {root}: {reason}; {fix} (the build kept nothing)"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    start = time.time()
    try:
        splits = [x.strip() for x in args.splits.split(",") if x.strip()] if args.splits else None
        builder = build(args.name, args.manual_dir, args.data_dir, splits=splits, splits_dir=args.splits_dir,
                        split_options=dict(split_by=args.split_by, test_fraction=args.test_fraction, seed=args.seed))
    except ValueError as e:  # LayoutError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the build's temporary folders are removed; a rebuild completes what was kept
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, RuntimeError) as e:
        message = _write_failure(e, args.name, args.data_dir)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1
    splits = ", ".join(f"{k} {v.num_examples}" for k, v in builder.info.splits.items())
    print(f"built {args.name} ({splits} examples) in {builder.data_dir} in {time.time() - start:.0f} s")
    if args.name == "coco20i_semantic" and builder.info.metadata.get("pools") == "present":
        print("note: built without HSNet's split lists, so a class's episodes draw from every image containing it; "
              "the paper's COCO-20i protocol draws from HSNet's lists (--splits_dir)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
