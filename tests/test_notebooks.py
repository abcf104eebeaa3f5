"""The notebooks run top to bottom in a Jupyter kernel, with tiny random-weight models: the released
formats converted and used to segment (01), the demo training with its plots and export (02)."""

import ast
import json
import os
import sys

import jax
import nbformat
import numpy as np
import pytest
import torch
from nbclient import NotebookClient
from PIL import Image

from segic_jax.data.synthetic import synthetic_pair
from segic_jax.inference.predictor import Predictor
from segic_jax.conversion import segic as segic_conversion
from torch_reference import stand_in_release, write_released

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
KERNEL = "segic-jax-test"  # a kernelspec for this interpreter, so the kernel imports what the test does
SIZE = 112


def with_parameters(nb, **values):
    """Papermill's injection without papermill: the `parameters` cell keeps its defaults and ends
    with the given assignments. Every name must already be a parameter, so a renamed one fails here."""
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    defined = {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets}
    unknown = sorted(set(values) - defined)
    assert not unknown, f"not parameters of the notebook: {unknown} (it has {sorted(defined)})"
    cell.source += "\n\n# injected by the test\n" + "\n".join(f"{k} = {v!r}" for k, v in values.items()) + "\n"
    return nb


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A kernelspec pointing at sys.executable, found through JUPYTER_PATH (a fresh .venv needs no
    `ipykernel install`); the kernel inherits this environment, with the repository importable."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "segic-jax tests", "language": "python",
    }))
    patch = pytest.MonkeyPatch()
    patch.setenv("JUPYTER_PATH", str(root))
    patch.setenv("PYTHONPATH", os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    yield
    patch.undo()


def run_notebook(name, **parameters):
    with open(os.path.join(NOTEBOOKS, name), encoding="utf-8") as f:
        nb = nbformat.read(f, as_version=4)
    with_parameters(nb, **parameters)
    NotebookClient(nb, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": ROOT}}).execute()
    return nb


def outputs(nb, cell_id):
    (cell,) = [c for c in nb.cells if c.get("id") == cell_id]
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    images = [o for o in cell.outputs if o.output_type == "display_data" and "image/png" in o.data]
    return text, images


@pytest.mark.parametrize("name", ["01_convert_and_segment.ipynb", "02_finetune.ipynb"])
def test_notebooks_are_committed_without_outputs(name):
    with open(os.path.join(NOTEBOOKS, name), encoding="utf-8") as f:
        nb = nbformat.read(f, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    # the parameters first (REPO_URL among them), then the install cell that clones REPO_URL on Colab
    assert "parameters" in code[0].metadata.get("tags", []) and code[0].source.startswith("REPO_URL = ")
    assert code[1].source.lstrip().startswith("# ── Install") and "git clone -q {REPO_URL}" in code[1].source
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """Tiny random SEGIC in the released formats: hub DINOv2 .pth, HF CLIP folder, head .pth."""
    return write_released(str(tmp_path_factory.mktemp("released")), image_size=SIZE)


def _mask_png(path):
    mask = np.asarray(Image.open(path))
    assert set(np.unique(mask)) <= {0, 255}
    return mask > 0


@pytest.mark.slow
def test_convert_and_segment_notebook(kernel_env, released, tmp_path, monkeypatch):
    checkpoint, out, cache = tmp_path / "converted", tmp_path / "out", tmp_path / "cache"
    # the release as Colab would fetch it, from a stand-in hub (the kernel inherits this environment)
    for key, value in stand_in_release(str(tmp_path / "hub"), released).items():
        monkeypatch.setenv(key, value)
    common = dict(CHECKPOINT=str(checkpoint), IMAGE_SIZE=SIZE, DTYPE="float32", CACHE_DIR=str(cache))

    # defaults: the released model, no reference given (the built-in synthetic pair)
    nb = run_notebook(
        "01_convert_and_segment.ipynb", **common, SYNTHETIC_SEED=3, SYNTHETIC_SIZE=96, OUT_DIR=str(out / "a")
    )
    release_dir = cache / "pretrained" / f"segic_dinov2_l_80kx12e_{SIZE}px"
    assert sorted(os.listdir(release_dir)) == ["clip_text", "dinov2", "head", "release.json"]
    assert f"converted in {release_dir}" in outputs(nb, "convert")[0]
    assert not checkpoint.exists()
    assert len(outputs(nb, "inputs")[1]) == 1 and len(outputs(nb, "show")[1]) == 1  # reference; target panels
    assert "IoU with the true mask" in outputs(nb, "segment")[0]
    saved = _mask_png(out / "a" / "synthetic_target_mask0.png")
    # the notebook's mask is the predictor's, on the same files converted by hand
    pair = synthetic_pair(3, 96)
    predictor = Predictor.from_checkpoint(segic_conversion.convert_all(
        released["SEGIC_HEAD"], released["DINOV2"], released["CLIP_FOLDER"], str(tmp_path / "by_hand"),
        image_size=SIZE, progress=False))
    context = predictor.encode_context([pair["reference_image"]], [pair["reference_mask"]], binarize=False)
    (pred,) = predictor.segment([pair["target_image"]], context)
    np.testing.assert_array_equal(saved, pred.masks[0])

    # your own files: a reference with its mask, a folder of targets of other sizes and modes
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (80, 60, 3), dtype=np.uint8)
    mask = np.zeros((80, 60), np.uint8)
    mask[20:60, 10:40] = 255
    Image.fromarray(reference).save(tmp_path / "ref.jpg")
    Image.fromarray(mask).save(tmp_path / "ref_mask.png")
    (tmp_path / "targets").mkdir()
    Image.fromarray(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)).save(tmp_path / "targets" / "wide.png")
    Image.fromarray(rng.integers(0, 256, (70, 50), dtype=np.uint8)).save(tmp_path / "targets" / "grey.png")
    nb = run_notebook(
        "01_convert_and_segment.ipynb", **common, **released, REFERENCE_IMAGE=str(tmp_path / "ref.jpg"),
        REFERENCE_MASK=str(tmp_path / "ref_mask.png"), CLASS_NAME="thing", TARGETS=[str(tmp_path / "targets")],
        OUT_DIR=str(out / "b"),
    )
    assert "wrote SEGIC" in outputs(nb, "convert")[0]  # your own files, converted into CHECKPOINT
    assert sorted(os.listdir(checkpoint)) == ["clip_text", "dinov2", "head"]
    assert len(outputs(nb, "show")[1]) == 2
    assert sorted(os.listdir(out / "b")) == ["grey_mask0.png", "wide_mask0.png"]
    assert _mask_png(out / "b" / "wide_mask0.png").shape == (90, 130)
    assert _mask_png(out / "b" / "grey_mask0.png").shape == (70, 50)


@pytest.mark.slow
def test_finetune_notebook(kernel_env, tmp_path):
    tiny = "synthetic_incontext/tiny"
    overrides = {
        "image_size": 56, "dinov2.depth": 1, "clip.width": 32, "clip.depth": 1,
        "data.mixture": ((tiny, "train", "class", 1.0), (tiny, "train", "instance", 1.0)), "data.max_instances": 2,
        "train.global_batch_size": 4, "train.samples_per_epoch": 40, "train.num_steps": 3, "train.num_points": 256,
        "checkpoint.use_async": False, "log.every_steps": 1, "log.progress": False,
        "eval.dataset": tiny, "eval.episodes": 4, "eval.every_steps": 3, "eval.at_start": True,
    }
    workdir = tmp_path / "run"
    nb = run_notebook("02_finetune.ipynb", OVERRIDES=overrides, WORKDIR=str(workdir), DATA_DIR=str(tmp_path / "data"))

    assert str(jax.devices()[0]) in outputs(nb, "devices")[0]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["step"] == 3 and not summary["stopped_early"]
    assert set(summary["evaluations"]) == {"untrained", "step_3"}
    assert all(0 <= r["miou"] <= 100 and 0 <= r["baseline_miou"] <= 100 for r in summary["evaluations"].values())
    assert sorted(os.listdir(workdir / "images")) == ["step_000003.png", "untrained.png"]
    assert os.path.isdir(tmp_path / "data" / "synthetic_incontext")  # the demo built its dataset there
    assert len(outputs(nb, "loss")[1]) == 1  # the loss curve
    text, images = outputs(nb, "eval")
    assert "untrained" in text and "step_3" in text and len(images) == 2
    text, images = outputs(nb, "predict")
    assert "masks (1, 160, 160)" in text and len(images) == 1
