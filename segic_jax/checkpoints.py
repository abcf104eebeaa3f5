"""Converted-model checkpoint directories: one orbax tree of parameters plus a JSON description.

Layout of a directory written by `save_model`:
    segic_jax.json   {"kind": "dinov2" | "clip_text", "config": {...}, "source": "...", "format": 1}
    params/          orbax checkpoint of the parameters (nested like the NNX module tree)
    ...              extra files the kind needs at load time (e.g. the CLIP tokenizer)

A directory is written under a temporary name next to its destination and renamed only once every
part is on disk, so a failed or interrupted write never leaves something that `load_model` would
take for a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from segic_jax import files

DESCRIPTION_FILE = "segic_jax.json"
PARAMS_DIR = "params"
FORMAT_VERSION = 1


def _kinds() -> dict[str, tuple[type, Callable]]:
    from segic_jax.models import clip_text, dinov2, segic

    return {
        "dinov2": (dinov2.Dinov2Config, dinov2.Dinov2),
        "clip_text": (clip_text.ClipTextConfig, clip_text.ClipTextModel),
        "segic_head": (segic.SegicConfig, segic.SegicHead),
    }


def _model_class(kind: str):
    kinds = _kinds()
    if kind not in kinds:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {sorted(kinds)}")
    return kinds[kind]


def abstract_model(kind: str, config, dtype=jnp.float32):
    """The model with shape-only parameters (nothing allocated)."""
    _, model_cls = _model_class(kind)
    return nnx.eval_shape(lambda: model_cls(config, dtype=dtype, rngs=nnx.Rngs(0)))


def _path_str(path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def flatten_params(tree: Any) -> dict[str, Any]:
    """{'blocks.0.attn.qkv.kernel': leaf, ...} from a nested parameter tree."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_path_str(path): leaf for path, leaf in leaves}


def state_shapes(model) -> dict[str, tuple[int, ...]]:
    """Dotted path -> shape of every variable (parameters and fixed buffers) of a model."""
    return {k: tuple(v.shape) for k, v in flatten_params(nnx.to_pure_dict(nnx.state(model))).items()}


def param_shapes(kind: str, config) -> dict[str, tuple[int, ...]]:
    """Dotted path -> shape, for every variable of a model of this kind and config."""
    return state_shapes(abstract_model(kind, config))


def _unflatten_like(template: Any, flat: Mapping[str, np.ndarray]) -> Any:
    return jax.tree_util.tree_map_with_path(lambda p, _: flat[_path_str(p)], template)


def with_params(model, params: Mapping[str, np.ndarray]):
    """`model` (abstract or concrete) holding `params` (dotted path -> array, every variable)."""
    graphdef, state = nnx.split(model)
    template = nnx.to_pure_dict(state)
    missing = sorted(set(flatten_params(template)) - set(params))
    if missing:
        raise ValueError(f"parameters missing for the model: {missing}")
    nnx.replace_by_pure_dict(state, _unflatten_like(template, {k: jnp.asarray(v) for k, v in params.items()}))
    return nnx.merge(graphdef, state)


def _checkpointer():
    """An orbax checkpointer for this process alone: a converted model is written and read whole by
    each process that wants it, also inside a multi-process job (where orbax would otherwise wait
    for every process at each save, and a save by process 0 alone would never finish)."""
    import orbax.checkpoint as ocp

    me = jax.process_index()
    return ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    )


def build_model(kind: str, config, params: Mapping[str, np.ndarray], *, dtype=jnp.float32):
    """A model of this kind and config holding `params` (dotted path -> array)."""
    return with_params(abstract_model(kind, config, dtype), params)


