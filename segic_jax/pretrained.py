"""The released SEGIC in one line: fetched, checked and converted once, then loaded from a cache.

    from segic_jax.inference.predictor import Predictor
    predictor = Predictor.from_pretrained()                        # segic_dinov2_l_80kx12e
    python -m segic_jax.pretrained [NAME]                          # fetch + convert; prints the directory
    python main.py --mode predict --checkpoint segic_dinov2_l_80kx12e --workdir out/ ...

A release is three files, as the original code loads them:
  the SEGIC head        Hugging Face `menglc/SEGIC`, `<NAME>.pth`
  DINOv2-L/14           the DINOv2 hub file, https://dl.fbaipublicfiles.com/dinov2/...
  the CLIP text model   Hugging Face `openai/clip-vit-large-patch14` (config, weights, tokenizer files)

Hugging Face files go through `huggingface_hub` (its cache, `HF_HOME`; `HF_HUB_OFFLINE=1` uses what is
cached, `HF_ENDPOINT` a mirror). The DINOv2 file is downloaded (from `SEGIC_JAX_DINOV2_HUB` when set: a mirror
of https://dl.fbaipublicfiles.com/dinov2, any URL urllib reads) into `<cache>/downloads/` with its size
checked against the server's, written under a temporary name and renamed when complete. The three are
converted (every key and shape checked) into `<cache>/pretrained/<NAME>`, with `release.json` naming the
sources and their SHA-256; later calls load that directory without touching the network.
`<cache>` is `SEGIC_JAX_CACHE` or `~/.cache/segic_jax`. Reading the `.pth` files needs PyTorch (CPU build).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import sys
import urllib.error
import urllib.request

from segic_jax.models import bundle

DINOV2_HUB = "https://dl.fbaipublicfiles.com/dinov2"  # SEGIC_JAX_DINOV2_HUB replaces it (a mirror)
CLIP_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")  # what the conversion reads
CLIP_EXTRAS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")  # copied along when present


@dataclasses.dataclass(frozen=True)
class Release:
    name: str
    head_repo: str
    head_file: str
    dinov2_file: str  # under the DINOv2 hub
    clip_repo: str
    clip_files: tuple[str, ...] = CLIP_FILES
    image_size: int = 896


RELEASES = {
    r.name: r
    for r in (
        Release(name, "menglc/SEGIC", f"{name}.pth", "dinov2_vitl14/dinov2_vitl14_pretrain.pth",
                "openai/clip-vit-large-patch14")
        for name in ("segic_dinov2_l_80kx12e", "segic_dinov2_l_160kx12e")
    )
}
DEFAULT = "segic_dinov2_l_80kx12e"


class FetchError(ValueError):
    """A release file could not be fetched; the message names it and the way around."""


def cache_root(cache_dir: str | None = None) -> str:
    return os.path.abspath(os.path.expanduser(cache_dir or os.environ.get("SEGIC_JAX_CACHE") or "~/.cache/segic_jax"))


def dinov2_url(rel: Release) -> str:
    return os.environ.get("SEGIC_JAX_DINOV2_HUB", DINOV2_HUB).rstrip("/") + "/" + rel.dinov2_file


def release(name: str) -> Release:
    if name not in RELEASES:
        raise ValueError(f"unknown release {name!r}; choose one of {', '.join(RELEASES)}")
    return RELEASES[name]


def sha256(path: str, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: str, *, progress: bool = True) -> str:
    """`url` to `dest` unless it is already there. Written under a temporary name and renamed once
    complete, with the byte count checked against the server's, so a broken download never stands
    as the file."""
    if os.path.isfile(dest):
        return dest
    from tqdm.auto import tqdm

    os.makedirs(os.path.dirname(dest), exist_ok=True)
    part = f"{dest}.part-{os.getpid()}"
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            expected = response.headers.get("Content-Length")
            expected = int(expected) if expected else None
            with tqdm(total=expected, unit="B", unit_scale=True, desc=os.path.basename(dest), disable=not progress) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
        size = os.path.getsize(part)
        if expected is not None and size != expected:
            raise FetchError(f"download of {url} stopped at {size:,} of {expected:,} bytes; run again to retry")
        os.replace(part, dest)
    except (urllib.error.URLError, OSError) as e:
        raise FetchError(f"cannot download {url} ({e}); download it by hand to {dest} and run again") from None
    finally:
        if os.path.exists(part):
            os.remove(part)
    return dest


def _hub_error(what: str, e: Exception) -> FetchError:
    return FetchError(
        f"cannot fetch {what} from Hugging Face ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
        "check the network or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the cached copy"
    )


def fetch(rel: Release, cache_dir: str | None = None, *, progress: bool = True) -> dict[str, str]:
    """Local paths of the release's three sources, downloading what is not cached."""
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        head = hf_hub_download(rel.head_repo, rel.head_file)
    except Exception as e:  # huggingface_hub raises network, HTTP and cache-miss errors of many types
        raise _hub_error(f"{rel.head_repo}/{rel.head_file}", e) from None
    try:
        clip = snapshot_download(rel.clip_repo, allow_patterns=list(rel.clip_files + CLIP_EXTRAS))
    except Exception as e:
        raise _hub_error(rel.clip_repo, e) from None
    missing = [f for f in rel.clip_files if not os.path.isfile(os.path.join(clip, f))]
    if missing:
        raise FetchError(f"{rel.clip_repo} in {clip} lacks {', '.join(missing)}")
    dinov2 = download(dinov2_url(rel), os.path.join(cache_root(cache_dir), "downloads", os.path.basename(rel.dinov2_file)),
                      progress=progress)
    return {"head": head, "dinov2": dinov2, "clip": clip}


