"""Training checkpoints: the state that a resumed run continues from, written with orbax.

    workdir/checkpoints/<step>/          head parameters, optimizer state, step, RNG key; written
                                         asynchronously, a step without its commit marker is never read
    workdir/checkpoints_unreadable/      damaged checkpoints, set aside (never deleted) by `restore`

The step also fixes where the data continues (batch s is step s's), so a checkpoint needs no
iterator state, and a run may resume on another number of processes, devices or data workers.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from segic_jax import distributed

UNREADABLE_DIR = "checkpoints_unreadable"


@dataclasses.dataclass
class TrainState:
    step: int
    params: Any
    opt_state: Any


class SaveFailed(RuntimeError):
    """An asynchronous checkpoint write failed; the message says where and why."""


class Checkpoints:
    """The run's checkpoints in `workdir/checkpoints` (orbax's manager: `keep` newest, written in the
    background with `use_async`), their arrays replicated over `mesh`."""

    def __init__(self, workdir: str, mesh, *, keep: int, use_async: bool):
        self.workdir, self.mesh, self.keep, self.use_async = workdir, mesh, keep, use_async
        self.dir = os.path.join(workdir, "checkpoints")
        self.manager = self._manager()

    def _manager(self):
        import orbax.checkpoint as ocp

        options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, enable_async_checkpointing=self.use_async,
                                               create=True)
        return ocp.CheckpointManager(self.dir, options=options)

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
        return self.manager.save(state.step, args=args, force=force)

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
            cause, reasons = e, []
            while cause is not None:
                reasons.append(str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__)
                cause = cause.__cause__ or cause.__context__
            reason = next((r for r in reasons if "No space left" in r), reasons[-1])
            raise SaveFailed(
                f"a checkpoint could not be written to {self.dir} ({reason}); training stopped at step "
                f"{step}, the last complete checkpoint is step {self.manager.latest_step()}"
            ) from None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