def save_model(
    out_dir: str,
    kind: str,
    config,
    params: Mapping[str, np.ndarray],
    *,
    source: str = "",
    extra_files: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> str:
    """Write `params` (dotted path -> array, exactly the model's parameters) as a checkpoint.

    `extra_files` maps a name inside the directory to a file to copy there. Returns the absolute
    path of the directory.
    """
    out_dir = os.path.abspath(out_dir)
    expected = param_shapes(kind, config)
    if set(params) != set(expected):
        raise ValueError(
            f"parameters do not match a {kind} model: missing {sorted(set(expected) - set(params))}, "
            f"unexpected {sorted(set(params) - set(expected))}"
        )
    sources = [source, *(extra_files or {}).values()]
    with files.atomic_directory(out_dir, overwrite, replaceable=lambda p: check_replaceable(p, sources)) as tmp:
        template = nnx.to_pure_dict(nnx.state(abstract_model(kind, config)))
        tree = _unflatten_like(template, {k: np.asarray(v, np.float32) for k, v in params.items()})
        with _checkpointer() as ckptr:
            ckptr.save(os.path.join(tmp, PARAMS_DIR), tree)
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, os.path.join(tmp, name))
        description = {"kind": kind, "config": config.to_dict(), "source": source, "format": FORMAT_VERSION}
        with open(os.path.join(tmp, DESCRIPTION_FILE), "w") as f:
            json.dump(description, f, indent=2)
    return out_dir


MODEL_ENTRIES = frozenset({DESCRIPTION_FILE, PARAMS_DIR, "tokenizer.json", "vocab.json", "merges.txt"})
SEGIC_ENTRIES = frozenset({"head", "dinov2", "clip_text", "release.json"})


def check_replaceable(path: str, sources: Sequence[str] = ()) -> None:
    """Raise ValueError unless `path` is a directory this project wrote (a converted model, or a SEGIC
    checkpoint of head/, dinov2/, clip_text/) holding nothing else, and none of `sources` (the files a
    conversion reads) lies in it: --overwrite replaces our outputs, never a user's files."""
    path = os.path.abspath(path)
    for src in sources:
        if src and os.path.exists(src):
            src = os.path.abspath(src)
            if src == path or src.startswith(path + os.sep):
                raise ValueError(f"refusing to replace {path}: it holds {src}, which this conversion reads")
    entries = set(os.listdir(path))
    model = DESCRIPTION_FILE in entries and entries <= MODEL_ENTRIES
    segic = entries and entries <= SEGIC_ENTRIES and all(
        os.path.isfile(os.path.join(path, part, DESCRIPTION_FILE)) for part in entries & {"head", "dinov2", "clip_text"})
    if not (model or segic):
        others = sorted(entries - (MODEL_ENTRIES | SEGIC_ENTRIES))
        raise ValueError(
            f"refusing to replace {path}: it is not a checkpoint written by segic_jax"
            + (f" (it holds {', '.join(others[:5])}{', ...' if len(others) > 5 else ''})" if others else "")
            + "; remove it yourself or write elsewhere"
        )


def read_description(path: str) -> dict[str, Any]:
    desc_path = os.path.join(path, DESCRIPTION_FILE)
    if not os.path.isfile(desc_path):
        raise FileNotFoundError(
            f"{path} is not a segic_jax checkpoint: {DESCRIPTION_FILE} is missing "
            "(write one with `python -m segic_jax.convert`)"
        )
    with open(desc_path) as f:
        try:
            desc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{desc_path} is not valid JSON: {e}") from None
    if desc.get("format") != FORMAT_VERSION:
        raise ValueError(f"{desc_path}: unsupported checkpoint format {desc.get('format')!r}")
    return desc


def load_config(path: str, kind: str):
    desc = read_description(path)
    if desc.get("kind") != kind:
        raise ValueError(f"{path} holds a {desc.get('kind')!r} model, not {kind!r}")
    config_cls, _ = _model_class(kind)
    return config_cls.from_dict(desc["config"])


def load_model(path: str, kind: str, *, dtype=jnp.float32):
    """Build the model described in `path` and fill it with the saved parameters."""
    path = os.path.abspath(path)
    config = load_config(path, kind)
    model = abstract_model(kind, config, dtype)
    graphdef, state = nnx.split(model)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(state))
    with _checkpointer() as ckptr:
        restored = ckptr.restore(os.path.join(path, PARAMS_DIR), target)
    nnx.replace_by_pure_dict(state, restored)
    return nnx.merge(graphdef, state)