def _complete(out: str, rel: Release, image_size: int) -> bool:
    info = bundle.read_release(out)
    return info.get("name") == rel.name and info.get("image_size") == image_size


def pretrained_dir(name: str = DEFAULT, *, cache_dir: str | None = None, image_size: int | None = None,
                   progress: bool = True) -> str:
    """The converted directory of release `name` (`Predictor.from_checkpoint` reads it), fetching and
    converting on first use. `image_size` other than the release's gives a separate directory."""
    from segic_jax.conversion import segic as segic_conversion

    rel = release(name)
    size = image_size or rel.image_size
    if size <= 0 or size % 14:
        raise ValueError(f"image_size must be a positive multiple of 14 (DINOv2's patch), got {size}")
    out = os.path.join(cache_root(cache_dir), "pretrained", name if size == rel.image_size else f"{name}_{size}px")
    if _complete(out, rel, size):
        return out
    try:
        import torch  # noqa: F401  the head and DINOv2 are .pth files
    except ImportError:
        raise ValueError("the released SEGIC head and DINOv2 are .pth files: reading them needs PyTorch "
                         "(pip install torch; the CPU build is enough)") from None
    sources = fetch(rel, cache_dir, progress=progress)
    if progress:
        print(f"converting {name} into {out} (once)", flush=True)
    segic_conversion.convert_all(sources["head"], sources["dinov2"], sources["clip"], out, image_size=size,
                                 overwrite=True, progress=progress)
    info = {
        "name": rel.name, "image_size": size,
        "sources": {
            "head": {"repo": rel.head_repo, "file": rel.head_file, "sha256": sha256(sources["head"])},
            "dinov2": {"url": dinov2_url(rel), "sha256": sha256(sources["dinov2"])},
            "clip_text": {"repo": rel.clip_repo,
                          "sha256": {f: sha256(os.path.join(sources["clip"], f)) for f in rel.clip_files}},
        },
    }
    bundle.write_release(out, info)
    return out


def checkpoint_path(checkpoint: str) -> str:
    """What `--checkpoint` names: a converted directory as given, or a release's directory (fetched
    and converted once) when no such path exists and the name is a release."""
    if not os.path.exists(checkpoint) and checkpoint in RELEASES:
        return pretrained_dir(checkpoint)
    return checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segic_jax.pretrained",
        description="Fetch a released SEGIC (head, DINOv2, CLIP text), convert it once into the cache and print "
                    "its directory, for --checkpoint and Predictor.from_checkpoint.",
        epilog="releases: " + ", ".join(RELEASES) + f". Cache: SEGIC_JAX_CACHE or ~/.cache/segic_jax; "
               "Hugging Face files in huggingface_hub's cache (HF_HOME). Needs PyTorch to read the .pth files.",
    )
    parser.add_argument("name", nargs="?", default=DEFAULT, choices=sorted(RELEASES), help=f"default: {DEFAULT}")
    parser.add_argument("--cache_dir", help="instead of SEGIC_JAX_CACHE / ~/.cache/segic_jax")
    parser.add_argument("--image_size", type=int, help="model input size (default: the release's, 896)")
    args = parser.parse_args(argv)
    try:
        out = pretrained_dir(args.name, cache_dir=args.cache_dir, image_size=args.image_size)
    except ValueError as e:  # FetchError and ConversionError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # nothing half-converted stays in the cache
        print("interrupted", file=sys.stderr)
        return 130
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
