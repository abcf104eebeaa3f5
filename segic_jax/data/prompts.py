"""SEGIC's text ("meta") prompts: what an episode says about its target, and which prompt a
training episode draws.

Inference prompts with a class name ("a photo of a {name}"), the instance prompt, or nothing.
Training draws per episode (docs/original.md 2.2): instance episodes always take the instance
prompt; semantic ones take their class name with probability `text_prob`, else the empty prompt,
the target and the reference independently. Batches carry prompts as indices into a table of every
prompt the mixture can use, so that CLIP runs once per prompt, not in the step.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from segic_jax.data.sources import text

INSTANCE_PROMPT = "please segment the instances"


def class_prompt(name: str) -> str:
    """SEGIC's meta prompt for a class name ("" for no name)."""
    return f"a photo of a {name}" if name else ""


class PromptTable:
    """Every prompt the episodes can use: "", the instance prompt, then each class prompt, sorted."""

    def __init__(self, class_names: Sequence[str]):
        self.prompts = ["", INSTANCE_PROMPT] + sorted({class_prompt(n) for n in class_names if n} - {""})
        self.index = {p: i for i, p in enumerate(self.prompts)}

    def choose(self, draws: np.ndarray, is_instance: np.ndarray, names, text_prob: float) -> np.ndarray:
        """Per episode: the instance prompt, or "a photo of a {name}" when its draw (uniform in [0, 1))
        is below text_prob, else "". -> (N,) int32 indices into `prompts`."""
        out = np.empty(len(names), np.int32)
        for i, (inst, name, draw) in enumerate(zip(is_instance, names, draws)):
            name = text(name)
            if inst:
                out[i] = self.index[INSTANCE_PROMPT]
            elif name and draw < text_prob:
                out[i] = self.index[class_prompt(name)]
            else:
                out[i] = self.index[""]
        return out


def prompt_draws(seed: int, batch_index: int, rows: Sequence[int]) -> np.ndarray:
    """(len(rows), 2) uniform draws, the target's and the reference's, of rows `rows` of global batch
    `batch_index`: a function of (seed, batch, row) alone, whichever process holds the row."""
    return np.stack([np.random.default_rng((seed, batch_index, int(r))).random(2) for r in rows])
