"""Declarative weight conversion: reading foreign checkpoints and applying a key table.

A table is a list of `Rule`s. Each rule matches whole source keys with a regular expression and
names the target parameter with a template that may refer to the match's groups (`\\1`), plus a
transform of the tensor. Several source tensors may fill one target (e.g. separate q/k/v into a
fused qkv): each then says which equal slice of the target's last axis it is. Keys the target model
does not use are listed as ignored patterns, so that everything else is accounted for: a source
key that no rule matches, a target that nothing fills and a shape that does not fit are errors
that list every offending key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Callable, Iterable, Mapping

import numpy as np
from tqdm.auto import tqdm


class ConversionError(ValueError):
    """A checkpoint that does not convert; the message lists every key at fault."""


def identity(x: np.ndarray) -> np.ndarray:
    return x


def linear(x: np.ndarray) -> np.ndarray:
    """torch Linear weight (out, in) -> Flax kernel (in, out)."""
    return x.T


def conv(x: np.ndarray) -> np.ndarray:
    """torch Conv weight (out, in, kh, kw) -> Flax kernel (kh, kw, in, out)."""
    return x.transpose(2, 3, 1, 0)


@dataclasses.dataclass(frozen=True)
class Rule:
    source: str  # regular expression, matched against the whole key
    target: str  # dotted target path; \1, \2 ... refer to the match's groups
    transform: Callable[[np.ndarray], np.ndarray] = identity
    part: tuple[int, int] | None = None  # (index, count) slice of the target's last axis


def _describe(keys: Iterable[str], limit: int = 40) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def apply_rules(
    source: Mapping[str, np.ndarray],
    rules: Iterable[Rule],
    expected: Mapping[str, tuple[int, ...]],
    *,
    ignore: Iterable[str] = (),
    source_name: str = "checkpoint",
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Map `source` tensors onto the `expected` parameter paths and shapes, or raise ConversionError."""
    rules = [(re.compile(r.source), r) for r in rules]
    ignore = [re.compile(p) for p in ignore]
    unmatched, unknown_targets = [], []
    whole: dict[str, np.ndarray] = {}
    parts: dict[str, dict[int, np.ndarray]] = {}
    counts: dict[str, int] = {}
    for key in tqdm(sorted(source), desc=f"converting {source_name}", disable=not progress, leave=False):
        if any(p.fullmatch(key) for p in ignore):
            continue
        for pattern, rule in rules:
            m = pattern.fullmatch(key)
            if m:
                break
        else:
            unmatched.append(key)
            continue
        target = m.expand(rule.target)
        if target not in expected:
            unknown_targets.append(f"{key} -> {target}")
            continue
        value = rule.transform(np.asarray(source[key], dtype=np.float32))
        if rule.part is None:
            whole[target] = value
        else:
            index, count = rule.part
            parts.setdefault(target, {})[index] = value
            counts[target] = count

    problems = []
    for target, pieces in parts.items():
        if len(pieces) != counts[target]:
            absent = sorted(set(range(counts[target])) - set(pieces))
            problems.append(f"{target}: slices {absent} of {counts[target]} are missing in the source")
            continue
        whole[target] = np.concatenate([pieces[i] for i in range(counts[target])], axis=-1)
    missing = sorted(set(expected) - set(whole))
    wrong_shape = [
        f"{k}: source gives {tuple(v.shape)}, model needs {tuple(expected[k])}"
        for k, v in sorted(whole.items())
        if tuple(v.shape) != tuple(expected[k])
    ]
    if unmatched:
        problems.append(f"unexpected keys (no rule converts them): {_describe(unmatched)}")
    if unknown_targets:
        problems.append(f"keys that map outside the model: {_describe(unknown_targets)}")
    if missing:
        problems.append(f"missing keys (nothing in the source fills them): {_describe(missing)}")
    if wrong_shape:
        problems.append("mis-shaped keys: " + "; ".join(wrong_shape))
    if problems:
        raise ConversionError(f"cannot convert {source_name}:\n  " + "\n  ".join(problems))
    return whole


# --- reading foreign checkpoints -------------------------------------------------------------

