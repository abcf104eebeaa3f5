"""Bad input through the real commands, as a user types them: each case must exit non-zero with one
clear line naming the file, flag or field at fault, print no traceback, and write or delete nothing.

The cases run as subprocesses, a few at a time; none needs a trained model (every input is checked
before a checkpoint is loaded or a model is built)."""

import concurrent.futures
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fake_datasets import write_coco

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = [sys.executable, os.path.join(ROOT, "main.py")]
CONVERT = [sys.executable, "-m", "segic_jax.convert"]
BUILD = [sys.executable, "-m", "segic_jax.data.build"]
PRETRAINED = [sys.executable, "-m", "segic_jax.pretrained"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The inputs the cases point at (a workspace they may not change)."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(root / "ref.png")
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 10:40] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(mask[:20]).save(root / "small_mask.png")
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(root / "empty_mask.png")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "random.pth").write_bytes(rng.bytes(4096))
    (root / "a_file").write_text("not a folder")
    (root / "no_images").mkdir()
    (root / "notes.txt").write_text("a user's notes")
    foreign = root / "foreign_out"  # a folder of the user's that is not a checkpoint
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("months of work")
    (root / "src_inside").mkdir()
    (root / "src_inside" / "model.pth").write_bytes(rng.bytes(64))
    (root / "read_only").mkdir()  # its cases are left out where chmod does not stop writes (as root)
    (root / "read_only").chmod(0o555)
    write_coco(str(root / "coco"), rng)  # train only: no instances_val2017.json
    Image.new("1", (12000, 12000)).save(root / "bomb.png", optimize=True)  # ~17 KB declaring 144 MP
    for folder, names in (("targets", ["a.png"]), ("collide", ["a.png", "a_mask0.png"])):
        (root / folder).mkdir()
        for name in names:
            Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(root / folder / name)
    for name, lock, config in (("garbage_lock", "garbage", None), ("no_config", None, None),
                               ("garbage_config", None, "{not json"), ("checkpoints_file", None, None)):
        run = root / name  # training workdirs in states a resume must refuse
        run.mkdir()
        if name == "checkpoints_file":
            (run / "checkpoints").write_text("not a folder")
        elif lock is None:
            (run / "checkpoints" / "1").mkdir(parents=True)
        if lock is not None:
            (run / ".lock").write_text(lock)
        if config is not None:
            (run / "config.json").write_text(config)
    busy = root / "busy_workdir"
    busy.mkdir()
    # a lock held by a live process (this test's own) on this host
    import socket

    (busy / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
    return root


def cases(f, tmp):
    """(id, argv, exit code or None for any non-zero, message regex, paths that must not exist afterwards)."""
    train = [*MAIN, "--config", os.path.join(ROOT, "configs", "segic.py")]
    w = "{W}"  # each case's own workdir, tmp/<case id>
    ref, mask = str(f / "ref.png"), str(f / "mask.png")
    predict = [*MAIN, "--mode", "predict", "--checkpoint", str(tmp / "no_ckpt"), "--workdir", str(tmp / "p")]
    good = ["--reference", ref, "--reference_mask", mask, "--target", ref]
    convert_segic = [*CONVERT, "segic", "--src", str(f / "random.pth"), "--dinov2", str(f / "random.pth"), "--clip", str(f)]
    out = str(tmp / "out")
    return [
        # training: config fields and flags
        ("unknown_field", [*train, "--workdir", w, "--config.train.num_stpes=1"], 2, r"has no field train\.num_stpes; did you mean train\.num_steps", [w]),
        ("negative_steps", [*train, "--workdir", w, "--config.train.num_steps=-1"], 1, r"config\.train\.num_steps must be >= 0", [w]),
        ("keep_zero", [*train, "--workdir", w, "--config.checkpoint.keep=0"], 1, r"config\.checkpoint\.keep must be >= 1", [w]),
        ("keep_negative", [*train, "--workdir", w, "--config.checkpoint.keep=-1"], 1, r"config\.checkpoint\.keep must be >= 1", [w]),
        ("log_every_zero", [*train, "--workdir", w, "--config.log.every_steps=0"], 1, r"config\.log\.every_steps must be >= 1", [w]),
        ("unknown_benchmark", [*train, "--workdir", w, "--config.eval.benchmark=nope"], 1, r"config\.eval\.benchmark must be one of .*fss1000", [w]),
        ("batch_zero", [*train, "--workdir", w, "--config.train.global_batch_size=0"], 1, r"config\.train\.global_batch_size must be >= 1", [w]),
        ("image_size", [*train, "--workdir", w, "--config.image_size=50"], 1, r"config\.image_size must be a multiple of 14", [w]),
        ("dtype", [*train, "--workdir", w, "--config.dtype=float16"], 1, r"config\.dtype must be one of bfloat16, float32", [w]),
        ("learning_rate", [*train, "--workdir", w, "--config.train.learning_rate=0"], 1, r"config\.train\.learning_rate must be > 0", [w]),
        ("probability", [*train, "--workdir", w, "--config.train.box_prob=1.5"], 1, r"config\.train\.box_prob must be <= 1", [w]),
        ("fsdp_zero", [*train, "--workdir", w, "--config.mesh.fsdp=0"], 1, r"config\.mesh\.fsdp must be >= 1", [w]),
        ("arch", [*train, "--workdir", w, "--config.dinov2.arch=vitz14"], 1, r"config\.dinov2\.arch must be one of", [w]),
        ("not_a_number", [*train, "--workdir", w, "--config.train.num_steps=abc"], 2, r"--config\.train\.num_steps=abc", [w]),
        ("unknown_flag", [*MAIN, "--workdir", w, "--nonsense"], 2, r"Unknown command line flag 'nonsense'", [w]),
        ("no_config", [*MAIN, "--workdir", w], 2, r"--mode train needs --config", [w]),
        ("no_workdir", [*train], 2, r"--mode train needs --workdir", []),
        ("workdir_is_file", [*train, "--workdir", str(f / "a_file")], 1, r"a_file is a file", []),
        ("workdir_busy", [*train, "--workdir", str(f / "busy_workdir")], 1, rf"busy_workdir is in use by process {os.getpid()}", []),
        ("train_garbage_lock", [*train, "--workdir", str(f / "garbage_lock")], 1,
         r"garbage_lock/\.lock is not a lock this project wrote \(it does not read as JSON.*\); if no run uses this workdir, remove it", []),
        ("train_no_config_json", [*train, "--workdir", str(f / "no_config"), "--config.seed=1"], 1,
         r"no_config holds checkpoints but no config\.json, .*pass --config\.checkpoint\.resume_without_config=True", []),
        ("train_garbage_config_json", [*train, "--workdir", str(f / "garbage_config")], 1,
         r"cannot read .*garbage_config/config\.json \(Expecting property name.*\), the config of the run", []),
        ("train_checkpoints_is_a_file", [*train, "--workdir", str(f / "checkpoints_file")], 1,
         r"checkpoints_file/checkpoints is a file, where this workdir's checkpoints go", []),
        ("missing_dataset", [*MAIN, "--config", os.path.join(ROOT, "configs", "segic.py:paper"), "--workdir", w,
                             f"--config.data.data_dir={tmp / 'no_data'}"], 1,
         r"coco20i_semantic is not built under .*no_data; build it with `python -m segic_jax\.data\.build coco20i_semantic --manual_dir", [str(tmp / "no_data")]),
        # prediction: every input is checked before the (here missing) checkpoint is looked at
        ("missing_reference", [*predict, "--reference", str(f / "nope.png"), "--reference_mask", mask, "--target", ref], 1, r"image file not found: .*nope\.png", [str(tmp / "p")]),
        ("missing_mask", [*predict, "--reference", ref, "--reference_mask", str(f / "nope.png"), "--target", ref], 1, r"mask file not found: .*nope\.png", [str(tmp / "p")]),
        ("mask_size", [*predict, "--reference", ref, "--reference_mask", str(f / "small_mask.png"), "--target", ref], 1, r"small_mask\.png is 60x20 .*ref\.png is 60x40", [str(tmp / "p")]),
        ("empty_mask", [*predict, "--reference", ref, "--reference_mask", str(f / "empty_mask.png"), "--target", ref], 1, r"empty_mask\.png is empty", [str(tmp / "p")]),
        ("corrupt_reference", [*predict, "--reference", str(f / "corrupt.jpg"), "--reference_mask", mask, "--target", ref], 1, r"cannot read .*corrupt\.jpg as an image", [str(tmp / "p")]),
        ("reference_is_folder", [*predict, "--reference", str(f / "no_images"), "--reference_mask", mask, "--target", ref], 1, r"image file not found: .*no_images \(it is a folder\)", [str(tmp / "p")]),
        ("mask_count", [*predict, "--reference", ref, "--reference", ref, "--reference_mask", mask, "--target", ref], 1, r"2 --reference images but 1 --reference_mask", [str(tmp / "p")]),
        ("class_count", [*predict, *good, "--class_name", "a", "--class_name", "b"], 1, r"2 --class_name values for 1 references", [str(tmp / "p")]),
        ("missing_target", [*predict, "--reference", ref, "--reference_mask", mask, "--target", str(f / "nope")], 1, r"target not found: .*nope", [str(tmp / "p")]),
        ("empty_target_folder", [*predict, "--reference", ref, "--reference_mask", mask, "--target", str(f / "no_images")], 1, r"no images .* in the target folder .*no_images", [str(tmp / "p")]),
        ("bad_outputs", [*predict, *good, "--outputs", "masks,pdf"], 1, r"--outputs must name some of masks, overlay, propagated", [str(tmp / "p")]),
        ("predict_workdir_file", [*MAIN, "--mode", "predict", "--checkpoint", str(tmp / "no_ckpt"), "--workdir", str(f / "a_file"), *good], 1, r"a_file is a file", []),
        ("missing_checkpoint", [*predict, *good], 1, r"no_ckpt is not a converted SEGIC checkpoint", [str(tmp / "p")]),
        ("batch_size_zero", [*predict, *good, "--batch_size", "0"], 2, r"--batch_size=0: 0 is not a positive integer", [str(tmp / "p")]),
        ("predict_bomb_reference", [*predict, "--reference", str(f / "bomb.png"), "--reference_mask", mask, "--target", ref], 1,
         r"bomb\.png is 12000x12000 pixels \(144\.0 MP\), over the limit of 67\.1 MP; .*SEGIC_JAX_MAX_PIXELS", [str(tmp / "p")]),
        ("predict_class_name_lines", [*predict, *good, "--class_name", "a\nb"], 1, r"--class_name 'a\\nb' must be one line of text", [str(tmp / "p")]),
        ("predict_out_is_targets", [*MAIN, "--mode", "predict", "--checkpoint", str(tmp / "no_ckpt"), "--workdir", str(f / "targets"),
                                    "--reference", ref, "--reference_mask", mask, "--target", str(f / "targets")], 1,
         r"--workdir .*targets is the target folder .*: the outputs would sit among your images .*--outputs_beside_targets", []),
        ("predict_out_in_targets", [*MAIN, "--mode", "predict", "--checkpoint", str(tmp / "no_ckpt"), "--workdir", str(f / "targets" / "out"),
                                    "--reference", ref, "--reference_mask", mask, "--target", str(f / "targets")], 1,
         r"--workdir .*out is inside the target folder", [str(f / "targets" / "out")]),
        ("predict_out_beside_target_file", [*MAIN, "--mode", "predict", "--checkpoint", str(tmp / "no_ckpt"), "--workdir", str(f / "targets"),
                                            "--reference", ref, "--reference_mask", mask, "--target", str(f / "targets" / "a.png")], 1,
         r"--workdir .*targets is the target folder", []),
        ("predict_output_replaces_target", [*MAIN, "--mode", "predict", "--checkpoint", str(tmp / "no_ckpt"), "--workdir", str(f / "collide"),
                                            "--reference", ref, "--reference_mask", mask, "--target", str(f / "collide"), "--outputs_beside_targets"], 1,
         r"the output a_mask0\.png would replace the target .*collide/a_mask0\.png", []),
        ("predict_out_under_file", [*MAIN, "--mode", "predict", "--checkpoint", str(tmp / "no_ckpt"), "--workdir", str(f / "a_file" / "out"), *good], 1,
         r"cannot write the outputs to --workdir .*a_file/out: Not a directory", []),
        ("predict_needs_target", [*MAIN, "--mode", "predict", "--checkpoint", str(tmp / "no_ckpt"), "--workdir", str(tmp / "p")], 2, r"--mode predict needs --checkpoint and --target", [str(tmp / "p")]),
        # the page: the model is checked before Gradio or a server starts
        ("serve_missing_checkpoint", [*MAIN, "--mode", "serve", "--checkpoint", str(tmp / "no_ckpt")], 1, r"no_ckpt is not a converted SEGIC checkpoint", []),
        ("serve_port_out_of_range", [*MAIN, "--mode", "serve", "--port", "70000"], 2, r"--port=70000: 70000 is not an integer in the range \[1, 65535\]", []),
        ("serve_with_workdir", [*MAIN, "--mode", "serve", "--workdir", w], 2, r"--mode serve writes no files: drop --workdir", [w]),
        # conversion
        ("convert_missing_src", [*CONVERT, "dinov2", "--src", str(f / "nope.pth"), "--out", out], 1, r"--src .*nope\.pth does not exist", [out]),
        ("convert_out_is_file", [*CONVERT, "dinov2", "--src", str(f / "random.pth"), "--out", str(f / "a_file"), "--overwrite"], 1, r"--out .*a_file is a file", []),
        ("convert_out_exists", [*CONVERT, "dinov2", "--src", str(f / "random.pth"), "--out", str(f / "no_images")], 1, r"no_images already exists; pass --overwrite", []),
        ("convert_foreign_out", [*CONVERT, "dinov2", "--src", str(f / "random.pth"), "--out", str(f / "foreign_out"), "--overwrite"], 1, r"refusing to replace .*foreign_out: it is not a checkpoint written by segic_jax \(it holds thesis\.tex\)", []),
        ("convert_src_inside_out", [*CONVERT, "dinov2", "--src", str(f / "src_inside" / "model.pth"), "--out", str(f / "src_inside"), "--overwrite"], 1, r"refusing to replace .*src_inside: it holds .*model\.pth", []),
        ("convert_random_pth", [*CONVERT, "dinov2", "--src", str(f / "random.pth"), "--out", out], 1, r"cannot read .*random\.pth as a PyTorch checkpoint: it is not a file of tensors", [out]),
        ("convert_image_size", [*convert_segic, "--out", out, "--image-size", "0"], 1, r"--image-size must be a positive multiple of 14", [out]),
        *([("convert_out_read_only", [*CONVERT, "dinov2", "--src", str(f / "random.pth"), "--out", str(f / "read_only" / "out")], 1,
            r"cannot write --out .*read_only/out: .*read_only is not writable by you; choose another --out", [])]
          if not os.access(f / "read_only", os.W_OK) else []),
        # dataset builds
        ("build_unknown", [*BUILD, "cocoo", "--data_dir", str(tmp / "d")], 1, r"unknown dataset 'cocoo'", [str(tmp / "d")]),
        ("build_no_manual_dir", [*BUILD, "coco_instances", "--data_dir", str(tmp / "d")], 1, r"coco_instances is built from your files: give --manual_dir", [str(tmp / "d")]),
        ("build_missing_manual_dir", [*BUILD, "coco_instances", "--manual_dir", str(f / "nope"), "--data_dir", str(tmp / "d")], 1, r"missing folder .*nope \(--manual_dir of coco_instances\)", [str(tmp / "d")]),
        ("build_missing_split", [*BUILD, "coco_instances", "--manual_dir", str(f / "coco"), "--data_dir", str(tmp / "d")], 1,
         r"missing .*instances_val2017\.json \(the val split\)\. To build only what you have: --splits train", [str(tmp / "d" / "coco_instances")]),
        ("build_unknown_split", [*BUILD, "coco_instances", "--manual_dir", str(f / "coco"), "--data_dir", str(tmp / "d"), "--splits", "test"], 1,
         r"coco_instances has no split test; its splits are train, val", [str(tmp / "d" / "coco_instances")]),
        *([("build_data_dir_read_only", [*BUILD, "synthetic_incontext/tiny", "--data_dir", str(f / "read_only" / "d")], 1,
            r"cannot write --data_dir .*read_only/d: .*read_only is not writable by you; choose another --data_dir", [])]
          if not os.access(f / "read_only", os.W_OK) else []),
        # the released model
        ("pretrained_unknown", [*PRETRAINED, "segic_vit_h"], 2, r"invalid choice: 'segic_vit_h'", []),
        ("pretrained_image_size", [*PRETRAINED, "--image_size", "100"], 1, r"image_size must be a positive multiple of 14", []),
        # evaluation
        ("eval_no_checkpoint", [*MAIN, "--mode", "eval", "--config", os.path.join(ROOT, "configs", "eval.py"), "--workdir", w], 1, r"set --config\.checkpoint", [w]),
        ("eval_missing_checkpoint", [*MAIN, "--mode", "eval", "--config", os.path.join(ROOT, "configs", "eval.py"), "--workdir", w,
                                     f"--config.checkpoint={tmp / 'no_ckpt'}"], 1, r"no_ckpt is not a converted SEGIC checkpoint", [w]),
    ]


def _snapshot(root):
    return sorted((os.path.relpath(os.path.join(d, n), root), os.path.getsize(os.path.join(d, n)))
                  for d, _, names in os.walk(root) for n in names)


def test_bad_inputs_fail_clearly_and_lose_nothing(files, tmp_path):
    table = [(name, [a.replace("{W}", str(tmp_path / name)) for a in argv], code, message,
              [p.replace("{W}", str(tmp_path / name)) for p in absent])
             for name, argv, code, message, absent in cases(files, tmp_path)]
    assert len(table) >= 40 and len({c[0] for c in table}) == len(table)
    before = _snapshot(files)
    env = dict(os.environ, PYTHONPATH=ROOT, SEGIC_JAX_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")

    def run(case):
        _, argv, *_ = case
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(run, table))
    problems = []
    for (name, argv, code, message, absent), result in zip(table, results):
        err = result.stderr
        lines = [line for line in err.splitlines() if line.startswith("error") or "error:" in line]
        if (code is None and result.returncode == 0) or (code is not None and result.returncode != code):
            problems.append(f"{name}: exit {result.returncode}, wanted {code}: {err[-500:]}")
        elif not re.search(message, err):
            problems.append(f"{name}: {message!r} not in {err[-500:]!r}")
        elif "Traceback" in err or len(lines) != 1 or "weights_only" in err:
            problems.append(f"{name}: not one clear line: {err[-800:]!r}")
        for path in absent:
            if os.path.exists(path):
                problems.append(f"{name}: wrote {path}")
    assert not problems, "\n".join(problems)
    assert _snapshot(files) == before  # no input was changed or removed
    assert (files / "foreign_out" / "thesis.tex").read_text() == "months of work"


def test_ctrl_c_in_the_offline_tools_is_one_line_and_status_130(monkeypatch, capsys):
    from segic_jax import convert, pretrained
    from segic_jax.data import build

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert, "check_arguments", interrupted)
    monkeypatch.setattr(build, "build", interrupted)
    monkeypatch.setattr(pretrained, "pretrained_dir", interrupted)
    for main, argv in ((convert.main, ["dinov2", "--src", "x.pth", "--out", "out"]),
                       (build.main, ["synthetic_incontext/tiny", "--data_dir", "d"]),
                       (pretrained.main, [])):
        assert main(argv) == 130
        assert capsys.readouterr().err == "interrupted\n"


