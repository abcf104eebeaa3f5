"""Converter errors, atomic writes and the command line."""

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from segic_jax import checkpoints, convert
from segic_jax.conversion import dinov2 as dinov2_conversion
from segic_jax.conversion.core import ConversionError, Rule, apply_rules, linear
from segic_jax.models import dinov2
from segic_jax.models.dinov2 import Dinov2
from sandbox import marking_stand_in, python_path
from torch_reference import hf_dinov2, hf_folder_to_hub_state_dict


@pytest.fixture(scope="module")
def hub_state(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    hf_dinov2().save_pretrained(str(folder))
    return hf_folder_to_hub_state_dict(str(folder))


def _write(tmp_path, state, name="dinov2_vits14_pretrain.pth"):
    path = str(tmp_path / name)
    torch.save(state, path)
    return path


def _nothing_written(tmp_path, out_name="out"):
    return not (tmp_path / out_name).exists() and not any(".partial-" in p for p in os.listdir(tmp_path))


def test_missing_key_is_named_and_nothing_written(tmp_path, hub_state, capsys):
    state = dict(hub_state)
    del state["blocks.1.attn.proj.weight"]
    src = _write(tmp_path, state)
    assert convert.main(["dinov2", "--src", src, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "missing keys" in err and "blocks.1.attn.proj.kernel" in err
    assert _nothing_written(tmp_path)


def test_wrong_shape_is_named(tmp_path, hub_state):
    state = dict(hub_state)
    state["blocks.0.mlp.fc1.bias"] = torch.zeros(7)
    with pytest.raises(ConversionError, match=r"blocks.0.mlp.fc1.bias: source gives \(7,\), model needs \(512,\)"):
        dinov2_conversion.convert(_write(tmp_path, state), progress=False)


def test_unexpected_key_is_named(tmp_path, hub_state):
    state = dict(hub_state)
    state["head.weight"] = torch.zeros(3, 3)
    state["blocks.7.norm1.weight"] = torch.zeros(128)  # a block the 2-deep model does not have
    with pytest.raises(ConversionError) as e:
        dinov2_conversion.convert(_write(tmp_path, state), overrides={"depth": 2}, progress=False)
    assert "unexpected keys (no rule converts them): head.weight" in str(e.value)
    assert "blocks.7.norm1.weight -> blocks.7.norm1.scale" in str(e.value)


def test_fused_target_with_a_missing_slice_is_named():
    rules = [Rule("q", "qkv", linear, (0, 3)), Rule("k", "qkv", linear, (1, 3))]
    with pytest.raises(ConversionError, match=r"qkv: slices \[2\] of 3 are missing"):
        apply_rules({"q": np.ones((2, 2)), "k": np.ones((2, 2))}, rules, {"qkv": (2, 6)}, progress=False)


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("weights.npz", b"x", "expected a .pth, .pt, .bin or .safetensors file"),
        ("broken.pth", b"not a zip", "cannot read .* as a PyTorch checkpoint"),
        ("broken.safetensors", b"\x00" * 3, "cannot read .* as safetensors"),
    ],
)
def test_unreadable_files_are_named(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ConversionError, match=message):
        dinov2_conversion.convert(str(tmp_path / name), progress=False)


def test_absent_source_and_foreign_checkpoint_are_named(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        dinov2_conversion.convert(str(tmp_path / "nope.pth"), progress=False)
    save_file({"fc.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConversionError, match="neither an official DINOv2 checkpoint"):
        dinov2_conversion.convert(str(tmp_path), progress=False)
    with pytest.raises(ConversionError, match="folder without weights"):
        dinov2_conversion.convert(str(tmp_path / ".."), progress=False)


def test_cli_converts_and_refuses_to_overwrite(tmp_path, hub_state, capsys):
    src = _write(tmp_path, hub_state)
    out = str(tmp_path / "out")
    assert convert.main(["dinov2", "--src", src, "--out", out]) == 0
    assert "wrote dinov2" in capsys.readouterr().out
    model = dinov2.load(out)
    assert model.cfg.interpolate_offset == 0.1 and model.cfg.depth == 2
    before = os.listdir(os.path.join(out, checkpoints.PARAMS_DIR))
    assert convert.main(["dinov2", "--src", src, "--out", out]) == 1
    assert "already exists" in capsys.readouterr().err
    assert os.listdir(os.path.join(out, checkpoints.PARAMS_DIR)) == before
    assert convert.main(
        ["dinov2", "--src", src, "--out", out, "--overwrite", "--interpolate-offset", "0", "--interpolate-antialias", "true"]
    ) == 0
    cfg = dinov2.load(out).cfg
    assert cfg.interpolate_offset == 0.0 and cfg.interpolate_antialias


def test_a_failed_write_leaves_nothing_behind(tmp_path, hub_state):
    config, params = dinov2_conversion.convert(_write(tmp_path, hub_state), progress=False)
    with pytest.raises(FileNotFoundError):
        checkpoints.save_model(
            str(tmp_path / "out"), Dinov2, config, params, extra_files={"tokenizer.json": str(tmp_path / "absent")}
        )
    assert _nothing_written(tmp_path)
    params.pop("norm.bias")
    with pytest.raises(ValueError, match="missing.*norm.bias"):
        checkpoints.save_model(str(tmp_path / "out"), Dinov2, config, params)
    assert _nothing_written(tmp_path)


def test_loading_something_else_is_a_clear_error(tmp_path, hub_state):
    with pytest.raises(FileNotFoundError, match="not a segic_jax checkpoint"):
        dinov2.load(str(tmp_path))
    config, params = dinov2_conversion.convert(_write(tmp_path, hub_state), progress=False)
    out = checkpoints.save_model(str(tmp_path / "out"), Dinov2, config, params)
    from segic_jax.models import clip_text

    with pytest.raises(ValueError, match="holds a 'dinov2' model, not 'clip_text'"):
        clip_text.load(out)
    desc = os.path.join(out, checkpoints.DESCRIPTION_FILE)
    with open(desc) as f:
        d = json.load(f)
    d["config"]["depth_typo"] = 3
    with open(desc, "w") as f:
        json.dump(d, f)
    with pytest.raises(ValueError, match=r"unknown DINOv2 config fields \['depth_typo'\]"):
        dinov2.load(out)


def test_clip_source_must_be_a_folder(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert convert.main(["clip_text", "--src", str(tmp_path / "model.safetensors"), "--out", str(tmp_path / "o")]) == 1


def test_hf_folder_with_pytorch_model_bin_or_shards(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "hf"
    hf_dinov2().save_pretrained(str(folder))
    _, reference = dinov2_conversion.convert(str(folder), progress=False)
    state = load_file(str(folder / "model.safetensors"))
    os.remove(folder / "model.safetensors")

    torch.save(state, str(folder / "pytorch_model.bin"))
    _, from_bin = dinov2_conversion.convert(str(folder), progress=False)
    os.remove(folder / "pytorch_model.bin")

    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, names in shards.items():
        save_file({k: state[k].contiguous() for k in names}, str(folder / name))
    index = {"weight_map": {k: name for name, names in shards.items() for k in names}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    _, from_shards = dinov2_conversion.convert(str(folder), progress=False)
    for params in (from_bin, from_shards):
        assert params.keys() == reference.keys()
        assert all(np.array_equal(params[k], reference[k]) for k in reference)


def test_safetensors_conversion_does_not_need_torch(tmp_path):
    # converting a safetensors folder and loading the result must never reach for PyTorch
    folder = tmp_path / "hf"
    hf_dinov2().save_pretrained(str(folder))
    site, mark = marking_stand_in(tmp_path, "torch")
    code = (
        "import sys; from segic_jax import convert; from segic_jax.models import dinov2; "
        f"assert convert.main(['dinov2', '--src', {str(folder)!r}, '--out', {str(tmp_path / 'out')!r}]) == 0; "
        f"dinov2.load({str(tmp_path / 'out')!r})"
    )
    env = python_path(site, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not mark.exists()
    # while a .pth does need it, and says so
    src = _write(tmp_path, {"cls_token": torch.zeros(1, 1, 8)})
    code = f"from segic_jax.conversion import dinov2 as d; d.convert({src!r}, progress=False)"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "needs PyTorch" in result.stderr and mark.exists()


def test_cli_converts_a_clip_folder(tmp_path, capsys):
    from torch_reference import hf_clip_text

    hf_clip_text(vocab=500, width=32, depth=1, heads=2, mlp=64, full_model=True).save_pretrained(str(tmp_path / "clip"))
    assert convert.main(["clip_text", "--src", str(tmp_path / "clip"), "--out", str(tmp_path / "out")]) == 0
    assert "wrote clip_text" in capsys.readouterr().out
    from segic_jax.models import clip_text

    model = clip_text.load(str(tmp_path / "out"))
    assert (model.cfg.vocab_size, model.cfg.width, model.cfg.depth, model.cfg.eos_token_id) == (500, 32, 1, 499)


def _error_lines(err):
    return [line for line in err.splitlines() if "error" in line.lower()]


class _FailingCheckpointer:
    """orbax's checkpointer as it fails on a full or read-only disk: part of the tree written, an
    absl ERROR logged by a writer thread, an "Event loop is closed" left to a callback, the error
    raised, and a write still in flight that makes a file in the temporary folder afterwards."""

    def __init__(self, error):
        self.error, self.late = error, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def save(self, path, tree):
        import threading
        import time

        from absl import logging as absl_logging

        os.makedirs(os.path.join(path, "d"))
        (Path(path) / "d" / "shard").write_bytes(b"0" * 1000)
        absl_logging.error("_SignalingThread.run() raised an exception: %s", self.error)

        class Callback:
            def __del__(self):
                raise RuntimeError("Event loop is closed")

        Callback()

        def in_flight():
            time.sleep(0.15)
            os.makedirs(os.path.join(path, "d"), exist_ok=True)
            (Path(path) / "d" / "late").write_bytes(b"1")

        self.late = threading.Thread(target=in_flight)
        self.late.start()
        raise self.error


@pytest.mark.parametrize("error,reason,fix", [
    (OSError(errno.EROFS, "Read-only file system"), "Read-only file system", "give an --out in a folder you can write to"),
    # what tensorstore raises under orbax on a full disk
    (ValueError("RESOURCE_EXHAUSTED: Error writing \"cls_token/0.0.0\" in OCDBT database at local file \"/x/\": "
                "Failed to write 1327837 bytes to file 11: No space left on device [os_error_code='28']"),
     "No space left on device", "free space on that disk"),
], ids=["erofs", "tensorstore_enospc"])
def test_a_full_or_read_only_disk_is_one_line_and_leaves_nothing(tmp_path, hub_state, monkeypatch, capfd, error, reason, fix):
    src = _write(tmp_path, hub_state)
    capfd.readouterr()
    failing = _FailingCheckpointer(error)
    monkeypatch.setattr(checkpoints, "_checkpointer", lambda: failing)
    out = tmp_path / "out"
    assert convert.main(["dinov2", "--src", src, "--out", str(out)]) == 1
    failing.late.join()
    err = capfd.readouterr().err
    assert _error_lines(err) == [line for line in err.splitlines() if line.startswith("error: ")], err
    (line,) = _error_lines(err)
    assert f"cannot write --out {out}: {reason}" in line and fix in line and "nothing was written" in line
    assert "Traceback" not in err and "Event loop" not in err
    assert _nothing_written(tmp_path), os.listdir(tmp_path)


def test_a_read_only_out_folder_fails_before_reading(tmp_path, monkeypatch, capsys):
    # as root, chmod does not stop writes: the check is shown the folder as the system would report it
    folder = tmp_path / "ro"
    folder.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.path.abspath(p) == str(folder) else access(p, mode, **kw))
    (tmp_path / "random.pth").write_bytes(b"not read")
    assert convert.main(["dinov2", "--src", str(tmp_path / "random.pth"), "--out", str(folder / "a" / "out")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (f"error: cannot write --out {folder / 'a' / 'out'}: {folder} is not writable by you; "
                           "choose another --out")
    assert os.listdir(folder) == []


@pytest.mark.parametrize("index,message", [
    ('{"metadata": {"total_size": 10}}', "has no weight_map"),
    ('[1, 2]', "has no weight_map"),
    ('{"weight_map": ', r"is not valid JSON \(Expecting value: line 1 column 16"),
    ('{"weight_map": {"a": "../model-1.safetensors"}}', "names shards that are not file names in its folder"),
    ('{"weight_map": {"a": "model-1.safetensors"}}', r"names model-1\.safetensors, not in .*download the missing"),
], ids=["no_weight_map", "not_a_dict", "malformed", "outside", "missing_shard"])
def test_a_damaged_shard_index_is_named(tmp_path, capsys, index, message):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text(index)
    assert convert.main(["dinov2", "--src", str(folder), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: the shard index {folder / 'model.safetensors.index.json'} ")
    assert re.search(message, err), err
    assert _nothing_written(tmp_path)


class _RunsCode:
    def __init__(self, mark):
        self.mark = mark

    def __reduce__(self):
        return os.system, (f"touch {self.mark}",)


def test_a_pth_that_refers_to_code_is_refused_without_advice_to_trust_it(tmp_path, capsys):
    src = str(tmp_path / "model.pth")
    torch.save({"cls_token": torch.zeros(1), "payload": _RunsCode(tmp_path / "ran")}, src)
    assert convert.main(["dinov2", "--src", src, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: cannot read {src} as a PyTorch checkpoint: it is not a file of tensors")
    assert "system" in err  # what the file refers to
    assert not re.search(r"weights.?only|trust|allowlist|safe_globals", err, re.IGNORECASE), err
    assert not (tmp_path / "ran").exists() and _nothing_written(tmp_path)


@pytest.mark.parametrize("text", [
    # torch 2.4-2.5
    "Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely succeed, but it "
    "can result in arbitrary code execution. Do it only if you got the file from a trusted source.\n Please file an issue "
    "with the following so that we can make `weights_only=True` compatible with your use case: WeightsUnpickler error: "
    "Unsupported global: GLOBAL posix.system was not an allowed global by default. Please use "
    "`torch.serialization.add_safe_globals([system])` to allowlist this global if you trust this class/function.\n\n"
    "Check the documentation of torch.load to learn more about types accepted by default with weights_only "
    "https://pytorch.org/docs/stable/generated/torch.load.html.",
    # torch 2.6-2.8
    "Weights only load failed. This file can still be loaded, to do so you have two options, \x1b[1mdo those steps only "
    "if you trust the source of the checkpoint\x1b[0m. \n\t(1) In PyTorch 2.6, we changed the default value of the "
    "`weights_only` argument in `torch.load` from `False` to `True`. Re-running `torch.load` with `weights_only` set to "
    "`False` will likely succeed, but it can result in arbitrary code execution. Do it only if you got the file from a "
    "trusted source.\n\t(2) Alternatively, to load with `weights_only=True` please check the recommended steps in the "
    "following error message.\n\tWeightsUnpickler error: Unsupported global: GLOBAL posix.system was not an allowed "
    "global by default. Please use `torch.serialization.add_safe_globals([system])` or the "
    "`torch.serialization.safe_globals([system])` context manager to allowlist this global if you trust this "
    "class/function.\n\nCheck the documentation of torch.load to learn more about types accepted by default with "
    "weights_only https://pytorch.org/docs/stable/generated/torch.load.html.",
], ids=["torch2.4", "torch2.6"])
def test_earlier_wordings_of_the_refusal_lose_their_advice_too(text):
    import pickle

    from segic_jax.conversion.core import _torch_reason

    reason = _torch_reason(pickle.UnpicklingError(text))
    assert reason.startswith("it is not a file of tensors (Unsupported global: GLOBAL posix.system was not an allowed "
                             "global by default.)"), reason
    assert "\n" not in reason and not re.search(r"weights.?only|trust|allowlist|safe_globals", reason, re.IGNORECASE)
