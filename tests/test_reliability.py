"""Never lose or half-write a user's data: replacing outputs, permissions, leftovers of killed work,
incomplete dataset builds, damaged files named with their path."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fake_datasets import build_args, write_ade, write_coco, write_davis
from segic_jax import atomic_files, checkpoints
from segic_jax.models import bundle
from segic_jax.data import build as build_cli
from segic_jax.data.builders import BUILDERS
from segic_jax.evaluation import records


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_files.write_json(str(tmp_path / "a.json"), {"x": 1})
        with atomic_files.atomic_directory(str(tmp_path / "d")) as tmp:
            open(os.path.join(tmp, "f"), "w").close()
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.json").st_mode & 0o777 == 0o644  # mkstemp alone gives 0600
    assert os.stat(tmp_path / "d").st_mode & 0o777 == 0o755  # mkdtemp alone gives 0700


def _fake_model_dir(path, marker):
    os.makedirs(os.path.join(path, checkpoints.PARAMS_DIR), exist_ok=True)
    with open(os.path.join(path, checkpoints.DESCRIPTION_FILE), "w") as f:
        f.write(marker)


def test_overwrite_replaces_only_our_own_outputs_in_one_step(tmp_path):
    out = tmp_path / "out"
    _fake_model_dir(out, "old")
    with atomic_files.atomic_directory(str(out), overwrite=True, replaceable=bundle.check_replaceable) as tmp:
        _fake_model_dir(tmp, "new")
    assert (out / checkpoints.DESCRIPTION_FILE).read_text() == "new"
    assert [n for n in os.listdir(tmp_path) if n != "out"] == []  # the old one is gone, no leftovers

    # a failure inside the block keeps the old one whole
    with pytest.raises(RuntimeError):
        with atomic_files.atomic_directory(str(out), overwrite=True, replaceable=bundle.check_replaceable):
            raise RuntimeError("conversion failed")
    assert (out / checkpoints.DESCRIPTION_FILE).read_text() == "new"

    (out / "notes.txt").write_text("mine")  # a user's file inside: no longer ours to replace
    with pytest.raises(ValueError, match="it holds notes.txt"):
        bundle.check_replaceable(str(out))
    with pytest.raises(ValueError, match="it holds .*notes.txt, which this conversion reads"):
        bundle.check_replaceable(str(tmp_path), [str(out / "notes.txt"), str(tmp_path / "out")])


def test_leftovers_of_killed_writes_are_removed(tmp_path):
    target = tmp_path / "export"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".export.partial-{dead.pid}-{atomic_files._host()}-abc123"
    stale.mkdir()
    (stale / "big.bin").write_bytes(b"0" * 1000)
    live = tmp_path / f".export.partial-{os.getpid()}-{atomic_files._host()}-def456"  # a write in progress here
    live.mkdir()
    with atomic_files.atomic_directory(str(target)):
        pass
    assert not stale.exists() and live.exists() and target.is_dir()


def test_layout_text_is_each_modules_not_the_class_docstring():
    for name, cls in BUILDERS.items():
        if name != "synthetic_incontext":
            text = cls.MANUAL_DOWNLOAD_INSTRUCTIONS
            assert text and "--manual_dir" in text and text != cls.__doc__, name


def test_a_partial_build_is_completed_by_a_rebuild_and_killed_builds_leave_nothing(tmp_path):
    rng = np.random.default_rng(0)
    coco, data = tmp_path / "coco", tmp_path / "data"
    write_coco(str(coco), rng, split="train")
    assert build_cli.main(build_args("coco_instances", coco, data)) == 0  # --splits train
    builder = build_cli.make_builder("coco_instances", str(data))
    assert set(builder.info.splits) == {"train"}
    write_coco(str(coco), rng, split="val")
    stale = os.path.join(os.path.dirname(os.fspath(builder.data_path)), "incomplete.KILLED_1.0.0")
    os.makedirs(stale)
    # asking for the other split builds it again with both, the earlier one kept
    assert build_cli.main(["coco_instances", "--manual_dir", str(coco), "--data_dir", str(data), "--splits", "val"]) == 0
    assert set(build_cli.make_builder("coco_instances", str(data)).info.splits) == {"train", "val"}
    assert not os.path.exists(stale)
    # and a build of every split finds it complete
    assert build_cli.main(["coco_instances", "--manual_dir", str(coco), "--data_dir", str(data)]) == 0
    assert set(build_cli.make_builder("coco_instances", str(data)).info.splits) == {"train", "val"}


def test_damaged_build_inputs_are_named(tmp_path, capsys):
    rng = np.random.default_rng(0)
    ade = tmp_path / "ade"
    write_ade(str(ade), rng)
    label = ade / "annotations" / "training" / "ADE_train_00000002.png"
    label.write_bytes(label.read_bytes()[:60])  # truncated
    assert build_cli.main(["ade20k_semantic", "--manual_dir", str(ade), "--data_dir", str(tmp_path / "d")]) == 1
    assert "ADE_train_00000002.png as an image" in capsys.readouterr().err

    davis = tmp_path / "davis"
    write_davis(str(davis), rng)
    mask = next(p for p in sorted((davis / "Annotations" / "480p" / "bear").iterdir()))
    Image.open(mask).resize((7, 5)).save(mask)
    assert build_cli.main(build_args("davis2017", davis, tmp_path / "d")) == 1
    err = capsys.readouterr().err
    assert f"{mask} is 7x5 but its image" in err and "a mask must have its image's size" in err
    assert not (tmp_path / "d" / "davis2017").exists() or not any(
        (tmp_path / "d" / "davis2017").rglob("dataset_info.json"))


def test_a_damaged_records_file_is_named(tmp_path):
    store = records.UnitStore(str(tmp_path))
    store.open({"benchmark": "x"})
    store.write([0, 1], records.Rows.empty(), (0, 1))
    (chunk,) = [n for n in os.listdir(tmp_path) if n.startswith("chunk-")]
    path = tmp_path / chunk
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=f"the records file {path} is damaged"):
        store.load()


def test_reading_a_missing_builtin_dataset_never_builds_it(tmp_path):
    from segic_jax.data.sources import data_source

    with pytest.raises(FileNotFoundError, match=r"synthetic_incontext/tiny is not built under .*python -m segic_jax\.data\.build "
                                                 r"synthetic_incontext/tiny --data_dir"):
        data_source("synthetic_incontext/tiny", "test", str(tmp_path / "data"))
    assert not (tmp_path / "data").exists()  # no folders made, nothing downloaded or built
