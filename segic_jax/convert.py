r"""Convert official PyTorch / Hugging Face weights into segic_jax checkpoint directories.

    python -m segic_jax.convert dinov2 --src dinov2_vitl14_pretrain.pth --out ckpt/dinov2_vitl14
    python -m segic_jax.convert dinov2 --src facebook-dinov2-large/ --out ckpt/dinov2_hf_l
    python -m segic_jax.convert clip_text --src clip-vit-large-patch14/ --out ckpt/clip_text
    python -m segic_jax.convert segic --src segic_dinov2_l_80kx12e.pth \
        --dinov2 dinov2_vitl14_pretrain.pth --clip clip-vit-large-patch14/ --out ckpt/segic

Nothing is written unless the whole conversion succeeds; an existing --out is kept unless
--overwrite is given. Reading .pth/.pt/.bin files needs PyTorch (the CPU build is enough:
pip install torch); safetensors files and Hugging Face folders with model.safetensors do not.
The released SEGIC can also be fetched and converted in one step: python -m segic_jax.pretrained.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time

from segic_jax import atomic_files, checkpoints
from segic_jax.atomic_files import check_can_write, failed_write, quiet_writer_threads
from segic_jax.conversion import clip_text, dinov2, segic
from segic_jax.conversion.core import ConversionError
from segic_jax.models import bundle
from segic_jax.models.clip_text import ClipTextModel
from segic_jax.models.dinov2 import Dinov2


def _parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m segic_jax.convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="model", required=True)
    d = sub.add_parser("dinov2", help="DINOv2 hub .pth or Hugging Face facebook/dinov2-* folder")
    d.add_argument(
        "--interpolate-offset",
        type=float,
        help="positional-embedding resampling offset (hub ViTs: 0.1; register models and Hugging Face: 0)",
    )
    d.add_argument(
        "--interpolate-antialias",
        choices=("true", "false"),
        help="antialias the positional-embedding resampling (default: as the source implementation)",
    )
    c = sub.add_parser("clip_text", help="Hugging Face openai/clip-vit-* folder (text tower)")
    g = sub.add_parser("segic", help="released SEGIC .pth + its DINOv2 + CLIP text, into one directory")
    g.add_argument("--dinov2", required=True, help="the DINOv2 it was trained with (hub .pth or HF folder)")
    g.add_argument("--clip", required=True, help="Hugging Face openai/clip-vit-large-patch14 folder")
    g.add_argument("--image-size", type=int, default=896, help="model input size, a multiple of 14 (896 as released)")
    for p in (d, c, g):
        p.add_argument("--src", required=True, help="checkpoint file (.pth needs torch) or model folder")
        p.add_argument("--out", required=True, help="directory to write")
        p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser.parse_args(argv)


def check_arguments(args) -> None:
    """Every input path exists and every number is valid before anything is read (reading the
    released files takes minutes)."""
    for flag in ("src", "dinov2", "clip"):
        path = getattr(args, flag, None)
        if path is not None and not os.path.exists(path):
            raise ValueError(f"--{flag} {path} does not exist")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} is a file; give a directory to write")
    if os.path.isdir(args.out):
        if not args.overwrite:
            raise ValueError(f"{os.path.abspath(args.out)} already exists; pass --overwrite to replace it")
        sources = [getattr(args, flag, None) for flag in ("src", "dinov2", "clip")]
        bundle.check_replaceable(args.out, [s for s in sources if s])
    # --out is written beside itself, under a temporary name, and renamed: its folder must take it
    check_can_write(os.path.dirname(os.path.abspath(args.out)), "--out", os.path.abspath(args.out))
    size = getattr(args, "image_size", None)
    if size is not None and (size <= 0 or size % 14):
        raise ValueError(f"--image-size must be a positive multiple of 14 (DINOv2's patch), got {size}")


@contextlib.contextmanager
def writing(out: str):
    """The write of --out: a failure of the disk (full, read-only, not ours) is a ConversionError
    naming --out and what to do, reported on one line; the write leaves nothing behind
    (`atomic_files.atomic_directory`)."""
    out = os.path.abspath(out)
    with quiet_writer_threads():
        try:
            yield
        except Exception as e:
            _remove_own_partials(out)
            failure = failed_write(e)
            if failure is None:
                raise
            reason, no_space = failure
            fix = ("free space on that disk or give an --out on another one" if no_space
                   else "give an --out in a folder you can write to")
            raise ConversionError(f"cannot write --out {out}: {reason}; {fix} (nothing was written)") from None


def _remove_own_partials(out: str, settle_s: float = 0.5, limit_s: float = 10.0) -> None:
    """Remove this process's temporary folders of `out` until none has come back for `settle_s`. The
    write's own cleanup has removed its folder already, but tensorstore's threads go on with the
    writes in flight after orbax reports a failure, and may make parts of it again."""
    parent, prefix = os.path.dirname(out), f"{atomic_files._partial_prefix(out)}{os.getpid()}-"
    start = quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < settle_s and time.monotonic() - start < limit_s:
        try:
            mine = [n for n in os.listdir(parent) if n.startswith(prefix)]
        except OSError:
            return
        for name in mine:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            quiet_since = time.monotonic()
        time.sleep(0.05)


def main(argv=None) -> int:
    args = _parse(argv)
    try:
        check_arguments(args)
        if args.model == "dinov2":
            overrides = {}
            if args.interpolate_offset is not None:
                overrides["interpolate_offset"] = args.interpolate_offset
            if args.interpolate_antialias is not None:
                overrides["interpolate_antialias"] = args.interpolate_antialias == "true"
            config, params = dinov2.convert(args.src, overrides=overrides)
            model_cls, extra = Dinov2, {}
        elif args.model == "segic":
            converted = segic.read_all(args.src, args.dinov2, args.clip, image_size=args.image_size)
            with writing(args.out):
                out = segic.save(converted, args.out, overwrite=args.overwrite)
            print(f"wrote SEGIC (head, dinov2, clip_text) to {out}")
            return 0
        else:
            config, params, extra = clip_text.convert(args.src)
            model_cls = ClipTextModel
        with writing(args.out):
            out = checkpoints.save_model(
                args.out, model_cls, config, params, source=args.src, extra_files=extra, overwrite=args.overwrite,
                replaceable=lambda p: bundle.check_replaceable(p, [args.src]),
            )
    except (ValueError, FileExistsError) as e:  # ConversionError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the output is written whole or not at all
        print("interrupted", file=sys.stderr)
        return 130
    n = sum(v.size for v in params.values())
    print(f"wrote {args.model} ({len(params)} tensors, {n:,} parameters) to {out}")
    print(f"config: {config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
