"""Checking that a parity test can fail: one weight of a converted model, nudged."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def perturbed(model, path: str, index=None, delta: float = 0.05):
    """A copy of `model` with one entry of the variable at dotted `path` shifted by `delta`
    (by default its middle entry)."""
    from flax import nnx

    copy = nnx.clone(model)
    var = copy
    for part in path.split("."):
        var = var[int(part)] if part.isdigit() else getattr(var, part)
    value = np.array(var.value)
    value[np.unravel_index(value.size // 2, value.shape) if index is None else index] += delta
    var.value = jnp.asarray(value)
    return copy
