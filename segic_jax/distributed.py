"""Multi-process jobs: joining the other processes, leaving when one fails, and the points where
they must agree.

One process per host (or per accelerator); `initialize()` joins the others when the environment
describes a multi-process job:
  by hand         JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES=n and JAX_PROCESS_ID=i on every
                  process (jax reads only the address; the count and the id are read here)
  SLURM           SLURM_NTASKS > 1: jax reads SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS,
                  SLURM_PROCID and SLURM_LOCALID
  GKE TPU         TPU_WORKER_HOSTNAMES naming several hosts
  anything else   SEGIC_JAX_DISTRIBUTED=1: jax detects the job itself (a TPU pod slice from its VMs'
  jax detects     metadata, Open MPI, Kubernetes); not automatic, as on a single-host TPU VM it would
                  start a coordination service (and fail after jax has been used, as in a notebook)
Bounds, in seconds (jax's defaults; set the variable to change one):
  SEGIC_JAX_INIT_TIMEOUT       300  a process that cannot reach all the others in this time fails
  SEGIC_JAX_HEARTBEAT_TIMEOUT  100  a process silent this long counts as dead, and jax stops every other
                                    one (the case of a process blocked in a collective with a dead one)
  SEGIC_JAX_SHUTDOWN_TIMEOUT   300  at a normal exit, how long a process waits for the others to end

When a process fails, `leave_together()` makes it exit at once with its status, skipping jax's
shutdown barrier (which would hold it until the heartbeat timeout for a dead peer, then abort it);
the others fail at their next collective with it (on CPUs at once, the connection being closed) and
leave the same way, or, blocked in a collective that never fails, are stopped by jax when the
failed one's heartbeats have been missing for the heartbeat timeout. Started again, the job
continues from its last checkpoint (training) or its records (evaluation).
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback

import jax

TIMEOUTS = {  # variable: (jax.distributed.initialize argument, jax's default)
    "SEGIC_JAX_INIT_TIMEOUT": ("initialization_timeout", 300),
    "SEGIC_JAX_HEARTBEAT_TIMEOUT": ("heartbeat_timeout_seconds", 100),
    "SEGIC_JAX_SHUTDOWN_TIMEOUT": ("shutdown_timeout_seconds", 300),
}


def _int_env(name: str, minimum: int) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"the environment variable {name} must be an integer >= {minimum}, got {value!r}")
    return number


def is_multi_process_environment() -> bool:
    return (
        bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))
        or (_int_env("SLURM_NTASKS", 1) or 1) > 1
        or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
        or os.environ.get("SEGIC_JAX_DISTRIBUTED", "") == "1"
    )


def initialize() -> None:
    """Join the other processes when the environment describes a multi-process job (else nothing).
    A process that cannot reach all the others within the initialization timeout is stopped by jax
    (status -6, "DEADLINE_EXCEEDED ... RegisterTask"), after the line printed here saying what it waited for."""
    if not is_multi_process_environment() or jax.distributed.is_initialized():
        return
    address = os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes, process_id = _int_env("JAX_NUM_PROCESSES", 1), _int_env("JAX_PROCESS_ID", 0)
    timeouts = {arg: value for name, (arg, _) in TIMEOUTS.items() if (value := _int_env(name, 1)) is not None}
    limit = timeouts.get("initialization_timeout", TIMEOUTS["SEGIC_JAX_INIT_TIMEOUT"][1])
    me = "" if process_id is None else f" as process {process_id}"
    me += "" if num_processes is None or process_id is None else f" of {num_processes}"
    print(f"joining the job{me}{f' at {address}' if address else ''} (waiting up to {limit} s for every process)",
          file=sys.stderr, flush=True)
    try:
        jax.distributed.initialize(address, num_processes=num_processes, process_id=process_id, **timeouts)
    except ValueError as e:  # no process count or id (none set, none detected), or an id out of range
        raise ValueError(f"{_first_line(e).rstrip('.')}: set JAX_NUM_PROCESSES (the process count) and "
                         "JAX_PROCESS_ID (0 .. count - 1, one per process) with JAX_COORDINATOR_ADDRESS") from None
    _no_persistent_cache_on_cpus()


def _no_persistent_cache_on_cpus() -> None:
    """Turn the persistent compilation cache off in a multi-process CPU job. Only process 0 writes it
    and CPU programs' keys name their devices, so process 0 finds its programs there while the others
    compile theirs; gloo, the CPU collectives, waits only 30 s for every process at the first
    collective, and processes that arrive further apart fail there."""
    if jax.process_count() == 1 or jax.default_backend() != "cpu":
        return
    if jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_enable_compilation_cache", False)
        if is_main():
            print(f"the persistent compilation cache ({jax.config.jax_compilation_cache_dir}) is off for this "
                  "multi-process CPU job: its processes would reach the first collective too far apart",
                  file=sys.stderr, flush=True)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def is_main() -> bool:
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Wait until every process gets here (nothing in a single-process job)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def leave_together(agreed_statuses=(0,)):
    """In a multi-process job, a process whose work fails (an exception, or an exit status not in
    `agreed_statuses`, the ones all processes reach together) leaves at once: it says which process it
    is and why, and exits with that status without waiting at jax's shutdown barrier. Does nothing
    in a single-process job."""
    try:
        yield
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if status not in agreed_statuses and _multi_process():
            _leave(status, None)
        raise
    except BaseException as e:
        if _multi_process():
            traceback.print_exc()
            _leave(130 if isinstance(e, KeyboardInterrupt) else 1, e)
        raise


def _multi_process() -> bool:
    return jax.distributed.is_initialized() and jax.process_count() > 1


def _leave(status: int, error: BaseException | None) -> None:
    why = f": {_first_line(error)}" if error is not None else f" with status {status}"
    print(f"error: process {jax.process_index()} of {jax.process_count()} failed{why}. The other processes of "
          "this job stop too (at their next collective, or when jax misses this one's heartbeats); run the job "
          "again to continue from its last checkpoint or evaluation records.", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(status)
