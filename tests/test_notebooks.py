"""The notebooks run top to bottom in a Jupyter kernel, with tiny random-weight models: the released
formats converted and used to segment, and a converted folder used as it is (01), the demo training
with its plots and export (02), and 02 again on a user folder it builds, fine-tuning that export.

They are committed with the outputs of one run on the README's demo model, so that a reader on
GitHub or Colab sees what they show; the tests run them afresh. To refresh those outputs, train the
demo (`python main.py --config configs/segic.py --workdir /tmp/segic_demo`), then run
`python tests/test_notebooks.py` (or `python tests/test_notebooks.py 02_finetune.ipynb` for one of them)."""

import ast
import contextlib
import json
import os
import re
import sys

import jax
import nbformat
import numpy as np
import pytest
import torch
from nbclient import NotebookClient
from PIL import Image

from segic_jax.data.synthetic import synthetic_pair, write_user_layouts
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


@contextlib.contextmanager
def kernelspec(root):
    """A kernelspec pointing at sys.executable, found through JUPYTER_PATH (a fresh .venv needs no
    `ipykernel install`); the kernel inherits this environment, with the repository importable."""
    spec = os.path.join(root, "kernels", KERNEL)
    os.makedirs(spec)
    with open(os.path.join(spec, "kernel.json"), "w", encoding="utf-8") as f:
        json.dump({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "segic-jax tests", "language": "python",
        }, f)
    patch = pytest.MonkeyPatch()
    patch.setenv("JUPYTER_PATH", str(root))
    patch.setenv("PYTHONPATH", os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    try:
        yield
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    with kernelspec(str(tmp_path_factory.mktemp("jupyter"))):
        yield


def read_notebook(name):
    with open(os.path.join(NOTEBOOKS, name), encoding="utf-8") as f:
        return nbformat.read(f, as_version=4)


def run_notebook(name, path=ROOT, record_timing=True, timeout=600, **parameters):
    """The notebook executed afresh (the committed outputs are cleared first) in a kernel started in `path`."""
    nb = read_notebook(name)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    with_parameters(nb, **parameters)
    NotebookClient(nb, kernel_name=KERNEL, timeout=timeout, record_timing=record_timing,
                   resources={"metadata": {"path": path}}).execute()
    return nb


def outputs(nb, cell_id):
    (cell,) = [c for c in nb.cells if c.get("id") == cell_id]
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    images = [o for o in cell.outputs if o.output_type == "display_data" and "image/png" in o.data]
    return text, images


NAMES = ["01_convert_and_segment.ipynb", "02_finetune.ipynb"]
MAX_BYTES = 1_500_000  # a committed notebook, outputs included
# an absolute path in an output: any but /tmp's could name a private folder of whoever ran it
PRIVATE_PATH = re.compile(r"(?<![\w.~])/(?!tmp/)(?:home|root|work|Users|usr|opt|mnt|var|srv|content)\b")


def _texts(cell):
    for o in cell.outputs:
        if o.output_type == "stream":
            yield o.text
        elif o.output_type in ("display_data", "execute_result"):
            yield from (v for k, v in o.data.items() if k.startswith("text/"))
        elif o.output_type == "error":
            yield "\n".join(o.traceback)


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_are_committed_with_the_outputs_of_one_run(name):
    nb = read_notebook(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    # the parameters first (REPO_URL among them), then the install cell that clones REPO_URL on Colab
    assert "parameters" in code[0].metadata.get("tags", []) and code[0].source.startswith("REPO_URL = ")
    assert code[1].source.lstrip().startswith("# ── Install") and "git clone -q {REPO_URL}" in code[1].source
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1
    assert "injected" not in code[0].source  # the parameters as a reader finds them, not as they were run
    # one run, top to bottom, without an error; pictures shown, progress bars as the last state shown
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
    assert any({"image/png", "image/jpeg"} & set(o.get("data", {})) for c in code for o in c.outputs)
    for cell in code:
        for text in _texts(cell):
            assert "\r" not in text, (cell.id, text[:200])
            assert not PRIVATE_PATH.search(text), (cell.id, PRIVATE_PATH.search(text).group(0), text[:300])
        assert "execution" not in cell.metadata  # no timestamps of the run
    assert os.path.getsize(os.path.join(NOTEBOOKS, name)) < MAX_BYTES


def test_the_private_path_check_finds_what_it_must():
    for leaked in ["/root/.cache/segic_jax/data", "wrote /srv/project/out/x.png", "/home/ann/ckpt", "(/usr/lib/x)"]:
        assert PRIVATE_PATH.search(leaked), leaked
    for fine in ["/tmp/segic_demo/export", "runs/notebook/export", "~/.cache/segic_jax/data", "a/home/b", "80/128"]:
        assert not PRIVATE_PATH.search(fine), fine


def test_outputs_are_kept_as_a_notebook_shows_them():
    import base64
    import io

    bar = [nbformat.v4.new_output("stream", name="stderr", text=f"\rtraining: {i}/3") for i in range(4)]
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    pictures = []
    for image in (noise, np.full((120, 160, 3), 255, np.uint8)):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        pictures.append(nbformat.v4.new_output(
            "display_data", data={"image/png": base64.b64encode(buffer.getvalue()).decode(), "text/plain": "<Figure>"}))
    outputs = [*bar, nbformat.v4.new_output("stream", name="stderr", text="\x1b[A\n"),
               nbformat.v4.new_output("stream", name="stdout", text="export: /tmp/scratch/runs/x/export\n"),
               nbformat.v4.new_output("stream", name="stderr", text="\r  \r"), *pictures]
    kept = tidy(outputs, "/tmp/scratch")
    assert [o.output_type for o in kept] == ["stream", "stream", "display_data", "display_data"]
    assert kept[0].text == "training: 3/3\n" and kept[1].text == "export: runs/x/export\n"
    assert set(kept[2].data) == {"image/jpeg", "text/plain"}  # noise: a photograph's kind of picture
    assert set(kept[3].data) == {"image/png", "text/plain"}  # flat colour, as a plot: PNG is small already
    assert shown(os.path.expanduser("~") + "/.cache/x") == "~/.cache/x"


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
    common = dict(CONVERT_TO=str(checkpoint), IMAGE_SIZE=SIZE, DTYPE="float32", CACHE_DIR=str(cache))

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

    # CHECKPOINT alone (a converted folder, or a training run's export/) is the model: nothing is
    # fetched, even with no release to be found (an empty hub cache, offline, no DINOv2 mirror)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    monkeypatch.setenv("SEGIC_JAX_DINOV2_HUB", (tmp_path / "no_mirror").as_uri())
    nb = run_notebook(
        "01_convert_and_segment.ipynb", CHECKPOINT=str(checkpoint), DTYPE="float32", CACHE_DIR=str(tmp_path / "cache2"),
        SYNTHETIC_SEED=3, SYNTHETIC_SIZE=96, OUT_DIR=str(out / "c"),
    )
    text = outputs(nb, "convert")[0]
    assert f"using the checkpoint {checkpoint}" in text and "released" not in text
    assert not (tmp_path / "cache2").exists()
    np.testing.assert_array_equal(_mask_png(out / "c" / "synthetic_target_mask0.png"), saved)  # the same weights


# the overrides of a tiny run in seconds, beyond the model's and the data's
TINY_RUN = {
    "image_size": 56, "data.max_instances": 2, "train.global_batch_size": 4, "train.samples_per_epoch": 40,
    "train.num_steps": 3, "train.num_points": 256, "checkpoint.use_async": False, "log.every_steps": 1,
    "log.progress": False, "eval.episodes": 4, "eval.every_steps": 3, "eval.at_start": True,
}


@pytest.fixture(scope="module")
def demo_run(kernel_env, tmp_path_factory):
    """Notebook 02 with its defaults on a tiny synthetic build: (the executed notebook, its folder)."""
    root = tmp_path_factory.mktemp("finetune")
    tiny = "synthetic_incontext/tiny"
    overrides = {
        **TINY_RUN, "dinov2.depth": 1, "clip.width": 32, "clip.depth": 1,
        "data.mixture": ((tiny, "train", "class", 1.0), (tiny, "train", "instance", 1.0)), "eval.dataset": tiny,
    }
    nb = run_notebook("02_finetune.ipynb", OVERRIDES=overrides, WORKDIR=str(root / "run"), DATA_DIR=str(root / "data"))
    return nb, root


@pytest.mark.slow
def test_finetune_notebook(demo_run):
    nb, root = demo_run
    workdir = root / "run"
    assert str(jax.devices()[0]) in outputs(nb, "devices")[0]
    assert "USER_FOLDER is empty" in outputs(nb, "your-data")[0]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["step"] == 3 and not summary["stopped_early"]
    assert set(summary["evaluations"]) == {"untrained", "step_3"}
    assert all(0 <= r["miou"] <= 100 and 0 <= r["baseline_miou"] <= 100 for r in summary["evaluations"].values())
    assert sorted(os.listdir(workdir / "images")) == ["step_000003.png", "untrained.png"]
    assert os.path.isdir(root / "data" / "synthetic_incontext")  # the demo built its dataset there
    assert len(outputs(nb, "loss")[1]) == 1  # the loss curve
    text, images = outputs(nb, "eval")
    assert text.startswith("synthetic, 4 held-out episodes:")
    assert "untrained" in text and "step_3" in text and "fine-tun" not in text and len(images) == 2
    text, images = outputs(nb, "predict")
    assert text.startswith("a held-out ") and "masks (1, 160, 160)" in text and len(images) == 1


@pytest.mark.slow
def test_finetune_notebook_on_your_folder(demo_run, tmp_path):
    """USER_FOLDER: a user_masks folder of classes the model never trained on, built into DATA_DIR,
    fine-tuned on from the export of the default run (INIT_FROM), scored on its test split."""
    export = demo_run[1] / "run" / "export"
    layouts = write_user_layouts(str(tmp_path / "yours"), n_classes=3, images_per_class=6, size=48, held_out=True)
    folder = layouts["masks"]
    workdir, data = tmp_path / "run", tmp_path / "data"
    overrides = {**TINY_RUN, "eval.images": False}  # the default run draws them (test_finetune_notebook)
    nb = run_notebook("02_finetune.ipynb", OVERRIDES=overrides, WORKDIR=str(workdir), DATA_DIR=str(data),
                      USER_FOLDER=folder, INIT_FROM=str(export))

    # built once, into DATA_DIR, under the folder's name, its images held out (the default SPLIT_BY)
    text = outputs(nb, "your-data")[0]
    assert re.search(r"built user_masks/masks \((train|test) \d+, (train|test) \d+ examples\)", text), text
    assert "user_masks/masks: train " in text and "3 classes" in text and "held out" not in text
    assert os.path.isdir(data / "user_masks" / "masks")
    assert "held-out evaluation: the custom benchmark on the test split of user_masks/masks" in outputs(nb, "config")[0]
    recorded = json.loads((workdir / "config.json").read_text())
    assert recorded["eval.benchmark"] == "custom" and recorded["eval.dataset"] == "user_masks/masks"
    assert recorded["train.init_from"] == str(export)
    assert {tuple(p[:3]) for p in recorded["data.mixture"]} == {("user_masks/masks", "train", "class"),
                                                               ("user_masks/masks", "train", "instance")}
    # the export's head, scored on the test split before and after fine-tuning
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["step"] == 3 and set(summary["evaluations"]) == {"untrained", "step_3"}
    text = outputs(nb, "train")[0]
    assert "step 0 (before fine-tuning)" in text and "custom (4 held-out episodes) mIoU:" in text
    assert "before fine-tuning" in text and "fine-tuned model" in text
    text, images = outputs(nb, "eval")
    assert text.startswith("custom on the test split of user_masks/masks, 4 held-out episodes:")
    assert "before fine-tuning" in text and "fine-tuned, step 3" in text and not images
    # one of its test images, a train image of the class as the reference
    text, images = outputs(nb, "predict")
    assert re.search(r"in the test image images/scene_\d+\.png of user_masks/masks "
                     r"\(reference images/scene_\d+\.png, a train image\): masks \(1, 48, 48\)", text), text
    assert len(images) == 1


# --- the committed outputs -------------------------------------------------------------------------

DEMO_EXPORT = "/tmp/segic_demo/export"  # what the README's first command trains


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def shown(text: str, scratch: str = "") -> str:
    """A stream as a notebook shows it: each line as its last carriage return left it (a progress bar's
    final state), without terminal escapes, the warning that a text progress bar stands in for a widget,
    or the scratch folder's path; the home folder as ~."""
    lines = [ANSI.sub("", line.rsplit("\r", 1)[-1]).rstrip() for line in text.split("\n")]
    lines = [line for line in lines if "TqdmWarning: IProgress not found" not in line
             and not line.lstrip().startswith("from .autonotebook import tqdm as notebook_tqdm")]
    text = "\n".join(line for i, line in enumerate(lines) if line or i == len(lines) - 1)
    if scratch:
        text = text.replace(scratch + os.sep, "")
    return text.replace(os.path.expanduser("~") + os.sep, "~" + os.sep)


def tidy(outputs, scratch: str = "") -> list:
    """A cell's outputs as committed: consecutive pieces of one stream joined and `shown`, empty ones
    dropped, and a picture that JPEG stores in under half the bytes stored as JPEG (photographs of
    noisy synthetic scenes; plots stay PNG)."""
    import base64
    import io

    from PIL import Image

    joined = []
    for o in outputs:
        if o.output_type == "stream" and joined and joined[-1].output_type == "stream" and joined[-1].name == o.name:
            joined[-1].text += o.text
        else:
            joined.append(o)
    kept = []
    for o in joined:
        if o.output_type == "stream":
            o.text = shown(o.text, scratch)
            if not o.text.strip():
                continue
        elif "image/png" in o.get("data", {}):
            png = base64.b64decode(o.data["image/png"])
            buffer = io.BytesIO()
            Image.open(io.BytesIO(png)).convert("RGB").save(buffer, "JPEG", quality=85, optimize=True)
            if buffer.tell() < len(png) / 2:
                del o.data["image/png"]
                o.data["image/jpeg"] = base64.b64encode(buffer.getvalue()).decode("ascii")
        if "text/plain" in o.get("data", {}):
            o.data["text/plain"] = shown(o.data["text/plain"], scratch)
        kept.append(o)
    return kept


def refresh(demo_export: str = DEMO_EXPORT, names=NAMES) -> None:
    """Run the notebooks (`names`: both by default) top to bottom on the demo model and write them back
    with their outputs: 01 with CHECKPOINT = demo_export, 02 with its own defaults (it trains the demo
    again). They run in a scratch folder linked to this checkout, so that their relative outputs (out/,
    runs/) land there; the notebooks' sources and metadata are kept as they are."""
    import tempfile

    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        raise SystemExit(f"not a notebook of notebooks/: {', '.join(unknown)} (they are {', '.join(NAMES)})")
    if NAMES[0] in names and not os.path.isdir(demo_export):
        raise SystemExit(f"{demo_export} not found: train the demo first "
                         "(python main.py --config configs/segic.py --workdir /tmp/segic_demo)")
    with tempfile.TemporaryDirectory(prefix="segic_notebooks_") as scratch:
        for entry in ("segic_jax", "configs"):
            os.symlink(os.path.join(ROOT, entry), os.path.join(scratch, entry))
        with kernelspec(os.path.join(scratch, "jupyter")):
            for name, parameters in ((NAMES[0], {"CHECKPOINT": demo_export}), (NAMES[1], {})):
                if name not in names:
                    continue
                ran = run_notebook(name, path=scratch, record_timing=False, timeout=3600, **parameters)
                nb = read_notebook(name)
                for cell, done in zip(nb.cells, ran.cells):
                    if cell.cell_type == "code":
                        cell.outputs = tidy(done.outputs, scratch)
                        cell.execution_count = done.execution_count
                        cell.metadata.pop("execution", None)
                with open(os.path.join(NOTEBOOKS, name), "w", encoding="utf-8") as f:
                    nbformat.write(nb, f)
                print(f"wrote {name} ({os.path.getsize(os.path.join(NOTEBOOKS, name)) / 1e6:.2f} MB)")


if __name__ == "__main__":
    # python tests/test_notebooks.py [DEMO_EXPORT] [NOTEBOOK.ipynb ...]: both notebooks, or those named
    notebooks = [os.path.basename(a) for a in sys.argv[1:] if a.endswith(".ipynb")]
    refresh(*[a for a in sys.argv[1:] if not a.endswith(".ipynb")], names=notebooks or NAMES)
