"""Training metrics out of the process: a JSON-lines log (always) and TensorBoard event files
(tensorboardX, which needs no TensorFlow), scalars and images, written by process 0 only."""

from __future__ import annotations

import json
import os
import time

import numpy as np


class MetricWriter:
    """The event file is opened at the first value written, so that a run that logs nothing (the
    rerun of a finished one) adds no empty event file."""

    def __init__(self, logdir: str, enabled: bool = True):
        self.enabled = enabled
        self.logdir = logdir
        self._tb = None
        self._purge_step: int | None = None
        if enabled:
            os.makedirs(logdir, exist_ok=True)
            self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a", encoding="utf-8")

    def _events(self):
        if self._tb is None:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(self.logdir, purge_step=self._purge_step)
        return self._tb

    def resume_at(self, step: int) -> int:
        """A run resumed from the checkpoint of `step`: drop the records of later steps that the
        interrupted run logged (they are logged again), from metrics.jsonl and, through TensorBoard's
        purge step, from the event files. Returns how many JSON-lines records were dropped."""
        if not self.enabled:
            return 0
        from segic_jax import atomic_files

        self._jsonl.close()
        path = os.path.join(self.logdir, "metrics.jsonl")
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        kept = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                pass  # a line cut short by a kill
        if len(kept) != len(lines):
            atomic_files.atomic_write_bytes(path, "".join(kept).encode())
        self._jsonl = open(path, "a", encoding="utf-8")
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self._purge_step = step + 1  # the event file opened next drops what was logged after `step`
        return len(lines) - len(kept)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items()}
        for k, v in values.items():
            self._events().add_scalar(k, v, step)
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        self._jsonl.flush()

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """(H, W, 3) uint8."""
        if self.enabled:
            self._events().add_image(tag, np.asarray(image, np.uint8), step, dataformats="HWC")

    def flush(self) -> None:
        if self.enabled:
            if self._tb is not None:
                self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            if self._tb is not None:
                self._tb.close()
            self._jsonl.close()
            self.enabled = False


def read_metrics(logdir: str) -> list[dict]:
    """The JSON-lines log as a list of records (step, time, metric values)."""
    path = os.path.join(logdir, "metrics.jsonl")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
