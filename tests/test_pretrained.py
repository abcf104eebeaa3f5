"""The released model in one line, through the real fetch path against a local stand-in: a folder laid
out as the Hugging Face hub cache (offline mode) for the head and CLIP, and a file:// mirror of the
DINOv2 hub. Tiny random weights under the released names."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from segic_jax import pretrained
from segic_jax.conversion import segic as segic_conversion
from segic_jax.data.synthetic import synthetic_pair
from segic_jax.inference.predictor import Predictor
from torch_reference import stand_in_hub, write_released

SIZE = 112
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(env, *args):
    return subprocess.run([sys.executable, "-m", "segic_jax.pretrained", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return write_released(str(tmp_path_factory.mktemp("released")), image_size=SIZE)


@pytest.mark.slow
def test_fetch_convert_once_then_load_without_the_network(tmp_path, released):
    hub, cache, mirror = tmp_path / "hf", tmp_path / "cache", tmp_path / "mirror"
    env = dict(os.environ, HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1", SEGIC_JAX_CACHE=str(cache),
               SEGIC_JAX_DINOV2_HUB=mirror.as_uri(), PYTHONPATH=ROOT)
    rel = pretrained.RELEASES[pretrained.DEFAULT]

    # nothing on the stand-in yet: one clear line naming what could not be fetched, nothing converted
    failed = _run(env, "--image_size", str(SIZE))
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr and "menglc/SEGIC/segic_dinov2_l_80kx12e.pth" in failed.stderr
    assert not (cache / "pretrained").exists()

    stand_in_hub(hub, rel.head_repo, {rel.head_file: released["SEGIC_HEAD"]})
    clip = released["CLIP_FOLDER"]
    stand_in_hub(hub, rel.clip_repo, {f: os.path.join(clip, f) for f in os.listdir(clip)})
    # the DINOv2 file is missing from the mirror: named with its URL, no partial file left
    failed = _run(env, "--image_size", str(SIZE))
    assert failed.returncode == 1 and pretrained.dinov2_url(rel).replace(pretrained.DINOV2_HUB, "") in failed.stderr
    assert not os.listdir(cache / "downloads") and not (cache / "pretrained").exists()

    (mirror / "dinov2_vitl14").mkdir(parents=True)
    shutil.copyfile(released["DINOV2"], mirror / rel.dinov2_file)
    done = _run(env, "--image_size", str(SIZE))
    assert done.returncode == 0, done.stderr
    out = done.stdout.strip().splitlines()[-1]
    assert out == str(cache / "pretrained" / f"{pretrained.DEFAULT}_{SIZE}px")
    info = json.loads((cache / "pretrained" / out / "release.json").read_text())
    assert info["sources"]["head"]["sha256"] == pretrained.sha256(released["SEGIC_HEAD"])
    assert info["sources"]["dinov2"]["sha256"] == pretrained.sha256(released["DINOV2"])
    assert info["sources"]["clip_text"]["sha256"]["model.safetensors"] == pretrained.sha256(
        os.path.join(clip, "model.safetensors"))

    # later calls load the cache alone: the stand-in hub and the mirror are gone
    shutil.rmtree(hub)
    shutil.rmtree(mirror)
    loaded = Predictor.from_pretrained(cache_dir=str(cache), image_size=SIZE, dtype="float32")
    direct_dir = segic_conversion.convert_all(released["SEGIC_HEAD"], released["DINOV2"], clip, str(tmp_path / "direct"),
                                              image_size=SIZE, progress=False)
    direct = Predictor.from_checkpoint(direct_dir)
    pair = synthetic_pair(1, 96)
    outs = []
    for predictor in (loaded, direct):
        context = predictor.encode_context([pair["reference_image"]], [pair["reference_mask"]], class_names=["thing"])
        (pred,) = predictor.segment([pair["target_image"]], context)
        outs.append(pred)
    np.testing.assert_array_equal(outs[0].logits, outs[1].logits)
    np.testing.assert_array_equal(outs[0].masks, outs[1].masks)


def test_a_failed_download_leaves_nothing(tmp_path):
    dest = tmp_path / "downloads" / "x.pth"
    with pytest.raises(pretrained.FetchError, match="missing.pth"):
        pretrained.download((tmp_path / "missing.pth").as_uri(), str(dest), progress=False)
    assert not os.listdir(tmp_path / "downloads")
    src = tmp_path / "file.bin"
    src.write_bytes(os.urandom(3000))
    assert pretrained.download(src.as_uri(), str(dest), progress=False) == str(dest)
    assert dest.read_bytes() == src.read_bytes()


def test_unknown_release_and_bad_size_are_named():
    with pytest.raises(ValueError, match="segic_dinov2_l_80kx12e"):
        pretrained.pretrained_dir("segic_vit_h")
    with pytest.raises(ValueError, match="multiple of 14"):
        pretrained.pretrained_dir(image_size=100)
