"""One run per workdir: a lock while it trains, and the config it was started with.

`.lock` holds the pid and host of the process training in the workdir; a second run refuses to
start while that process lives (a lock left by a process that died on this host is taken over; one
from another host is named with the way to clear it). `config.json` records the config of the first
start; a resumed run must use the same one, except for the fields in `MAY_CHANGE_ON_RESUME`.
"""

from __future__ import annotations

import json
import os
import socket
import time

from segic_jax import atomic_files

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
# fields a resumed run may change: how long to train, how often to save/log/evaluate, where the
# inputs now live, how the work is laid out on the devices; none changes what a step computes
MAY_CHANGE_ON_RESUME = (
    "train.num_steps", "train.epochs", "train.remat_rows", "mesh.fsdp", "checkpoint.", "log.", "eval.",
    "data.data_dir", "data.build_builtin", "data.workers", "data.prefetch", "data.threads",
    "dinov2.checkpoint", "clip.checkpoint",
)


class WorkdirBusy(ValueError):
    """Another run holds the workdir."""


class Lock:
    """Held from construction to `release()`."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self.taken_over: dict | None = None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            os.makedirs(workdir, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot write to --workdir {workdir} ({e.strerror or e}); give a folder you can write") from None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # released between our two looks
                if not _is_lock(holder):
                    raise WorkdirBusy(
                        f"{self.path} is not a lock this project wrote ({holder.get('unreadable', 'unexpected fields')}); "
                        "if no run uses this workdir, remove it and run again"
                    ) from None
                if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not atomic_files.process_alive(holder["pid"]):
                    self.taken_over = holder  # its process is gone (killed): a stale lock
                    os.remove(self.path)
                    continue
                where = "this host" if holder.get("host") == me["host"] else f"host {holder.get('host')}"
                raise WorkdirBusy(
                    f"{workdir} is in use by process {holder.get('pid')} on {where} (since {holder.get('started')}); "
                    f"wait for it, use another --workdir, or remove {self.path} if that run is gone"
                ) from None
            except OSError as e:
                raise ValueError(f"cannot write to --workdir {workdir} ({e.strerror or e}); give a folder you can write") from None
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
            except OSError as e:
                os.remove(self.path)
                raise ValueError(f"cannot write to --workdir {workdir} ({e.strerror or e}); give a folder you can write") from None
            self.held = True
            return
        raise WorkdirBusy(f"could not take the lock {self.path}; another run is starting in {workdir}")

    def _holder(self) -> dict | None:
        """The holder the lock file names; None when it is gone; {'unreadable': why} when it does not
        read as a lock (looked at three times over a second: another run may be writing it now)."""
        for attempt in range(3):
            try:
                with open(self.path, encoding="utf-8") as f:
                    holder = json.load(f)
                if isinstance(holder, dict):
                    return holder
                why = "it holds no fields"
            except FileNotFoundError:
                return None
            except (OSError, ValueError) as e:
                why = f"it does not read as JSON: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            time.sleep(0.5 * (attempt < 2))
        return {"unreadable": why}

    def release(self) -> None:
        if getattr(self, "held", False):
            self.held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass


def _is_lock(holder: dict) -> bool:
    return isinstance(holder.get("pid"), int) and isinstance(holder.get("host"), str)


def has_checkpoints(workdir: str) -> bool:
    """Whether the workdir holds a completed checkpoint (orbax names them by step; unfinished writes
    carry a suffix)."""
    folder = os.path.join(workdir, "checkpoints")
    return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


def flat_fields(config) -> dict:
    """{'train.num_steps': value, ...}: every leaf field of a config by its dotted name."""
    out = {}

    def walk(node, prefix):
        for key, value in node.items():
            if hasattr(value, "items"):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(config, "")
    return out


def _may_change(field: str) -> bool:
    return any(field == f or (f.endswith(".") and field.startswith(f)) for f in MAY_CHANGE_ON_RESUME)


def record_config(workdir: str, config) -> None:
    """workdir/config.json: the config a fresh run starts with."""
    atomic_files.write_json(os.path.join(workdir, CONFIG_FILE), json.loads(json.dumps(flat_fields(config), default=str)))


def check_config(workdir: str, config) -> None:
    """For a resumed run: refuse a config that differs from workdir/config.json in a field that
    changes what a step computes, naming each such field; record the changes that are allowed.
    Without config.json (or with one that does not read) the run is refused, unless the config says
    `checkpoint.resume_without_config`: then its config is recorded as the run's."""
    path = os.path.join(workdir, CONFIG_FILE)
    current = json.loads(json.dumps(flat_fields(config), default=str))
    override = "--config.checkpoint.resume_without_config=True"
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, where the run's config is kept; move it away")
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if not isinstance(saved, dict):
            raise ValueError("it holds no fields")
    except FileNotFoundError:
        if not config.checkpoint.resume_without_config:
            raise ValueError(
                f"{workdir} holds checkpoints but no {CONFIG_FILE}, so this command's config cannot be checked "
                f"against the run's; restore {path}, or pass {override} to resume with this config as the run's"
            ) from None
        atomic_files.write_json(path, current)
        return
    except (OSError, ValueError) as e:
        if not config.checkpoint.resume_without_config:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(
                f"cannot read {path} ({why}), the config of the run this workdir holds; restore it, or pass "
                f"{override} to replace it with this command's config"
            ) from None
        atomic_files.write_json(path, current)
        return
    # a field this version added, which the run's config.json lacks, counts as unchanged while it is off
    # ("", False, 0: what the run computed without it)
    added_off = {k for k in current if k not in saved and not current[k]}
    changed = [k for k in sorted(set(saved) | set(current))
               if saved.get(k) != current.get(k) and not _may_change(k) and k not in added_off]
    if changed:
        shown = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:6])
        raise ValueError(
            f"{workdir} holds a run started with another config ({shown}{'; ...' if len(changed) > 6 else ''}). "
            f"A resumed run may change only {', '.join(f.rstrip('.') + ('.*' if f.endswith('.') else '') for f in MAY_CHANGE_ON_RESUME)}; "
            "use a new --workdir for a different run"
        )
    changed_ok = [k for k in current if saved.get(k) != current.get(k)]
    if changed_ok:
        atomic_files.write_json(path, {**saved, **{k: current[k] for k in changed_ok}})
