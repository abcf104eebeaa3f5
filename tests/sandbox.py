"""Helpers for tests that run code in a subprocess with a package made unimportable."""

from __future__ import annotations

import os


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
