"""Writing outputs without ever leaving a half-written file behind."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
from typing import Callable

import numpy as np


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    with _UMASK_LOCK:  # os.umask only reads by setting: hold it for the instant in between
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _as_if_created(path: str, directory: bool) -> None:
    """mkstemp / mkdtemp create 0600 / 0700 whatever the umask: give the result the mode a plain
    open() or mkdir() would have, so that others on a shared machine can read what is exported."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def _partial_prefix(path: str) -> str:
    return f".{os.path.basename(path)}.partial-"


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this host still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(path: str) -> list[str]:
    """Remove the hidden temporary folders that writes of `path` by processes of this host which no
    longer run left behind (a killed conversion, export or build). Returns what was removed."""
    parent, prefix = os.path.dirname(os.path.abspath(path)), _partial_prefix(path)
    removed = []
    if not os.path.isdir(parent):
        return removed
    for name in os.listdir(parent):
        if not name.startswith(prefix):
            continue
        pid, host = name[len(prefix):].split("-", 2)[:2] if name.count("-") >= 2 else ("", "")
        if pid.isdigit() and host == _host() and not process_alive(int(pid)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            removed.append(os.path.join(parent, name))
    return removed


def _host() -> str:
    return socket.gethostname().replace("-", "_").replace(".", "_")


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, a.encode(), at_fdcwd, b.encode(), rename_exchange) == 0


@contextlib.contextmanager
def atomic_directory(path: str, overwrite: bool = False, replaceable: Callable[[str], None] | None = None):
    """Yield a temporary directory beside `path`. When the block succeeds it becomes `path`; when it
    fails it is removed. An existing `path` is replaced only with `overwrite`, after `replaceable(path)`
    (which raises to refuse) has accepted it, and in one step where the system can swap two folders
    (Linux), so that a kill at any moment leaves the old or the new one at `path`, never neither.
    Temporary folders of earlier writes that were killed are removed first."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{path} is a file; give a directory to write")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    if os.path.exists(path) and replaceable is not None:
        replaceable(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    remove_stale_partials(path)
    tmp = tempfile.mkdtemp(prefix=f"{_partial_prefix(path)}{os.getpid()}-{_host()}-", dir=parent)
    _as_if_created(tmp, directory=True)
    try:
        yield tmp
        if os.path.exists(path):
            if not _exchange(tmp, path):
                old = tempfile.mkdtemp(prefix=f"{_partial_prefix(path)}{os.getpid()}-{_host()}-", dir=parent)
                os.rename(path, os.path.join(old, "old"))
                os.rename(tmp, path)
                tmp = old
            shutil.rmtree(tmp, ignore_errors=True)  # now the old contents
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _as_if_created(tmp, directory=False)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path: str, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_png(path: str, image: np.ndarray) -> None:
    """uint8 (H, W) or (H, W, 3) array -> PNG file."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


# --- writes the system refuses ---------------------------------------------------------------

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NO_ACCESS = (errno.EROFS, errno.EACCES, errno.EPERM)


def failed_write(error: BaseException) -> tuple[str, bool] | None:
    """(the system's reason, whether it is a lack of space) when `error` is a write that the system
    refused for want of space or permission: an OSError, or the ValueError / RuntimeError of the
    writers underneath orbax (tensorstore) and TFDS (array_record) that carry one in their text.
    None for any other error."""
    codes = _NO_SPACE + _NO_ACCESS
    code = error.errno if isinstance(error, OSError) else None
    if code not in codes:
        text = str(error)
        code = next((c for c in codes if f"os_error_code='{c}'" in text or os.strerror(c) in text), None)
        if code is None and "not enough disk space" in text.lower():  # TFDS's check before a build
            code = errno.ENOSPC
    if code is None:
        return None
    reason = os.strerror(code)
    if isinstance(error, OSError) and error.filename:
        reason += f" ({error.filename})"
    return reason, code in _NO_SPACE


def check_can_write(folder: str, flag: str, target: str) -> None:
    """Raise ValueError unless `folder` can be written in, or created in its nearest existing
    ancestor: checked before minutes of reading, so that a read-only or foreign place fails at once.
    The message names the command-line `flag` and the `target` path it gave."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"cannot write {flag} {target}: {existing} is a file, not a folder; choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        why = "is on a read-only file system" if read_only else "is not writable by you"
        raise ValueError(f"cannot write {flag} {target}: {existing} {why}; choose another {flag}")


def _without_closed_loop_errors(previous):
    """`previous` unraisable-hook, except for the "Event loop is closed" errors of tensorstore callbacks
    that outlive a failed orbax write (they may come after the failure is reported, so this stays)."""
    if getattr(previous, "drops_closed_loop_errors", False):
        return previous

    def hook(unraisable):
        if unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed":
            return
        previous(unraisable)

    hook.drops_closed_loop_errors = True
    return hook


def drop_closed_loop_errors() -> None:
    """From now on, drop the "Event loop is closed" errors that tensorstore's callbacks raise where
    nothing can catch them once orbax has given up a failed write (a traceback apiece on stderr,
    hundreds for one full disk), for a process that writes with orbax for its whole life."""
    sys.unraisablehook = _without_closed_loop_errors(sys.unraisablehook)


@contextlib.contextmanager
def quiet_writer_threads():
    """Keep orbax's background writer threads from printing their failures (absl ERROR records with
    tracebacks, and "Event loop is closed" errors of callbacks left over): the failure itself still
    reaches the caller as an exception, which the command line reports on one line."""
    from absl import logging as absl_logging

    level, hook = absl_logging.get_verbosity(), sys.unraisablehook
    absl_logging.set_verbosity(absl_logging.FATAL)
    sys.unraisablehook = _without_closed_loop_errors(hook)
    failed = False
    try:
        yield
    except BaseException:
        failed = True  # the write's callbacks may still fire: keep their errors out of the report
        raise
    finally:
        absl_logging.set_verbosity(level)
        if not failed:
            sys.unraisablehook = hook
