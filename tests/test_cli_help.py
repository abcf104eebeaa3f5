"""Every command's help exits 0, keeps its examples as written and lists its choices; path errors
come before any model work."""

import os
import subprocess
import sys

from segic_jax import pretrained
from segic_jax.data import build
from segic_jax.data.builders import BUILDERS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_main_help_keeps_its_examples_and_exits_0():
    for flag in ("--help", "-h"):
        result = _run("main.py", flag)
        assert result.returncode == 0, result.stderr
        # the multi-line example stays two lines, with its continuation
        assert "--workdir out/ \\\n        --reference ref.jpg" in result.stdout
        assert "<train|eval|correspondence|predict|serve>" in result.stdout and "--checkpoint" in result.stdout
        assert "--port" in result.stdout and "--[no]share" in result.stdout


def test_build_help_lists_every_dataset_and_the_default_data_dir():
    assert set(build.SOURCES) == set(BUILDERS)
    result = _run("-m", "segic_jax.data.build", "--help")
    assert result.returncode == 0, result.stderr
    for name in BUILDERS:
        assert f"\n  {name} " in result.stdout
    assert f"default: {build.DEFAULT_DATA_DIR}" in result.stdout


def test_convert_and_pretrained_help_and_early_path_checks(tmp_path):
    result = _run("-m", "segic_jax.convert", "--help")
    assert result.returncode == 0 and "needs PyTorch" in result.stdout
    assert "segic_dinov2_l_80kx12e.pth \\\n        --dinov2" in result.stdout
    result = _run("-m", "segic_jax.pretrained", "--help")
    assert result.returncode == 0 and all(name in result.stdout for name in pretrained.RELEASES)
    head = tmp_path / "head.pth"
    head.write_bytes(b"not read: --clip is missing")
    result = _run("-m", "segic_jax.convert", "segic", "--src", str(head), "--dinov2", str(head),
                  "--clip", str(tmp_path / "no_clip"), "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and f"--clip {tmp_path / 'no_clip'} does not exist" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
    result = _run("-m", "segic_jax.convert", "segic", "--src", str(head), "--dinov2", str(head), "--clip", str(tmp_path),
                  "--out", str(tmp_path / "out"), "--image-size", "0")
    assert result.returncode == 1 and "--image-size must be a positive multiple of 14" in result.stderr