def test_a_read_only_or_full_output_folder_is_found_before_any_work(tmp_path, monkeypatch, files):
    """Where chmod cannot make a folder read-only (as root), the system's refusal is injected at the write."""
    import errno
    import tempfile

    from segic_jax.inference import segment_files
    from segic_jax.training import workdir as workdir_lib

    inputs = segment_files.prepare([str(files / "ref.png")], [str(files / "mask.png")], str(files / "ref.png"))
    real_open = os.open
    for code, words in ((errno.EROFS, "Read-only file system"), (errno.ENOSPC, "No space left on device")):
        def refused(*args, **kwargs):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(tempfile, "TemporaryFile", refused)
        with pytest.raises(ValueError, match=rf"cannot write the outputs to --workdir .*new/out: {words}"):
            segment_files.check_out_dir(str(tmp_path / "new" / "out"), str(files / "ref.png"), inputs)
        assert not (tmp_path / "new").exists()  # the folders made for the probe are removed again
        monkeypatch.undo()

        def refused_lock(path, *args, **kwargs):
            if str(path).endswith(workdir_lib.LOCK_FILE):
                raise OSError(code, os.strerror(code), path)
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", refused_lock)
        with pytest.raises(ValueError, match=rf"cannot write to --workdir .*run \({words}\); give a folder you can write"):
            workdir_lib.Lock(str(tmp_path / "run"))
        monkeypatch.undo()
