"""Training checkpoints: the state that a resumed run continues from, written with orbax.

    workdir/checkpoints/<step>/          head parameters, optimizer state, step, RNG key; written
                                         asynchronously, a step without its commit marker is never read
    workdir/checkpoints_unreadable/      damaged checkpoints, set aside (never deleted) by `restore`

The step also fixes where the data continues (batch s is step s's), so a checkpoint needs no
iterator state, and a run may resume on another number of processes, devices or data workers.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import shutil
import threading
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from segic_jax import atomic_files, distributed

UNREADABLE_DIR = "checkpoints_unreadable"
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax writes a step under <step><suffix>-<time> and renames it when complete
CLOSE_TIMEOUT_S = 10  # how long `close` waits for orbax's background threads after a failed write


@dataclasses.dataclass
class TrainState:
    step: int
    params: Any
    opt_state: Any


class SaveFailed(RuntimeError):
    """An asynchronous checkpoint write failed; the message says where and why."""


class _OrbaxErrors(logging.Filter):
    """Keeps orbax's error records (a traceback for each of its threads, hundreds of lines for one
    full disk) out of the log: a failed write is reported once, as `SaveFailed`, with its reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _reason(error: BaseException) -> str:
    """The most telling line of an exception and its causes (a full disk said in plain words)."""
    reasons, causes, cause = [], [], error
    while cause is not None and len(reasons) < 20:
        reasons.append(_first_line(cause))
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    for cause in causes:
        refused = atomic_files.failed_write(cause)
        if refused:
            reason, no_space = refused
            return f"the disk is full: {reason}" if no_space else reason
    return next((r for r in reasons if "Errno" in r), reasons[-1])


def check_folder(workdir: str) -> str:
    """The workdir's checkpoints folder, refused at once when something else takes its name."""
    folder = os.path.join(workdir, "checkpoints")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"{folder} is a file, where this workdir's checkpoints go; move it away or use another --workdir")
    return folder


class Checkpoints:
    """The run's checkpoints in `workdir/checkpoints` (orbax's manager: `keep` newest, written in the
    background with `use_async`), their arrays replicated over `mesh`."""

    def __init__(self, workdir: str, mesh, *, keep: int, use_async: bool):
        self.workdir, self.mesh, self.keep, self.use_async = workdir, mesh, keep, use_async
        self.dir = check_folder(workdir)
        self.failed: SaveFailed | None = None
        self._errors = _OrbaxErrors()
        logging.getLogger("absl").addFilter(self._errors)
        atomic_files.drop_closed_loop_errors()
        self.manager = self._manager()

    def _manager(self):
        import orbax.checkpoint as ocp

        options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, enable_async_checkpointing=self.use_async,
                                               create=True, cleanup_tmp_directories=True)
        return ocp.CheckpointManager(self.dir, options=options)

    def _failure(self, error: BaseException, step: int) -> SaveFailed:
        """The one error a failed write becomes; remembered, so that `close` does not wait on orbax."""
        if self.failed is None:
            latest = self.manager.latest_step()
            self.failed = SaveFailed(
                f"a checkpoint could not be written to {self.dir} ({_reason(error)}); training stopped at step "
                f"{step}; " + (f"the last complete checkpoint is step {latest} (run the same command to resume from it)"
                               if latest is not None else "no checkpoint was completed")
            )
        return self.failed

    def _tree(self, state: TrainState, key) -> dict:
        # step and key replicated over the mesh like the rest (orbax refuses single-device arrays in a
        # multi-process job), put there from host values (jax cannot put a single-device array there
        # when each process has one device)
        replicated = NamedSharding(self.mesh, P())
        step = np.asarray(state.step, np.int64 if jax.config.jax_enable_x64 else np.int32)
        return {
            "params": state.params,
            "opt_state": state.opt_state,
            "step": jax.device_put(step, replicated),
            "rng": jax.device_put(np.asarray(jax.random.key_data(key)), replicated),
        }

    def save(self, state: TrainState, key, force: bool = False) -> bool:
        import orbax.checkpoint as ocp

        args = ocp.args.Composite(state=ocp.args.StandardSave(self._tree(state, key)))
        try:
            return self.manager.save(state.step, args=args, force=force)
        except Exception as e:  # a synchronous write, or an earlier asynchronous one, failed
            raise self._failure(e, state.step) from None

    def restore(self, like: TrainState, key) -> tuple[TrainState, Any, list[str]] | None:
        """(state, key, lines to print) of the latest checkpoint that restores, shaped like `like`
        and `key`; None when there is none. One that does not restore (damaged on disk) is moved to
        workdir/checkpoints_unreadable/, named in the lines, and the one before it is tried."""
        import orbax.checkpoint as ocp

        skipped = []
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, self._tree(like, key))
        while (latest := self.manager.latest_step()) is not None:
            try:
                restored = self.manager.restore(latest, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
            except Exception as e:  # orbax and tensorstore raise many types for a damaged checkpoint
                reason = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
                skipped.append(self._set_aside(latest, reason))
                continue
            tree = restored.state
            state = TrainState(int(tree["step"]), tree["params"], tree["opt_state"])
            return state, jax.random.wrap_key_data(tree["rng"]), skipped
        if skipped:
            raise ValueError(" ".join(skipped) + " No checkpoint could be restored; start a new --workdir, or move "
                             f"{os.path.join(self.workdir, UNREADABLE_DIR)} back to retry them")
        return None

    def _set_aside(self, step: int, reason: str) -> str:
        """Move the unreadable checkpoint of `step` out of the manager's way (kept, not deleted)."""
        src = os.path.join(self.dir, str(step))
        aside = os.path.join(self.workdir, UNREADABLE_DIR)
        dst = os.path.join(aside, f"{step}-{int(time.time())}")
        if distributed.is_main() and os.path.isdir(src):
            os.makedirs(aside, exist_ok=True)
            os.rename(src, dst)
        distributed.sync(f"checkpoint {step} set aside")  # before any process looks for the latest again
        self.manager.close()
        self.manager = self._manager()
        return f"skipped the checkpoint of step {step} ({src}: {reason}); moved it to {dst}."

    def check(self, step: int) -> None:
        """Raise SaveFailed at once when an asynchronous write failed (a full disk, a lost mount),
        instead of training on without checkpoints; `step` is where training stands."""
        try:
            self.manager.check_for_errors()
        except Exception as e:
            raise self._failure(e, step) from None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def wait_until_finished(self, step: int) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._failure(e, step) from None

    def close(self) -> None:
        """Close the manager. After a failed write orbax's threads may never return: wait for them
        at most CLOSE_TIMEOUT_S (they are left to the process's exit, which `main.py` makes
        immediate), and remove the temporary folders of the writes that did not complete."""
        if self.failed is None:
            self.manager.close()
            logging.getLogger("absl").removeFilter(self._errors)
            return
        # the filter stays: the threads of the failed write still log as they fail
        closing = threading.Thread(target=self._close_quietly, name="orbax-close", daemon=True)
        closing.start()
        closing.join(CLOSE_TIMEOUT_S)
        if distributed.is_main():
            for tmp in glob.glob(os.path.join(glob.escape(self.dir), f"*{TMP_SUFFIX}*")):
                if os.path.isdir(tmp) and not os.path.islink(tmp):
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    os.remove(tmp)

    def _close_quietly(self) -> None:
        try:
            self.manager.close()
        except Exception:  # the failure is reported already
            pass
