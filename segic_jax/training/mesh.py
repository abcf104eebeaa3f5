"""Where training runs: the ("data", "fsdp") device mesh, what lives where on it, and the jitted,
donated step placed on it (the trainer and benchmarks/train_step.py build their step here).

Episodes are sharded over both axes; the head and its optimizer state are replicated; the frozen
DINOv2 weights are split over "fsdp" (replicated when it is 1).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from segic_jax.training import step as step_lib

BATCH_AXES = ("data", "fsdp")


def make_mesh(fsdp: int) -> jax.sharding.Mesh:
    n = jax.device_count()
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"config.mesh.fsdp {fsdp} must divide the device count {n}")
    # Auto axes: XLA propagates the shardings through the model (no per-op annotations needed)
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh((n // fsdp, fsdp), BATCH_AXES, axis_types=auto)


def batch_sharding(mesh) -> NamedSharding:
    """A batch's leading axis split over every device."""
    return NamedSharding(mesh, P(BATCH_AXES))


def local_rows(sharding, batch_size: int) -> np.ndarray:
    """The rows of a (batch_size, ...) array sharded as `sharding` that this process's devices hold,
    in the order `jax.make_array_from_process_local_data` takes them (all rows in one process)."""
    spans = {(s[0].start or 0, batch_size if s[0].stop is None else s[0].stop)
             for s in sharding.addressable_devices_indices_map((batch_size,)).values()}
    return np.concatenate([np.arange(a, b) for a, b in sorted(spans)])


def encoder_sharding(mesh, state) -> Any:
    """Split each frozen weight matrix over "fsdp" along its largest divisible axis."""
    size = mesh.shape["fsdp"]

    def spec(x):
        if size == 1 or x.ndim < 2:
            return NamedSharding(mesh, P())
        axes = [a for a in np.argsort(x.shape)[::-1] if x.shape[a] % size == 0]
        if not axes:
            return NamedSharding(mesh, P())
        parts = [None] * x.ndim
        parts[int(axes[0])] = "fsdp"
        return NamedSharding(mesh, P(*parts))

    return jax.tree.map(spec, state)


class PlacedStep(NamedTuple):
    """The step and what stays fixed on the mesh. `run(params, rest, opt_state, encoder_state,
    text_table, batch, key) -> (params, opt_state, StepOutput)` donates params and opt_state, which
    the caller holds (they change every step)."""

    run: Callable
    head_graph: Any
    rest: Any  # the head's other variables (the PE buffer), replicated
    encoder_state: Any  # frozen DINOv2, split as `encoder_sharding` says
    text_table: jax.Array  # (V, Ct) CLIP features of the prompt table, replicated


def place_step(mesh, head, encoder, text_table, tx, options: step_lib.StepOptions) -> tuple[PlacedStep, Any, Any]:
    """Put the head, its fresh optimizer state, the encoder and the text table on the mesh and jit
    the step over them: (the placed step, the head's trainable parameters, their optimizer state),
    the last two replicated."""
    replicated = NamedSharding(mesh, P())
    head_graph, params, rest = nnx.split(head, nnx.Param, ...)
    encoder_graph, encoder_state = nnx.split(encoder)
    params, rest = jax.device_put(params, replicated), jax.device_put(rest, replicated)
    encoder_state = jax.device_put(encoder_state, encoder_sharding(mesh, encoder_state))
    text_table = jax.device_put(text_table, replicated)
    opt_state = jax.jit(tx.init, out_shardings=replicated)(params)
    run = jax.jit(
        functools.partial(step_lib.train_step, head_graph, encoder_graph, tx, options=options),
        donate_argnums=(0, 2),
        out_shardings=(replicated, replicated, replicated),
    )
    return PlacedStep(run, head_graph, rest, encoder_state, text_table), params, opt_state