_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    out = {}
    try:
        with safe_open(path, framework="numpy") as f:
            for key in f.keys():
                out[key] = f.get_tensor(key)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ConversionError(f"cannot read {path} as safetensors: {e}") from None
    return out


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ConversionError(
            f"reading {path} needs PyTorch (the CPU build is enough: pip install torch); "
            "safetensors files and Hugging Face folders with model.safetensors do not"
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConversionError(f"cannot read {path} as a PyTorch checkpoint: {_torch_reason(e)}") from None
    # Training checkpoints often nest the weights one level down.
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state dict")
    out = {}
    for key, value in obj.items():
        if torch.is_tensor(value):
            out[key] = value.detach().float().numpy() if value.is_floating_point() else value.numpy()
    return out


# Sentences of torch.load's refusal that advise loading the file some other way: with
# weights_only=False (which runs whatever code the file holds), or by allow-listing what it names.
# They are dropped whatever their wording, which changes between torch releases.
_ADVICE = re.compile(
    r"weights.?only|trust|arbitrary code|safe_globals|allowlist|allow-list|documentation|https?://|two options"
    r"|file an issue",
    re.IGNORECASE,
)


def _torch_reason(error: Exception) -> str:
    """What torch.load's error says about the file, on one line, without any advice to load it with
    weights_only=False (which would run whatever code the file holds: never do that with a file you
    did not make) or to allow-list what it refers to."""
    import pickle

    text = str(error)
    refused = isinstance(error, pickle.UnpicklingError) or bool(_ADVICE.search(text))
    text = re.sub(r"WeightsUnpickler error:\s*", "\n", text)  # the finding, after a lead-in of advice
    sentences = [s.strip() for line in text.splitlines() for s in re.split(r"(?<=[.!?])\s+", line)]
    kept = " ".join(s for s in sentences if s and not _ADVICE.search(s))
    if refused:
        return (f"it is not a file of tensors ({kept or 'refused by the safe loader'}); it may be damaged, "
                "or hold objects other than tensors, which are never loaded")
    return kept or type(error).__name__


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Tensors of a `.pth`/`.pt`/`.bin`/`.safetensors` file or a Hugging Face model folder."""
    if os.path.isdir(path):
        for index_name in _INDEX_FILES:
            index_path = os.path.join(path, index_name)
            if os.path.isfile(index_path):
                out = {}
                for shard in _shards(index_path):
                    out.update(read_state_dict(os.path.join(path, shard)))
                return out
        for name in _WEIGHT_FILES:
            if os.path.isfile(os.path.join(path, name)):
                return read_state_dict(os.path.join(path, name))
        raise ConversionError(
            f"{path} is a folder without weights: expected one of {', '.join(_WEIGHT_FILES + _INDEX_FILES)}"
        )
    if not os.path.isfile(path):
        raise ConversionError(f"{path} does not exist")
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    if path.endswith(_TORCH_SUFFIXES):
        return _read_torch(path)
    raise ConversionError(
        f"cannot read {path}: expected a .pth, .pt, .bin or .safetensors file or a Hugging Face folder"
    )


def _shards(index_path: str) -> list[str]:
    """The shard files a Hugging Face `*.index.json` names (its `weight_map`: tensor -> file), each a
    file beside the index; a damaged or foreign index is an error naming it."""
    folder = os.path.dirname(index_path)
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise ConversionError(f"cannot read the shard index {index_path}: {e}") from None
    except json.JSONDecodeError as e:
        raise ConversionError(f"the shard index {index_path} is not valid JSON ({e}); is the download complete?") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConversionError(
            f"the shard index {index_path} has no weight_map (tensor name -> shard file); "
            "is it a Hugging Face *.index.json? Download it again"
        )
    bad = sorted({repr(v) for v in weight_map.values() if not isinstance(v, str) or os.path.basename(v) != v or not v})
    if bad:
        raise ConversionError(f"the shard index {index_path} names shards that are not file names in its folder: "
                              f"{_describe(bad, 5)}")
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
    if missing:
        raise ConversionError(f"the shard index {index_path} names {_describe(missing, 5)}, not in {folder}; "
                              "download the missing shards")
    return shards


def read_hf_config(folder: str) -> dict:
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise ConversionError(f"{folder} has no config.json; is it a Hugging Face model folder?")
    with open(config_path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ConversionError(f"{config_path} is not valid JSON: {e}") from None


