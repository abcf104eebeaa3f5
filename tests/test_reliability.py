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


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "synthetic_incontext/tiny"


def _one_error_line(err):
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("error,reason,fix", [
    (OSError(28, "No space left on device"), "No space left on device", "free space there or give a --data_dir on another disk"),
    # what TFDS's array_record writer raises on a full disk
    (RuntimeError('Failed to finalize writing of split "train": write() failed: No space left on device; writing '
                  "x.array_record-00000-of-00001; at byte 258048; Failed to close chunk_writer"),
     "No space left on device", "free space there"),
    (OSError(30, "Read-only file system"), "Read-only file system", "give a --data_dir you can write to"),
], ids=["enospc", "array_record_enospc", "erofs"])
def test_a_full_or_read_only_data_dir_is_one_line_and_keeps_nothing(tmp_path, monkeypatch, capfd, error, reason, fix):
    import tensorflow_datasets as tfds

    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("the user's")

    def write_fails(self, *args, **kwargs):  # the build's last write, after every shard
        raise error

    monkeypatch.setattr(tfds.core.DatasetInfo, "write_to_directory", write_fails)
    assert build_cli.main([TINY, "--data_dir", str(data)]) == 1
    line = _one_error_line(capfd.readouterr().err)
    assert line == f"error: cannot write {TINY} in --data_dir {data}: {reason}; " + line.split("; ", 1)[1] and fix in line
    assert os.listdir(data) == ["notes.txt"]  # no dataset folder, temporary folder, lock or downloads/


def test_a_read_only_data_dir_fails_before_building(tmp_path, monkeypatch, capsys):
    # as root, chmod does not stop writes: the check is shown the folder as the system would report it
    folder = tmp_path / "ro"
    folder.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.path.abspath(p) == str(folder) else access(p, mode, **kw))
    assert build_cli.main([TINY, "--data_dir", str(folder / "data")]) == 1
    assert capsys.readouterr().err.strip() == (f"error: cannot write --data_dir {folder / 'data'}: {folder} is not writable "
                                               "by you; choose another --data_dir")
    assert os.listdir(folder) == []


def _dataset_info(data):
    return os.path.join(build_cli.make_builder(TINY, str(data)).data_dir, "dataset_info.json")


def test_a_second_build_waits_for_the_first_and_uses_its_dataset(tmp_path):
    data = tmp_path / "data"
    env = dict(os.environ, PYTHONPATH=ROOT)
    code = "import sys; from segic_jax.data import build; build.ensure_builtin([sys.argv[1]], sys.argv[2])"
    second = None
    try:
        with build_cli.dataset_lock("synthetic_incontext", str(data)):  # this test is the first build
            second = subprocess.Popen([sys.executable, "-c", code, TINY, str(data)], cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            said = ""
            while "waiting for" not in said and second.poll() is None:  # past any warnings of its imports
                said = second.stderr.readline()
            assert said.startswith(f"waiting for process {os.getpid()}, which is building synthetic_incontext in {data}"), said
            # the first build writes its temporary folder while the second waits
            build_cli.build(TINY, None, str(data), progress=False)
            first = os.stat(_dataset_info(data))
            assert second.poll() is None
        out, err = second.communicate(timeout=120)
    finally:
        if second is not None and second.poll() is None:
            second.kill()
            second.wait()
    assert second.returncode == 0, err
    assert "building" not in out  # it found the dataset built
    assert os.stat(_dataset_info(data)).st_ino == first.st_ino


def test_a_build_waits_for_a_killed_one_and_then_builds(tmp_path, capsys):
    import signal
    import threading

    data = tmp_path / "data"
    code = ("import sys, time; from segic_jax.data import build\n"
            "with build.dataset_lock('synthetic_incontext', sys.argv[1]):\n"
            "    print('holding', flush=True); time.sleep(300)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(data)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        stale = data / "synthetic_incontext" / "tiny" / "incomplete.KILLED_1.0.0"  # what the killed build leaves
        stale.mkdir(parents=True)
        result = []
        build = threading.Thread(target=lambda: result.append(build_cli.main([TINY, "--data_dir", str(data)])))
        build.start()
        said = ""
        for _ in range(400):
            said += capsys.readouterr().err
            if "waiting for" in said or not build.is_alive():
                break
            build.join(0.05)
        assert f"waiting for process {holder.pid}, which is building synthetic_incontext in {data}" in said, said
        build.join(0.3)
        assert build.is_alive() and stale.exists()  # waits, and leaves the holder's folder alone
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    build.join(120)
    assert result == [0] and not stale.exists()
    assert os.path.exists(_dataset_info(data))


def test_a_run_of_an_older_version_resumes_while_the_fields_added_since_are_off(tmp_path):
    import json

    from configs import segic as segic_config
    from segic_jax.training import workdir as workdir_lib

    config = segic_config.get_config("demo")
    workdir_lib.record_config(str(tmp_path), config)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["train.init_from"]  # as a run started before the field existed recorded it
    (tmp_path / "config.json").write_text(json.dumps(saved))
    workdir_lib.check_config(str(tmp_path), config)  # off ("") computes what that run computed
    assert json.loads((tmp_path / "config.json").read_text())["train.init_from"] == ""  # recorded as such
    config.train.init_from = "ckpt/segic"
    with pytest.raises(ValueError, match=r"train\.init_from: '' -> 'ckpt/segic'"):
        workdir_lib.check_config(str(tmp_path), config)
