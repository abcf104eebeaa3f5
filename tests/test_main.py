"""The correspondence job: `python main.py --mode correspondence --config configs/segic.py:demo ...`
(the training main job is tested in test_trainer.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from segic_jax.conversion import dinov2 as dinov2_conversion
from segic_jax import checkpoints
from segic_jax.models.dinov2 import Dinov2
from segic_jax.data.synthetic import synthetic_pair
from segic_jax.inference import correspondence_demo
from sandbox import marking_stand_in, python_path
from torch_reference import hf_dinov2, hf_folder_to_hub_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs"))
import segic as segic_configs  # noqa: E402


def _main(*args, env=None):
    return subprocess.run(
        [sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )


def test_demo_command_writes_its_outputs(tmp_path):
    result = _main("--mode", "correspondence", "--config", "configs/segic.py:demo", "--workdir", str(tmp_path),
                   "--config.image_size=224")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "random vits14 weights" in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["image_size"] == 224 and 0 <= summary["peak_xy"][0] < 224
    for name in ("reference.png", "target_truth.png", "target_propagated.png"):
        assert Image.open(tmp_path / name).size == (224, 224)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary files left


def test_compiled_programs_are_kept_and_reused(tmp_path):
    cache = tmp_path / "xla"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # keep every program, however quick to compile
    args = ("--mode", "correspondence", "--config", "configs/segic.py:demo", "--config.image_size=112",
            f"--compilation_cache={cache}")
    first = _main(*args, "--workdir", str(tmp_path / "a"), env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    kept = sorted(os.listdir(cache))
    assert kept
    second = _main(*args, "--workdir", str(tmp_path / "b"), env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert sorted(os.listdir(cache)) == kept  # every program came from the cache: nothing new written
    summaries = [json.loads((tmp_path / run / "summary.json").read_text()) for run in "ab"]
    untimed = [{k: v for k, v in s.items() if not k.endswith("_s")} for s in summaries]
    assert untimed[0] == untimed[1] and "peak_xy" in untimed[0]


def test_bad_config_is_a_clear_error(tmp_path):
    result = _main("--mode", "correspondence", "--config", "configs/segic.py:demo", "--workdir", str(tmp_path),
                   "--config.imagesize=224")
    assert result.returncode != 0 and "imagesize" in result.stderr
    with pytest.raises(ValueError, match="unknown variant 'papr'"):
        segic_configs.get_config("papr")


def test_runs_on_converted_weights_and_checks_its_inputs(tmp_path):
    hf_dir = str(tmp_path / "hf")
    hf_dinov2().save_pretrained(hf_dir)
    torch.save(hf_folder_to_hub_state_dict(hf_dir), str(tmp_path / "w.pth"))
    config, params = dinov2_conversion.convert(str(tmp_path / "w.pth"), progress=False)
    ckpt = checkpoints.save_model(str(tmp_path / "ckpt"), Dinov2, config, params)

    cfg = segic_configs.get_config("demo")
    cfg.image_size = 112
    cfg.dinov2.checkpoint = ckpt
    summary = correspondence_demo.run(cfg, str(tmp_path / "out"))
    assert summary["weights"] == f"converted weights from {ckpt}"

    cfg.image_size = 100
    with pytest.raises(ValueError, match="multiple of 14"):
        correspondence_demo.run(cfg, str(tmp_path / "out2"))
    cfg.image_size = 112
    cfg.dinov2.checkpoint = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not a segic_jax checkpoint"):
        correspondence_demo.run(cfg, str(tmp_path / "out3"))
    assert not os.path.exists(tmp_path / "out2") and not os.path.exists(tmp_path / "out3")


def test_synthetic_pairs_share_a_class_and_are_seeded():
    a, b = synthetic_pair(3, 112), synthetic_pair(3, 112)
    assert np.array_equal(a["target_image"], b["target_image"])
    assert a["reference_mask"].any() and a["target_mask"].any()
    assert not np.array_equal(a["reference_mask"], a["target_mask"])
    assert not np.array_equal(synthetic_pair(4, 112)["target_image"], a["target_image"])


def test_model_conversion_and_inference_do_not_import_tensorflow(tmp_path):
    site, mark = marking_stand_in(tmp_path, "tensorflow")
    code = (
        "import segic_jax.models.dinov2, segic_jax.models.clip_text, segic_jax.convert, segic_jax.inference.predictor, "
        "segic_jax.inference.correspondence_demo, segic_jax.inference.segment_files, "
        "segic_jax.conversion.segic, segic_jax.checkpoints, orbax.checkpoint"
    )
    env = python_path(site, ROOT)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not mark.exists()
    # the stand-in does work: importing it leaves the mark
    subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, timeout=60)
    assert mark.exists()
