"""One model's converted checkpoint directory: an orbax tree of its parameters and a JSON description.

Layout of a directory written by `save_model`:
    segic_jax.json   {"kind": model_cls.KIND, "config": {...}, "source": "...", "format": 1}
    params/          orbax checkpoint of the parameters (nested like the NNX module tree)
    ...              extra files the model needs at load time (e.g. the CLIP tokenizer)

Generic over the model: every function takes the model class, which names its `KIND` and its
`Config` (a `models.config.ModelConfig`); each model module has its own `load` on top of this, and
`models.bundle` puts three such directories together as the converted SEGIC.

A directory is written under a temporary name next to its destination and renamed only once every
part is on disk, so a failed or interrupted write never leaves something that `load_model` would
take for a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from segic_jax import atomic_files

DESCRIPTION_FILE = "segic_jax.json"
PARAMS_DIR = "params"
FORMAT_VERSION = 1


def abstract_model(model_cls, config, dtype=jnp.float32):
    """The model with shape-only parameters (nothing allocated)."""
    return nnx.eval_shape(lambda: model_cls(config, dtype=dtype, rngs=nnx.Rngs(0)))


def _path_str(path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def flatten_params(tree: Any) -> dict[str, Any]:
    """{'blocks.0.attn.qkv.kernel': leaf, ...} from a nested parameter tree."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_path_str(path): leaf for path, leaf in leaves}


def module_params(model) -> dict[str, Any]:
    """Dotted path -> array of every variable (parameters and fixed buffers) of a model in memory."""
    return flatten_params(nnx.to_pure_dict(nnx.state(model)))


def state_shapes(model) -> dict[str, tuple[int, ...]]:
    """Dotted path -> shape of every variable (parameters and fixed buffers) of a model."""
    return {k: tuple(v.shape) for k, v in module_params(model).items()}


def param_shapes(model_cls, config) -> dict[str, tuple[int, ...]]:
    """Dotted path -> shape, for every variable of a `model_cls` of this config."""
    return state_shapes(abstract_model(model_cls, config))


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


def build_model(model_cls, config, params: Mapping[str, np.ndarray], *, dtype=jnp.float32):
    """A `model_cls` of this config holding `params` (dotted path -> array)."""
    return with_params(abstract_model(model_cls, config, dtype), params)


def save_model(
    out_dir: str,
    model_cls,
    config,
    params: Mapping[str, np.ndarray],
    *,
    source: str = "",
    extra_files: Mapping[str, str] | None = None,
    overwrite: bool = False,
    replaceable: Callable[[str], None] | None = None,
) -> str:
    """Write `params` (dotted path -> array, exactly the model's parameters) as a checkpoint.

    `extra_files` maps a name inside the directory to a file to copy there. With `overwrite`, an
    existing `out_dir` is replaced once `replaceable(out_dir)` has accepted it (it raises to refuse).
    Returns the absolute path of the directory.
    """
    out_dir = os.path.abspath(out_dir)
    kind = model_cls.KIND
    expected = param_shapes(model_cls, config)
    if set(params) != set(expected):
        raise ValueError(
            f"parameters do not match a {kind} model: missing {sorted(set(expected) - set(params))}, "
            f"unexpected {sorted(set(params) - set(expected))}"
        )
    with atomic_files.atomic_directory(out_dir, overwrite, replaceable=replaceable) as tmp:
        template = nnx.to_pure_dict(nnx.state(abstract_model(model_cls, config)))
        tree = _unflatten_like(template, {k: np.asarray(v, np.float32) for k, v in params.items()})
        with _checkpointer() as ckptr:
            ckptr.save(os.path.join(tmp, PARAMS_DIR), tree)
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, os.path.join(tmp, name))
        description = {"kind": kind, "config": config.to_dict(), "source": source, "format": FORMAT_VERSION}
        with open(os.path.join(tmp, DESCRIPTION_FILE), "w") as f:
            json.dump(description, f, indent=2)
    return out_dir


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


def load_config(path: str, model_cls):
    """The config of the `model_cls` checkpoint at `path`."""
    desc = read_description(path)
    if desc.get("kind") != model_cls.KIND:
        raise ValueError(f"{path} holds a {desc.get('kind')!r} model, not {model_cls.KIND!r}")
    return model_cls.Config.from_dict(desc["config"])


def load_model(path: str, model_cls, *, dtype=jnp.float32):
    """Build the `model_cls` described in `path` and fill it with the saved parameters."""
    path = os.path.abspath(path)
    config = load_config(path, model_cls)
    model = abstract_model(model_cls, config, dtype)
    graphdef, state = nnx.split(model)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(state))
    with _checkpointer() as ckptr:
        restored = ckptr.restore(os.path.join(path, PARAMS_DIR), target)
    nnx.replace_by_pure_dict(state, restored)
    return nnx.merge(graphdef, state)
