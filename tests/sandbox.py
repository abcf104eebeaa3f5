"""Helpers for tests that run code in a subprocess: a package made unimportable, the import path,
a free local port."""

from __future__ import annotations

import os
import socket


def marking_stand_in(root, name: str):
    """A stand-in package `name` under root/site that leaves a mark file when imported and then
    raises ImportError, so even a caller that swallows the error is caught.

    Returns (the folder to put first on PYTHONPATH, the mark's path)."""
    package = root / "site" / name
    package.mkdir(parents=True)
    mark = root / f"{name}_imported"
    (package / "__init__.py").write_text(f"open({str(mark)!r}, 'w').close()\nraise ImportError('stand-in {name}')\n")
    return package.parent, mark


def python_path(*folders) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(str(f) for f in folders))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server or coordinator the test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
